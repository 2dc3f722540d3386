"""Width and batch-size transfer rules: hand-computed groups, AdamW steps, bad input, and a small real check."""

from __future__ import annotations

import copy
import doctest
import math

import numpy as np
import pytest
import torch
from torch import nn

from losslab import ConfigError, DataError
from losslab.optim import batch_scaled_lr, top_singular_values, width_scaled_param_groups
from losslab.optim import scaling_rules as scaling_rules_module


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.ReLU(), nn.Conv1d(4, 2, 1), nn.Linear(1, 2))


MATRICES = ["0.weight", "3.weight", "4.weight"]
VECTORS = ["0.bias", "1.weight", "1.bias", "3.bias", "4.bias"]


def settings(groups):
    """name -> (lr, weight_decay, group name) for every parameter."""
    out = {}
    for g in groups:
        assert len(g["params"]) == len(g["param_names"])
        for n in g["param_names"]:
            assert n not in out, f"{n} is in two groups"
            out[n] = (g["lr"], g["weight_decay"], g["name"])
    return out


# Written out by hand for lr=0.01, weight_decay=0.1, width_multiplier=4 (so 1/d = 0.25 and sqrt(d) = 2).
HAND = {
    "robust": {"matrix": (0.0025, 0.2), "vector": (0.01, 0.0)},
    "mup": {"matrix": (0.0025, 0.1), "vector": (0.01, 0.1)},
    "standard": {"matrix": (0.01, 0.1), "vector": (0.01, 0.1)},
}


@pytest.mark.parametrize("rule", ["robust", "mup", "standard"])
def test_groups_match_the_hand_computed_settings(rule):
    groups = width_scaled_param_groups(tiny(), width_multiplier=4, lr=0.01, weight_decay=0.1, rule=rule)
    got = settings(groups)
    assert set(got) == set(MATRICES + VECTORS)
    for n in MATRICES:
        assert got[n] == (*HAND[rule]["matrix"], "matrix")
    for n in VECTORS:
        assert got[n] == (*HAND[rule]["vector"], "vector")
    assert [g["name"] for g in groups] == ["matrix", "vector"]
    assert all(g["rule"] == rule for g in groups)
    assert groups[0]["param_names"] == MATRICES and groups[1]["param_names"] == VECTORS  # named_parameters order
    named = dict(tiny().named_parameters())
    assert [tuple(p.shape) for p in groups[0]["params"]] == [tuple(named[n].shape) for n in MATRICES]


def test_non_power_of_two_multiplier():
    got = settings(width_scaled_param_groups(tiny(), width_multiplier=2.25, lr=0.009, weight_decay=0.2))
    assert got["0.weight"][:2] == pytest.approx((0.004, 0.3), rel=1e-14)  # 0.009 / 2.25, 0.2 * 1.5
    assert got["0.bias"][:2] == (0.009, 0.0)


@pytest.mark.parametrize("rule", ["robust", "mup", "standard"])
def test_width_multiplier_one_gives_the_base_settings(rule):
    got = settings(width_scaled_param_groups(tiny(), width_multiplier=1, lr=3e-4, weight_decay=0.05, rule=rule))
    for n in MATRICES:
        assert got[n][:2] == (3e-4, 0.05)
    for n in VECTORS:  # the robust recipe trains vector-like parameters without decay at every width
        assert got[n][:2] == (3e-4, 0.0 if rule == "robust" else 0.05)


