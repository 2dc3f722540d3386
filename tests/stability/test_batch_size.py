"""AdAdaGrad batch-size tests: float64 references of both forms, per-sample gradients, controller, bad input, ranks."""

from __future__ import annotations

import doctest
import importlib
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from losslab import ConfigError, DataError
from losslab.stability import AdaptiveBatchSize, BatchSizeTest, batch_size_test, per_sample_gradients
from tests.conftest import REPO, run_torchrun

SHAPES = ((3, 4), (4,), (2, 2, 2))


def random_grads(n: int, seed: int = 0, noise: float = 1.0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in enumerate(SHAPES):
        mean = torch.randn(shape, generator=gen, dtype=torch.float64)
        out[f"p{k}"] = (mean + noise * torch.randn(n, *shape, generator=gen, dtype=torch.float64)).to(dtype)
    return out


def reference(grads: dict[str, torch.Tensor], per_tensor: bool) -> tuple[float, float, float, float]:
    """The authors' formulas in float64: inner products with g_i (not centred), Var with ddof=1, ortho explicit."""
    blocks = [g.double().numpy().reshape(g.shape[0], -1) for g in grads.values()]
    if not per_tensor:
        blocks = [np.concatenate(blocks, axis=1)]
    gsq = var_norm = var_ip = var_orth = 0.0
    for g in blocks:
        mean = g.mean(axis=0)
        gsq += float(mean @ mean)
        var_norm += float(np.var(g, axis=0, ddof=1).sum())
        ip = g @ mean
        var_ip += float(np.var(ip, ddof=1))
        ortho = g - np.outer(ip, mean) / (mean @ mean)
        var_orth += float(np.var(ortho, axis=0, ddof=1).sum())
    return gsq, var_norm, var_ip, var_orth


@pytest.mark.parametrize("per_tensor", [True, False])
@pytest.mark.parametrize("test", ["norm", "ip", "orth", "ip+orth"])
def test_matches_float64_reference(test, per_tensor):
    grads = random_grads(9, noise=2.0)
    eta, theta, nu = 0.2, 0.1, 0.3
    r = batch_size_test(grads, test, eta=eta, theta=theta, nu=nu, per_tensor=per_tensor, max_batch_size=10**6)
    assert isinstance(r, BatchSizeTest) and r.test == test
    gsq, var_norm, var_ip, var_orth = reference(grads, per_tensor)
    got = (r.grad_norm_sq, r.var_norm, r.var_ip, r.var_orth)
    np.testing.assert_allclose(got, (gsq, var_norm, var_ip, var_orth), rtol=1e-11)
    stats = {"norm": var_norm / (eta**2 * gsq), "ip": var_ip / (theta**2 * gsq**2), "orth": var_orth / (nu**2 * gsq)}
    stats["ip+orth"] = max(stats["ip"], stats["orth"])
    assert r.statistic == pytest.approx(stats[test], rel=1e-11)
    assert r.batch_size == math.ceil(max(9, stats[test])) > 9 and r.n_samples == 9 and r.per_tensor is per_tensor


def test_hand_computed_case():
    # mean (2, 0); Var per coordinate 2/3 and 2/3; <g_i, g_bar> = 2, 6, 4, 4 -> Var 8/3; o_i = 0, 0, (0, 1), (0, -1)
    g = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    r = batch_size_test([g], "ip+orth", eta=0.1, theta=0.1, nu=0.1)
    assert (r.grad_norm_sq, r.var_norm, r.var_ip, r.var_orth) == pytest.approx((4.0, 4 / 3, 8 / 3, 2 / 3))
    assert (r.norm_statistic, r.ip_statistic, r.orth_statistic) == pytest.approx((100 / 3, 50 / 3, 50 / 3))
    assert r.batch_size == 17 and batch_size_test(g, "norm").batch_size == 34
    assert batch_size_test(g, "norm", eta=0.6).batch_size == 4  # 1.33/(0.36*4) < 4: the batch stays


def test_per_tensor_form_drops_cross_tensor_covariance():
    gen = torch.Generator().manual_seed(1)
    shared = torch.randn(12, 1, generator=gen, dtype=torch.float64)
    a = 1.0 + shared * torch.ones(1, 3, dtype=torch.float64)  # both tensors move together
    b = 1.0 + shared * torch.ones(1, 2, dtype=torch.float64)
    per, glob = batch_size_test({"a": a, "b": b}, "ip", per_tensor=True), batch_size_test([a, b], "ip", per_tensor=False)
    assert glob.var_ip == pytest.approx(reference({"a": a, "b": b}, False)[2], rel=1e-12)
    # Var(X + Y) = Var X + Var Y + 2 Cov: here Cov > 0, so the per-tensor sum is smaller
    assert per.var_ip < glob.var_ip and per.var_norm == glob.var_norm
    one = torch.cat([a, b], dim=1)
    for test in ("ip", "orth"):  # one tensor: the two forms coincide
        r_per, r_glob = batch_size_test(one, test, per_tensor=True), batch_size_test(one, test, per_tensor=False)
        assert (r_per.var_ip, r_per.var_orth) == pytest.approx((r_glob.var_ip, r_glob.var_orth), rel=1e-12)


def test_degenerate_means_caps_and_floors():
    same = torch.ones(6, 3).double()
    r = batch_size_test(same, "ip+orth")
    assert r.var_norm == r.var_ip == r.var_orth == 0 and r.statistic == 0 and r.batch_size == 6  # noiseless: stays
    zero_mean = torch.tensor([[1.0, -2.0], [-1.0, 2.0]], dtype=torch.float64).repeat(3, 1)
    for test in ("norm", "ip", "orth", "ip+orth"):
        r = batch_size_test(zero_mean, test, max_batch_size=512)
        assert math.isinf(r.statistic) and r.batch_size == 512
    # a tensor whose mean gradient is 0 (the authors' per-tensor projection divides 0 by 0): no projection
    w = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 1.0
    grads = {"w": w, "balanced": torch.tensor([[1.0], [-1.0]], dtype=torch.float64).repeat(4, 1)}
    r = batch_size_test(grads, "orth", per_tensor=True)
    expected = reference({"w": w}, True)[3] + float(grads["balanced"].var(dim=0).sum())
    assert r.var_orth == pytest.approx(expected, rel=1e-12)
    assert batch_size_test(random_grads(4, noise=50.0), max_batch_size=7).batch_size == 7
    along = torch.linspace(0.5, 1.5, 10, dtype=torch.float64)[:, None] * torch.tensor([[3.0, -1.0, 2.0]]).double()
    r = batch_size_test(along, "orth")  # the samples differ only along g_bar: nothing orthogonal to it
    assert r.var_norm > 0 and 0 <= r.var_orth <= 1e-14 * r.var_norm and r.batch_size == 10


def test_float32_close_to_float64():
    g32 = random_grads(16, dtype=torch.float32)
    r32 = batch_size_test(g32, "ip+orth", per_tensor=False)
    r64 = batch_size_test({k: v.double() for k, v in g32.items()}, "ip+orth", per_tensor=False)
    np.testing.assert_allclose([r32.var_norm, r32.var_ip, r32.var_orth], [r64.var_norm, r64.var_ip, r64.var_orth],
                               rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-25, 1e25])
