"""Common checks run on every registered loss (registry-driven; specs in tests/losses/_specs.py)."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import losslab.losses as L
from losslab import ConfigError, DataError, LosslabError
from tests.losses._specs import DETACHED_BY_DESIGN, SPECS, call

NAMES = L.names()


def test_every_registered_loss_has_a_spec():
    assert sorted(SPECS) == NAMES


def _inputs(name, dtype=torch.float64, seed=0):
    return SPECS[name].make(dtype, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_info_record_and_docstring(name):
    rec = L.info(name)
    assert rec.summary and rec.obj is L.get(name)
    assert ("arXiv:" in rec.reference or "doi:" in rec.reference) and rec.reference.count(",") >= 2
    assert rec.input_kind in ("logits", "probabilities", "regression", "embeddings", "hidden_states")
    assert set(rec.dtypes) <= {"float64", "float32", "bfloat16", "float16"}
    doc = inspect.getdoc(rec.obj)
    for section in ("Args:", "Returns:", "Example:", "References:", ">>>"):
        assert section in doc, f"{name} docstring lacks {section!r}"
    assert "arXiv:" in doc or "doi:" in doc, f"{name} docstring cites no paper (arXiv id or DOI)"
    assert getattr(L, rec.module).loss_name == name


@pytest.mark.parametrize("name", NAMES)
def test_reductions_are_consistent(name):
    args, kw = _inputs(name)
    fn = L.get(name)
    none = call(name, fn, args, kw, reduction="none")
    total = call(name, fn, args, kw, reduction="sum")
    mean = call(name, fn, args, kw, reduction="mean")
    assert torch.isfinite(none).all()
    torch.testing.assert_close(none.sum(), total, rtol=1e-12, atol=1e-12)
    if SPECS[name].plain_mean:
        torch.testing.assert_close(none.mean(), mean, rtol=1e-12, atol=1e-12)
    assert mean.dim() == 0 and total.dim() == 0


@pytest.mark.parametrize("name", [n for n in NAMES if n not in DETACHED_BY_DESIGN])
def test_gradcheck_float64(name):
    args, kw = _inputs(name)
    spec = SPECS[name]
    leaves = [a.clone().requires_grad_(True) if i in spec.grad_args else a for i, a in enumerate(args)]

    def f(*diff):
        full = list(leaves)
        for i, d in zip(spec.grad_args, diff):
            full[i] = d
        return call(name, L.get(name), full, kw, reduction="sum")

    assert torch.autograd.gradcheck(f, tuple(leaves[i] for i in spec.grad_args), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", [n for n in NAMES if SPECS[n].logit_arg is not None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_gradients_for_extreme_logits(name, dtype):
    args, kw = _inputs(name, dtype)
    spec = SPECS[name]
    i = spec.logit_arg
    x = args[i]
    extreme = (torch.sign(x) * 1e4).to(dtype)
    extreme[..., 0] = -1e4
    args = list(args)
    args[i] = extreme.requires_grad_(True)
    if name == "adversarial_comp_sum":
        args[1] = (-extreme.detach()).requires_grad_(True)
    loss = call(name, L.get(name), args, kw)
    loss.backward()
    assert torch.isfinite(loss), f"{name}: loss {loss}"
    assert torch.isfinite(args[i].grad).all(), f"{name}: non-finite gradient"


@pytest.mark.parametrize("name", [n for n in NAMES if n != "sface"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_stably(name, dtype):
    args64, kw = _inputs(name, torch.float64)
    spec = SPECS[name]
    args_h = [a.to(dtype) if isinstance(a, torch.Tensor) and a.dtype == torch.float64 else a for a in args64]
    kw_h = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.dtype == torch.float64 else v) for k, v in kw.items()}
    # reference: the same half-rounded inputs, computed in float64
    args_ref = [a.to(torch.float64) if isinstance(a, torch.Tensor) and a.dtype == dtype else a for a in args_h]
    kw_ref = {k: (v.to(torch.float64) if isinstance(v, torch.Tensor) and v.dtype == dtype else v)
              for k, v in kw_h.items()}
    out = call(name, L.get(name), args_h, kw_h)
    ref = call(name, L.get(name), args_ref, kw_ref)
    assert out.dtype == torch.float32
    assert torch.isfinite(out)
    torch.testing.assert_close(out.double(), ref, rtol=spec.half_tol, atol=spec.half_tol)


def test_sface_half_precision_finite():
    args, kw = _inputs("sface", torch.bfloat16)
    assert torch.isfinite(L.sface(*args, **kw))


@pytest.mark.parametrize("name", NAMES)
def test_module_form_matches_functional(name):
    args, kw = _inputs(name)
    module_cls = getattr(L, L.info(name).module)
    mod = module_cls(**{k: v for k, v in kw.items()}, reduction="sum")
    if SPECS[name].stochastic:  # the generator is an option: give the module the same fresh one
        mod = module_cls(**kw, reduction="sum", generator=torch.Generator().manual_seed(1234))
    out_m = mod(*args)
    out_f = call(name, L.get(name), args, kw, reduction="sum")
    torch.testing.assert_close(out_m, out_f)
    assert isinstance(mod, torch.nn.Module)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_module_option_is_a_config_error(name):
    with pytest.raises(LosslabError, match="unknown option"):
        getattr(L, L.info(name).module)(not_an_option=1)


@pytest.mark.parametrize("name", NAMES)
def test_nan_input_raises_and_leaves_inputs_unchanged(name):
    args, kw = _inputs(name)
    for i in SPECS[name].grad_args:
        bad = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        bad[i] = bad[i].clone()
        bad[i].view(-1)[0] = float("nan")
        before = copy.deepcopy(bad)
        with pytest.raises(DataError, match="NaN"):
            call(name, L.get(name), bad, kw)
        for a, b in zip(bad, before):
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b) or (torch.isnan(a) == torch.isnan(b)).all()


@pytest.mark.parametrize("name", NAMES)
def test_valid_call_does_not_modify_inputs(name):
    args, kw = _inputs(name)
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    call(name, L.get(name), args, kw)
    for a, b in zip(args, before):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", [n for n in NAMES if SPECS[n].class_target_arg is not None])
def test_bad_class_targets(name):
    args, kw = _inputs(name)
    j = SPECS[name].class_target_arg
    fn = L.get(name)
    wrong_dtype = list(args)
    wrong_dtype[j] = args[j].double()
    with pytest.raises(DataError, match="integer class indices"):
        call(name, fn, wrong_dtype, kw)
    out_of_range = list(args)
    out_of_range[j] = args[j].clone()
    out_of_range[j][0] = 999
    with pytest.raises(DataError, match="classes"):
        call(name, fn, out_of_range, kw)
    negative = list(args)
    negative[j] = args[j].clone()
    negative[j][0] = -3
    with pytest.raises(DataError, match="index"):
        call(name, fn, negative, kw)


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_and_wrong_input_type(name):
    args, kw = _inputs(name)
    fn = L.get(name)
    short = list(args)
    last = len(args) - 1 if SPECS[name].class_target_arg is None else SPECS[name].class_target_arg
    short[last] = args[last][:-1]
    with pytest.raises(DataError):
        call(name, fn, short, kw)
    wrong = list(args)
    wrong[0] = args[0].tolist()
    with pytest.raises(DataError, match=r"torch\.Tensor"):
        call(name, fn, wrong, kw)
    ints = list(args)
    ints[0] = args[0].long()
    with pytest.raises(DataError, match="floating"):
        call(name, fn, ints, kw)


@pytest.mark.parametrize("name", NAMES)
def test_bad_reduction(name):
    args, kw = _inputs(name)
    with pytest.raises(LosslabError, match="reduction"):
        call(name, L.get(name), args, kw, reduction="avg")


NON_NEGATIVE = {
    "cross_entropy": {}, "focal": {"gamma": 2.0}, "squentropy": {}, "poly1_cross_entropy": {"epsilon": -1.0},
    "stablemax_cross_entropy": {}, "comp_sum": {"tau": 0.5}, "generalized_cross_entropy": {}, "softmax_mae": {},
    "spherical_z_loss": {},
}


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(1e-3, 30.0), seed=st.integers(0, 10_000), name=st.sampled_from(sorted(NON_NEGATIVE)))
def test_non_negative_losses_are_non_negative(scale, seed, name):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, 4, (5,), generator=g)
    out = L.get(name)(x, y, reduction="none", **NON_NEGATIVE[name])
    assert (out >= -1e-12).all()


@pytest.mark.parametrize("name", [n for n in NAMES if SPECS[n].class_target_arg is not None])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_class_targets_of_any_integer_dtype_match_int64(name, dtype):
    # non-int64 targets passed validation, then crashed in gather / one_hot
    args, kw = _inputs(name)
    j = SPECS[name].class_target_arg
    target = args[j]
    if dtype == torch.uint8 and bool((target < 0).any()):  # -100 does not fit: use 255 as the ignored value
        target = torch.where(target < 0, torch.full_like(target, 255), target)
        kw = dict(kw, ignore_index=255)
    ref = call(name, L.get(name), [*args[:j], target, *args[j + 1:]], kw, reduction="none")
    out = call(name, L.get(name), [*args[:j], target.to(dtype), *args[j + 1:]], kw, reduction="none")
    torch.testing.assert_close(out, ref)


# one float hyperparameter per loss that takes one (checked by check_number)
FLOAT_OPTION = {
    "cross_entropy": ("z_loss", 1e-2), "focal": ("gamma", 2.0), "sigmoid_focal": ("gamma", 2.0),
    "poly1_cross_entropy": ("epsilon", 2.0), "poly1_focal": ("epsilon", 3.0), "spherical_z_loss": ("b", 0.5),
    "comp_sum": ("tau", 1.5), "generalized_cross_entropy": ("q", 0.5), "adversarial_comp_sum": ("nu", 0.7),
    "ldr_kl": ("lam", 0.7), "aldr_kl": ("alpha", 2.0), "linear_cross_entropy": ("label_smoothing", 0.1),
    "sface": ("s", 8.0), "decoupled_softmax": ("temperature", 0.5), "ensloss": ("lam", 0.5),
    "neural_ndcg": ("temperature", 0.7), "approx_ndcg": ("alpha", 2.0),
    "huber": ("delta", 0.5), "gmadl": ("a", 2.0), "hl_gauss": ("max_value", 2.0),
}


@pytest.mark.parametrize("name", sorted(FLOAT_OPTION))
def test_numpy_scalars_and_0d_tensors_are_numbers(name):
    # np.float32(2.0) and 0-d tensors were rejected as "must be a finite number"
    args, kw = _inputs(name)
    key, value = FLOAT_OPTION[name]
    ref = call(name, L.get(name), args, dict(kw, **{key: value}))
    for same in (np.float32(value), np.float64(value), torch.tensor(value, dtype=torch.float64)):
        out = call(name, L.get(name), args, dict(kw, **{key: same}))
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-9)  # float32 rounding of np.float32(value)
        assert out.dtype == ref.dtype


@pytest.mark.parametrize("name", sorted(FLOAT_OPTION))
@pytest.mark.parametrize("bad", ["2", True, np.bool_(True), torch.tensor([1.0, 2.0]), torch.tensor(True), 1 + 2j,
                                 torch.tensor(1 + 2j), None])
def test_non_numbers_are_config_errors(name, bad):
    args, kw = _inputs(name)
    key, _ = FLOAT_OPTION[name]
    with pytest.raises(ConfigError, match=key):
        call(name, L.get(name), args, dict(kw, **{key: bad}))


def test_integer_numpy_scalars_are_numbers():
    args, _ = _inputs("poly1_cross_entropy")
    torch.testing.assert_close(L.poly1_cross_entropy(*args, epsilon=np.int64(3)),
                               L.poly1_cross_entropy(*args, epsilon=3.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finite_check_is_exact_when_the_sum_overflows_or_cancels(dtype):
    from losslab.losses._validate import check_finite

    big = torch.finfo(dtype).max
    check_finite("x", torch.tensor([big, big, big], dtype=dtype), "t")  # finite entries whose sum overflows
    check_finite("x", torch.empty(0, dtype=dtype), "t")
    for bad in ([1.0, float("nan")], [float("inf"), -float("inf")], [big, float("inf")], [-float("inf"), 2.0]):
        with pytest.raises(DataError, match=r"contains 1 NaN/Inf|contains 2 NaN/Inf"):
            check_finite("x", torch.tensor(bad, dtype=dtype), "t")