def test_adamw_built_from_the_groups_takes_the_expected_first_step_and_round_trips():
    model = tiny().double()
    groups = width_scaled_param_groups(model, width_multiplier=4, lr=0.01, weight_decay=0.1, rule="robust")
    opt = torch.optim.AdamW(groups, eps=1e-8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(3)
    grads = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    opt.step()
    for n, p in model.named_parameters():  # AdamW's first step: p(1 - lr wd) - lr g / (|g| + eps)
        lr, wd = HAND["robust"]["matrix" if n in MATRICES else "vector"]
        expected = before[n] * (1 - lr * wd) - lr * grads[n] / (grads[n].abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-15)
    # the extra keys (name, rule, param_names) survive a checkpoint, and the run continues identically
    clone = tiny().double()
    clone.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(width_scaled_param_groups(clone, width_multiplier=4, lr=0.01, weight_decay=0.1))
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch shares same-device state tensors otherwise
    assert [g["name"] for g in opt2.param_groups] == ["matrix", "vector"]
    for m, o in ((model, opt), (clone, opt2)):
        for n, p in m.named_parameters():
            p.grad = grads[n].clone() * 0.5
        o.step()
    for (n, p), q in zip(model.named_parameters(), clone.parameters()):
        assert torch.equal(p, q), n


def test_no_decay_by_names_or_function():
    model = tiny()
    got = settings(width_scaled_param_groups(model, width_multiplier=4, lr=0.01, weight_decay=0.1, rule="mup",
                                             no_decay=["0.weight", "1.weight"]))
    assert got["0.weight"] == (0.0025, 0.0, "matrix_no_decay")
    assert got["1.weight"] == (0.01, 0.0, "vector_no_decay")
    assert got["3.weight"] == (0.0025, 0.1, "matrix")
    fn = settings(width_scaled_param_groups(model, width_multiplier=4, lr=0.01, weight_decay=0.1, rule="standard",
                                            no_decay=lambda name, p: p.ndim < 2))
    assert all(fn[n] == (0.01, 0.0, "vector_no_decay") for n in VECTORS)
    robust = width_scaled_param_groups(model, width_multiplier=4, lr=0.01, weight_decay=0.1, no_decay=["0.bias"])
    assert [g["name"] for g in robust] == ["matrix", "vector"]  # already no decay: no extra group


class LM(nn.Module):
    def __init__(self, tie: bool = True):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        if tie:
            self.head.weight = self.emb.weight


def test_embeddings_must_be_chosen_and_tied_weights_appear_once():
    for rule in ("robust", "mup"):  # both rules scale matrices, so both need the choice
        with pytest.raises(ConfigError, match=r"emb\.weight.*embeddings='vector'"):
            width_scaled_param_groups(LM(), width_multiplier=2, lr=0.01, weight_decay=0.1, rule=rule)
    vec = settings(width_scaled_param_groups(LM(), width_multiplier=4, lr=0.01, weight_decay=0.1,
                                             embeddings="vector"))
    assert list(vec) == ["proj.weight", "emb.weight", "proj.bias"]  # the tied head is the embedding, once
    assert vec["emb.weight"] == (0.01, 0.0, "vector")
    mat = settings(width_scaled_param_groups(LM(), width_multiplier=4, lr=0.01, weight_decay=0.1,
                                             embeddings="matrix"))
    assert mat["emb.weight"] == (0.0025, 0.2, "matrix")
    untied = settings(width_scaled_param_groups(LM(tie=False), width_multiplier=4, lr=0.01, weight_decay=0.1,
                                                embeddings="vector", vector_like=["proj.weight"]))
    assert untied["head.weight"] == (0.0025, 0.2, "matrix") and untied["proj.weight"][2] == "vector"
    # "standard" changes nothing, so no choice is needed; naming the embedding vector-like settles it too
    width_scaled_param_groups(LM(), width_multiplier=2, lr=0.01, weight_decay=0.1, rule="standard")
    width_scaled_param_groups(LM(), width_multiplier=2, lr=0.01, weight_decay=0.1, vector_like=["emb.weight"])


def test_named_parameter_inputs_agree_with_the_module_and_deduplicate():
    model = tiny()
    ref = width_scaled_param_groups(model, width_multiplier=4, lr=0.01, weight_decay=0.1)
    pairs = list(model.named_parameters())
    for source in (model.named_parameters(), dict(pairs), pairs, [*pairs, ("alias", pairs[0][1])]):
        groups = width_scaled_param_groups(source, width_multiplier=4, lr=0.01, weight_decay=0.1)
        assert [(g["param_names"], g["lr"], g["weight_decay"]) for g in groups] == \
            [(g["param_names"], g["lr"], g["weight_decay"]) for g in ref]
        assert all(a is b for g, h in zip(groups, ref) for a, b in zip(g["params"], h["params"]))


BAD_GROUP_ARGS = [
    (dict(width_multiplier=0), ConfigError, r"width_multiplier=0 .*\(0, inf\)"),
    (dict(width_multiplier=-2.0), ConfigError, "width_multiplier"),
    (dict(width_multiplier=float("nan")), ConfigError, "width_multiplier"),
    (dict(width_multiplier=float("inf")), ConfigError, "width_multiplier"),
    (dict(width_multiplier="4"), ConfigError, "real number"),
    (dict(width_multiplier=True), ConfigError, "real number"),
    (dict(lr=0.0), ConfigError, r"lr=0\.0"),
    (dict(lr=float("inf")), ConfigError, "lr"),
    (dict(weight_decay=-0.1), ConfigError, r"weight_decay=-0\.1 .*\[0, inf\)"),
    (dict(weight_decay=float("nan")), ConfigError, "weight_decay"),
    (dict(rule="robst"), ConfigError, "did you mean 'robust'"),
    (dict(rule="MUP"), ConfigError, "did you mean 'mup'"),
    (dict(embeddings="vec"), ConfigError, "did you mean 'vector'"),
    (dict(no_decay=["0.weigth"]), ConfigError, "did you mean '0.weight'"),
    (dict(no_decay="0.weight"), ConfigError, "list of parameter names"),
    (dict(vector_like=["nope"]), ConfigError, "does not have"),
]


@pytest.mark.parametrize(("override", "error", "match"), BAD_GROUP_ARGS)
def test_bad_group_arguments_raise_and_change_nothing(override, error, match):
    model = tiny()
    snapshot = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    kwargs = dict(width_multiplier=4, lr=0.01, weight_decay=0.1) | override
    with pytest.raises(error, match=match):
        width_scaled_param_groups(model, **kwargs)
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshot[n][0]) and p.requires_grad == snapshot[n][1] and p.grad is None