def test_float32_gradients_of_extreme_size_neither_underflow_nor_overflow(scale):
    # squares of 1e-25 underflow float32 (1e-50) and squares of 1e25 overflow it: the statistics are
    # scale-free, so they must match the unscaled gradients'
    g32 = random_grads(16, dtype=torch.float32)
    for per_tensor in (True, False):
        base = batch_size_test(g32, "ip+orth", per_tensor=per_tensor)
        far = batch_size_test({k: v * scale for k, v in g32.items()}, "ip+orth", per_tensor=per_tensor)
        np.testing.assert_allclose([far.norm_statistic, far.ip_statistic, far.orth_statistic],
                                   [base.norm_statistic, base.ip_statistic, base.orth_statistic], rtol=1e-4)
        assert far.var_norm == pytest.approx(base.var_norm * scale**2, rel=1e-4)

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_read_in_float32(dtype):
    # values of 300: squares and inner products overflow float16, and 256 samples of 300 sum past its max (65504)
    gen = torch.Generator().manual_seed(4)
    grads = [(300 * (torch.randn(256, 40, generator=gen) + 0.3)).to(dtype), torch.randn(256, 3, generator=gen).to(dtype)]
    exact = [g.double() for g in grads]
    for per_tensor in (True, False):
        got = batch_size_test(grads, "ip+orth", per_tensor=per_tensor)
        want = batch_size_test(exact, "ip+orth", per_tensor=per_tensor)
        np.testing.assert_allclose([got.grad_norm_sq, got.var_norm, got.var_ip, got.var_orth],
                                   [want.grad_norm_sq, want.var_norm, want.var_ip, want.var_orth], rtol=1e-4)


def test_host_waits_for_the_device_a_fixed_number_of_times(monkeypatch):
    calls = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name):
            calls.append(_name)
            return _original(self, *args)
        monkeypatch.setattr(torch.Tensor, name, spy)
    grads = [torch.randn(5, 3, generator=torch.Generator().manual_seed(k)) + 1 for k in range(12)]
    for per_tensor in (True, False):
        calls.clear()
        batch_size_test(grads, "ip+orth", per_tensor=per_tensor)
        assert len(calls) <= 2, calls  # not once per parameter tensor


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 7), st.integers(1, 4), st.floats(1e-3, 1e3), st.integers(0, 2**16), st.booleans())
def test_scale_and_order_invariance(n, d, scale, seed, per_tensor):
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.5, torch.randn(n, 2, generator=gen,
                                                                                       dtype=torch.float64)]
    base = batch_size_test(grads, "ip+orth", per_tensor=per_tensor)
    scaled = batch_size_test([scale * g for g in grads], "ip+orth", per_tensor=per_tensor)
    perm = torch.randperm(n, generator=gen)
    shuffled = batch_size_test([g[perm] for g in grads], "ip+orth", per_tensor=per_tensor)
    for other in (scaled, shuffled):
        np.testing.assert_allclose([other.norm_statistic, other.ip_statistic, other.orth_statistic],
                                   [base.norm_statistic, base.ip_statistic, base.orth_statistic], rtol=1e-8)
    assert min(base.var_norm, base.var_ip, base.var_orth) >= 0 and base.batch_size >= n
    assert base.var_orth <= base.var_norm * (1 + 1e-12)  # removing the component along g_bar cannot add variance


GOOD = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("grads", "kwargs", "error", "match"), [
    ({}, {}, DataError, "no per-sample gradients"),
    ([], {}, DataError, "no per-sample gradients"),
    (torch.zeros(0, 3), {}, DataError, "empty"),
    (GOOD[:1], {}, DataError, "at least 2"),
    (GOOD.clone().index_fill_(0, torch.tensor([2]), math.nan), {}, DataError, "NaN/Inf"),
    ({"w": GOOD, "b": torch.full((4,), math.inf)}, {}, DataError, "NaN/Inf"),
    (torch.ones(4, 3, dtype=torch.int64), {}, DataError, "floating"),
    ([GOOD, GOOD[:3]], {}, DataError, "same samples"),
    ("grads", {}, DataError, "dict name -> tensor"),
    (GOOD, {"test": "inner"}, ConfigError, "unknown batch-size test"),
    (GOOD, {"test": "ip+ortho"}, ConfigError, "did you mean 'ip\\+orth'"),
    (GOOD, {"eta": 0.0}, ConfigError, "eta must be"),
    (GOOD, {"theta": -0.1}, ConfigError, "theta must be"),
    (GOOD, {"nu": math.nan}, ConfigError, "nu must be"),
    (GOOD, {"eta": True}, ConfigError, "eta must be"),
    (GOOD, {"max_batch_size": 0}, ConfigError, "max_batch_size"),
    (GOOD, {"per_tensor": "yes"}, ConfigError, "per_tensor"),
    (GOOD, {"group": object()}, ConfigError, "not initialised"),
])
def test_bad_input(grads, kwargs, error, match):
    before = GOOD.clone()
    with pytest.raises(error, match=match):
        batch_size_test(grads, **kwargs)
    assert torch.equal(GOOD, before)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)
        self.out = nn.Linear(4, 3)
        self.out.bias.requires_grad_(False)
        self.register_buffer("shift", torch.full((4,), 0.3))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.a(x) + self.b(z) + self.shift))