@pytest.mark.parametrize(("source", "error", "match"), [
    (nn.ReLU(), DataError, "no parameters"),
    ([], DataError, "no parameters"),
    (torch.zeros(3), ConfigError, "nn.Module"),
    ([torch.zeros(3)], ConfigError, r"\(name, tensor\) pair"),
    ([("w", 3.0)], ConfigError, r"\(name, tensor\) pair"),
])
def test_bad_models_raise(source, error, match):
    with pytest.raises(error, match=match):
        width_scaled_param_groups(source, width_multiplier=2, lr=0.01, weight_decay=0.1)


# --------------------------------------------------------------------------------------------- batch size
def test_batch_rules_against_hand_values():
    assert batch_scaled_lr(1e-3, base_batch_size=256, batch_size=1024) == pytest.approx(2e-3, rel=1e-15)
    assert batch_scaled_lr(1e-3, base_batch_size=256, batch_size=64) == pytest.approx(5e-4, rel=1e-15)
    assert batch_scaled_lr(4e-4, base_batch_size=32, batch_size=288) == pytest.approx(1.2e-3, rel=1e-14)  # sqrt 9
    assert batch_scaled_lr(0.1, base_batch_size=256, batch_size=512, rule="linear") == pytest.approx(0.2, rel=1e-15)
    assert batch_scaled_lr(0.1, base_batch_size=256, batch_size=64, rule="linear") == pytest.approx(0.025, rel=1e-15)
    assert batch_scaled_lr(0.1, base_batch_size=8, batch_size=8, rule="linear") == 0.1
    assert isinstance(batch_scaled_lr(0.1, base_batch_size=np.int64(8), batch_size=np.int32(32)), float)


def test_batch_rules_are_vectorised():
    sizes = np.array([[64, 256], [1024, 4096]])
    out = batch_scaled_lr(1e-3, base_batch_size=256, batch_size=sizes)
    assert out.dtype == np.float64 and out.shape == (2, 2)
    np.testing.assert_allclose(out, [[5e-4, 1e-3], [2e-3, 4e-3]], rtol=1e-15)
    np.testing.assert_allclose(batch_scaled_lr(0.1, base_batch_size=256, batch_size=[128, 512], rule="linear"),
                               [0.05, 0.2], rtol=1e-15)
    assert sizes.tolist() == [[64, 256], [1024, 4096]]  # input untouched


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(batch_size=0), ConfigError, "batch_size=0"),
    (dict(batch_size=-4), ConfigError, "batch_size"),
    (dict(batch_size=64.0), ConfigError, "integer >= 1"),
    (dict(batch_size=True), ConfigError, "batch_size"),
    (dict(batch_size="64"), ConfigError, "batch_size"),
    (dict(batch_size=None), ConfigError, "batch_size"),
    (dict(batch_size=np.array([64.0, 128.0])), ConfigError, "dtype float64"),
    (dict(batch_size=[64, 0]), ConfigError, "integers >= 1"),
    (dict(batch_size=np.array([], dtype=int)), DataError, "empty"),
    (dict(base_batch_size=0), ConfigError, "base_batch_size"),
    (dict(base_batch_size=2.5), ConfigError, "base_batch_size"),
    (dict(base_batch_size=True), ConfigError, "base_batch_size"),
    (dict(lr=0.0), ConfigError, "lr"),
    (dict(lr=float("nan")), ConfigError, "lr"),
    (dict(rule="sqr"), ConfigError, "did you mean 'sqrt'"),
    (dict(rule="lin"), ConfigError, "'linear' for SGD"),
])
def test_bad_batch_arguments_raise(kwargs, error, match):
    full = dict(lr=1e-3, base_batch_size=256, batch_size=512) | kwargs
    lr = full.pop("lr")
    with pytest.raises(error, match=match):
        batch_scaled_lr(lr, **full)


# -------------------------------------------------------------------------------------- singular values
def numpy_top(t: torch.Tensor) -> float:
    a = t.detach().to(torch.float64).reshape(t.shape[0], -1).numpy()
    return float(np.linalg.svd(a, compute_uv=False)[0])