def test_per_sample_gradients_match_one_backward_per_sample():
    torch.manual_seed(0)
    model = TwoInputs().double()
    x, z, y = torch.randn(6, 3).double(), torch.randn(6, 2).double(), torch.tensor([0, 2, 1, 1, 0, 2])
    for chunk in (None, 4):
        grads = per_sample_gradients(model, nn.functional.cross_entropy, (x, z), y, chunk_size=chunk)
        assert list(grads) == ["a.weight", "a.bias", "b.weight", "b.bias", "out.weight"]  # frozen bias left out
        for i in range(6):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 1], z[i:i + 1]), y[i:i + 1]).backward()
            for name, p in model.named_parameters():
                if p.requires_grad:
                    torch.testing.assert_close(grads[name][i], p.grad, rtol=1e-12, atol=1e-14)
    calls = []

    def counting_ce(out, target):
        calls.append(1)
        return nn.functional.cross_entropy(out, target)
    per_sample_gradients(model, counting_ce, (x, z), y, chunk_size=4)
    assert len(calls) == 2  # 6 samples in vectorised chunks of 4 and 2
    mean = {k: v.mean(0) for k, v in grads.items()}
    model.zero_grad()
    nn.functional.cross_entropy(model(x, z), y).backward()  # mean of per-sample grads = gradient of the mean loss
    torch.testing.assert_close(mean["a.weight"], model.a.weight.grad, rtol=1e-12, atol=1e-14)


def test_per_sample_gradients_bad_input():
    model, x, y = nn.Linear(3, 2), torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    ce = nn.functional.cross_entropy
    with pytest.raises(DataError, match="batch size"):
        per_sample_gradients(model, ce, x, y[:3])
    with pytest.raises(DataError, match="empty"):
        per_sample_gradients(model, ce, x[:0], y[:0])
    with pytest.raises(DataError, match="one scalar per sample"):
        per_sample_gradients(model, lambda o, t: ce(o, t, reduction="none").repeat(2), x, y)
    with pytest.raises(DataError, match="tensor or a tuple"):
        per_sample_gradients(model, ce, [1, 2], y)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="chunk_size"):
        per_sample_gradients(model, ce, x, y, chunk_size=0)
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        per_sample_gradients(lambda t: t, ce, x, y)  # type: ignore[arg-type]
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="requires_grad"):
        per_sample_gradients(frozen, ce, x, y)


def test_controller_interval_cap_and_resume():
    noisy = random_grads(8, noise=3.0)
    ctrl = AdaptiveBatchSize(8, test="ip+orth", test_interval=3, max_batch_size=10_000)
    sizes, tested = [], []
    for _ in range(7):
        tested.append(ctrl.should_test)
        sizes.append(ctrl.step(noisy if tested[-1] else None))
    assert tested == [True, False, False, True, False, False, True]
    assert sizes == sorted(sizes) and sizes[0] == math.ceil(ctrl.last.statistic) > 8  # type: ignore[union-attr]
    saved = ctrl.state_dict()
    twin = AdaptiveBatchSize(8, test="ip+orth", test_interval=3, max_batch_size=10_000)
    twin.load_state_dict(saved)
    assert twin.state_dict() == saved and twin.last == ctrl.last
    more = random_grads(8, seed=5, noise=30.0)
    for _ in range(4):
        assert twin.step(more if twin.should_test else None) == ctrl.step(more if ctrl.should_test else None)
    quiet = AdaptiveBatchSize(8)
    assert quiet.step(torch.ones(16, 3)) == 8  # more samples than the batch do not raise the floor
    capped = AdaptiveBatchSize(8, max_batch_size=20)
    assert capped.step(random_grads(8, noise=100.0)) == 20 and not capped.should_test
    assert capped.step() == 20  # at the cap no test runs and no gradients are needed


def test_controller_errors_change_nothing():
    ctrl = AdaptiveBatchSize(8)
    with pytest.raises(DataError, match="test is due at step 0"):
        ctrl.step()
    with pytest.raises(DataError, match="NaN/Inf"):
        ctrl.step([torch.full((8, 2), math.nan)])
    assert (ctrl.batch_size, ctrl.steps, ctrl.last) == (8, 0, None)
    for bad in ({"batch_size": 8}, {"batch_size": 1, "steps": 0, "last": None},
                {"batch_size": 8, "steps": -1, "last": None}, {"batch_size": 8, "steps": 0, "last": {"x": 1}}):
        with pytest.raises(DataError):
            ctrl.load_state_dict(bad)
    assert (ctrl.batch_size, ctrl.steps) == (8, 0)
    for kwargs in ({"batch_size": 1}, {"batch_size": 64, "max_batch_size": 32}, {"batch_size": 8, "test_interval": 0},
                   {"batch_size": 8, "test": "nrom"}, {"batch_size": 8, "nu": math.inf}, {"batch_size": 8.0}):
        with pytest.raises(ConfigError):
            AdaptiveBatchSize(**kwargs)  # type: ignore[arg-type]


def train_linear_regression(label_noise: float, identical_inputs: bool, steps: int = 36) -> list[int]:
    """SGD on 0.5 (w.x - y)^2 from w = 0, batch size from the norm test (eta = 0.5), batches drawn fresh."""
    gen = torch.Generator().manual_seed(0)
    w_star = torch.tensor([[3.0, -2.0, 1.0, 0.5, -1.0]], dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = AdaptiveBatchSize(8, eta=0.5, max_batch_size=2048)
    sizes = []
    for _ in range(steps):
        b = ctrl.batch_size
        x = torch.randn(1 if identical_inputs else b, 5, generator=gen, dtype=torch.float64).expand(b, 5)
        y = x @ w_star.T + label_noise * torch.randn(b, 1, generator=gen, dtype=torch.float64)
        grads = per_sample_gradients(model, lambda out, t: 0.5 * ((out - t) ** 2).sum(), x, y)
        opt.zero_grad()
        (0.5 * ((model(x) - y) ** 2).sum(1).mean()).backward()
        opt.step()
        sizes.append(ctrl.step(grads))
    return sizes


def test_batch_grows_with_noise_and_stays_without():
    noisy = train_linear_regression(label_noise=1.0, identical_inputs=False)
    interpolating = train_linear_regression(label_noise=0.0, identical_inputs=False)
    noiseless = train_linear_regression(label_noise=0.0, identical_inputs=True)
    assert noisy == sorted(noisy) and noisy[-1] == 2048  # near the optimum the noise dominates: up to the cap
    # no label noise: g_i = x_i x_i^T (w - w*), Var/||g||^2 stays about (d + 1) / eta^2, so the batch levels off
    assert 8 < interpolating[-1] < 100
    assert noiseless == [8] * 36  # identical per-sample gradients: zero variance, the batch never moves


def test_synthetic_noise_level_sets_the_batch_size():
    gen = torch.Generator().manual_seed(3)
    mu, sigma, d, n = 1.0, 4.0, 50, 400
    g = mu + sigma * torch.randn(n, d, generator=gen, dtype=torch.float64)
    r = batch_size_test(g, "norm", eta=0.5)
    expected = sigma**2 * d / (0.25 * mu**2 * d)  # trace of the covariance over eta^2 ||mean||^2 = 64
    assert r.statistic == pytest.approx(expected, rel=0.15) and r.batch_size == n


@pytest.mark.parametrize("module", ["batch_size", "_per_sample"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"losslab.stability.{module}"),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_docs_example_runs():
    text = (REPO / "docs" / "stability.md").read_text()
    section = text[text.index("## Adaptive batch size (AdAdaGrad)"):]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/stability.md", "exec"), {})


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")
def test_two_ranks_equal_one_process_on_the_whole_batch():
    out = run_torchrun("-m", "tests.stability._batch_size_worker", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    grads = random_grads(10, noise=2.0)
    for per_tensor in (True, False):
        cpu = batch_size_test(grads, "ip+orth", per_tensor=per_tensor)
        cuda = batch_size_test({k: v.cuda() for k, v in grads.items()}, "ip+orth", per_tensor=per_tensor)
        np.testing.assert_allclose([cuda.var_norm, cuda.var_ip, cuda.var_orth], [cpu.var_norm, cpu.var_ip, cpu.var_orth],
                                   rtol=1e-10)
    model = nn.Linear(3, 2).double().cuda()
    x, y = torch.randn(4, 3, dtype=torch.float64, device="cuda"), torch.tensor([0, 1, 1, 0], device="cuda")
    assert per_sample_gradients(model, nn.functional.cross_entropy, x, y)["weight"].device.type == "cuda"