def test_top_singular_values_match_numpy_svd_in_float64():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten(), nn.Linear(7, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    model.add_module("emb", nn.Embedding(9, 4))
    out = top_singular_values(model)
    assert list(out) == ["0.weight", "2.weight", "4.weight", "emb.weight"]
    named = dict(model.named_parameters())
    for n, v in out.items():
        assert isinstance(v, float)
        assert v == pytest.approx(numpy_top(named[n]), rel=1e-12)
    w = torch.tensor([[3.0, 0.0], [0.0, -4.0], [0.0, 0.0]])
    assert top_singular_values([("w", w)]) == {"w": 4.0}


def test_top_singular_values_float32_is_measured_in_float64_and_tied_once():
    lm = LM()
    lm.emb.weight.data.mul_(1e3)
    out = top_singular_values(lm)
    assert list(out) == ["emb.weight", "proj.weight"]
    assert out["emb.weight"] == pytest.approx(numpy_top(lm.emb.weight), rel=1e-12)


def test_power_iteration_converges_to_the_exact_value_from_below():
    gen = torch.Generator().manual_seed(5)
    u, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    s = torch.linspace(1.0, 0.1, 30, dtype=torch.float64)
    w = (u[:, :30] * s) @ v.T * 2.5  # top singular value exactly 2.5, gap 0.9/1
    exact = top_singular_values([("w", w)])["w"]
    assert exact == pytest.approx(2.5, rel=1e-13)
    few = top_singular_values([("w", w)], n_iter=3)["w"]
    many = top_singular_values([("w", w)], n_iter=300)["w"]
    assert few <= exact * (1 + 1e-12) and many == pytest.approx(exact, rel=1e-9)
    assert top_singular_values([("w", w)], n_iter=3, seed=4) == top_singular_values([("w", w)], n_iter=3, seed=4)


def test_empty_matrix_is_zero():
    assert top_singular_values([("w", torch.zeros(0, 3)), ("v", torch.ones(2, 2))]) == {"w": 0.0, "v": 2.0}


@pytest.mark.parametrize(("source", "kwargs", "error", "match"), [
    (nn.Sequential(nn.LayerNorm(3)), {}, DataError, "ndim >= 2"),
    (nn.ReLU(), {}, DataError, "no parameters"),
    ([("w", torch.tensor([[1.0, float("nan")]]))], {}, DataError, "NaN or Inf"),
    ([("w", torch.ones(2, 2))], dict(n_iter=0), ConfigError, "n_iter"),
    ([("w", torch.ones(2, 2))], dict(n_iter=2.5), ConfigError, "n_iter"),
    ([("w", torch.ones(2, 2))], dict(seed=-1), ConfigError, "seed"),
])
def test_bad_singular_value_inputs_raise(source, kwargs, error, match):
    with pytest.raises(error, match=match):
        top_singular_values(source, **kwargs)


def test_docstring_examples_run():
    result = doctest.testmod(scaling_rules_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------- the paper's claim, at a tiny scale
def train_hidden_top_sv(width: int, rule: str, seed: int, steps: int = 1000, base: int = 64) -> float:
    """Top singular value of the hidden matrix after AdamW training, averaged over every 10th of the last 100 steps."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, width), nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width),
                        nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, 1))
    # biases and gains undecayed under both rules, so the two differ only in the matrices' weight decay
    groups = width_scaled_param_groups(net, width_multiplier=width / base, lr=3e-3, weight_decay=3.0, rule=rule,
                                       no_decay=lambda name, p: p.ndim < 2)
    opt = torch.optim.AdamW(groups)
    gen = torch.Generator().manual_seed(100 + seed)
    teacher = torch.randn(8, generator=torch.Generator().manual_seed(7))
    seen = []
    for step in range(steps):
        x = torch.randn(32, 8, generator=gen)
        loss = nn.functional.mse_loss(net(x).squeeze(-1), torch.sin(x @ teacher))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - 100 and step % 10 == 9:
            seen.append(top_singular_values(net)["3.weight"])
    return sum(seen) / len(seen)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_robust_rule_keeps_the_top_singular_value_closer_to_width_invariant_than_mup(seed, one_thread):
    """Hidden 64 -> 256 (d = 4): the top singular value of the hidden matrix grows 1.7-2.3x under mup (constant
    weight decay) and 1.0-1.3x under robust (seeds 0-5; figures in docs/optim.md).

    Only what held for every seed and setting tried is asserted: robust's ratio is below mup's and nearer to 1.
    That it is 1 (the paper's claim) is not asserted: at this scale and length it is not, yet.
    """
    base = train_hidden_top_sv(64, "mup", seed)  # at d = 1 both rules give the same groups here
    robust = train_hidden_top_sv(256, "robust", seed) / base
    mup = train_hidden_top_sv(256, "mup", seed) / base
    assert robust < mup
    assert abs(math.log(robust)) < abs(math.log(mup))
