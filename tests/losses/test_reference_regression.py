"""Per-entry reference tests (float64) of the regression family: the formulas written out with loops, hand-computed
tiny cases, equalities with torch.nn.functional, and the properties that pin each definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import losslab.losses as L
from losslab import ConfigError, DataError

D = torch.float64


def _xy(shape=(4, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D) * 2, torch.randn(*shape, generator=g, dtype=D) * 2


def _elementwise(fn, x, y):
    return torch.tensor([fn(float(a), float(b)) for a, b in zip(x.reshape(-1), y.reshape(-1))],
                        dtype=D).reshape(x.shape)


def _per_series(fn, x, y):
    rows = [fn([float(v) for v in a], [float(v) for v in b]) for a, b in zip(x.reshape(-1, x.shape[-1]),
                                                                             y.reshape(-1, y.shape[-1]))]
    return torch.tensor(rows, dtype=D).reshape(x.shape[:-1])


# ---------------------------------------------------------------- point losses


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mae_mse_huber_equal_torch_functional(reduction):
    x, y = _xy()
    torch.testing.assert_close(L.mae(x, y, reduction=reduction), F.l1_loss(x, y, reduction=reduction))
    torch.testing.assert_close(L.mse(x, y, reduction=reduction), F.mse_loss(x, y, reduction=reduction))
    for delta in (0.5, 1.0, 2.5):
        torch.testing.assert_close(L.huber(x, y, delta=delta, reduction=reduction),
                                   F.huber_loss(x, y, delta=delta, reduction=reduction))


def test_point_losses_by_hand():
    x, y = torch.tensor([1.0, 2.0, 0.0], dtype=D), torch.tensor([2.0, 4.0, 0.0], dtype=D)
    assert float(L.mae(x, y)) == pytest.approx(1.0)
    assert float(L.mse(x, y)) == pytest.approx(5 / 3)
    # δ = 1: e = 1 is on the quadratic side (½), e = 2 on the linear side (2 - ½)
    assert L.huber(x, y, reduction="none").tolist() == pytest.approx([0.5, 1.5, 0.0])
    assert float(L.mean_bias_error(x, y)) == pytest.approx(1.0)  # y - ŷ: the model under-forecasts by 1


def test_huber_formula_and_smooth_l1_relation():
    x, y = _xy()

    def ref(a, b, d=0.7):
        e = abs(b - a)
        return 0.5 * e * e if e <= d else d * (e - 0.5 * d)

    torch.testing.assert_close(L.huber(x, y, delta=0.7, reduction="none"), _elementwise(ref, x, y))
    torch.testing.assert_close(L.huber(x, y, delta=0.7, reduction="none") / 0.7,
                               F.smooth_l1_loss(x, y, beta=0.7, reduction="none"))
    with pytest.raises(ConfigError, match="delta"):
        L.huber(x, y, delta=0.0)


def test_log_cosh_formula_stability_and_gradient():
    x, y = _xy()
    torch.testing.assert_close(L.log_cosh(x, y, reduction="none"),
                               _elementwise(lambda a, b: math.log(math.cosh(b - a)), x, y))
    # |e| = 1e4: cosh overflows, the loss is |e| - log 2 exactly (to float precision), gradient tanh(e) = ±1
    for dtype in (torch.float32, D):
        big = torch.tensor([1e4, -1e4], dtype=dtype, requires_grad=True)
        out = L.log_cosh(big, torch.zeros(2, dtype=dtype), reduction="none")
        torch.testing.assert_close(out.double(), torch.full((2,), 1e4 - math.log(2), dtype=D))
        out.sum().backward()
        torch.testing.assert_close(big.grad.double(), torch.tensor([1.0, -1.0], dtype=D))
    xg = x.clone().requires_grad_(True)
    L.log_cosh(xg, y, reduction="sum").backward()
    torch.testing.assert_close(xg.grad, torch.tanh(x - y))
    # ≈ ½ e² near 0
    assert float(L.log_cosh(torch.tensor([1e-3], dtype=D), torch.zeros(1, dtype=D))) == pytest.approx(0.5e-6, rel=1e-5)


def test_msle_keras_formula_and_floor():
    x, y = _xy()
    eps = 1e-7

    def ref(a, b):
        return (math.log(max(a, eps) + 1.0) - math.log(max(b, eps) + 1.0)) ** 2

    torch.testing.assert_close(L.msle(x, y, reduction="none"), _elementwise(ref, x, y))
    # negative predictions are floored: same value as predicting ε, and no gradient
    neg = torch.tensor([-3.0], dtype=D, requires_grad=True)
    L.msle(neg, torch.tensor([2.0], dtype=D)).backward()
    assert float(neg.grad) == 0.0
    with pytest.raises(ConfigError, match="eps"):
        L.msle(x, y, eps=0.0)


def test_mape_keras_formula_and_zero_target():
    x, y = _xy()
    torch.testing.assert_close(L.mape(x, y, reduction="none"),
                               _elementwise(lambda a, b: 100 * abs(b - a) / max(abs(b), 1e-7), x, y))
    out = L.mape(torch.tensor([1.0], dtype=D), torch.tensor([0.0], dtype=D), eps=1e-3)
    assert float(out) == pytest.approx(1e5)
    assert float(L.mape(torch.tensor([110.0]), torch.tensor([100.0]))) == pytest.approx(10.0)
    with pytest.raises(ConfigError, match="eps"):
        L.mape(x, y, eps=-1.0)


def test_mean_bias_error_is_signed_with_constant_gradient():
    x, y = _xy()
    torch.testing.assert_close(L.mean_bias_error(x, y, reduction="none"), y - x)
    assert float(L.mean_bias_error(x + 100.0, y)) < float(L.mean_bias_error(x, y))  # unbounded below
    xg = x.clone().requires_grad_(True)
    L.mean_bias_error(xg, y).backward()
    torch.testing.assert_close(xg.grad, torch.full_like(x, -1.0 / x.numel()))
    assert L.get("mbe") is L.mean_bias_error


def test_quantile_pinball_formula_and_median_is_half_mae():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, 3, generator=g, dtype=D)
    y = torch.randn(4, 5, generator=g, dtype=D)
    qs = (0.1, 0.5, 0.9)
    rows = []
    for i in range(4):
        for t in range(5):
            total = 0.0
            for j, q in enumerate(qs):
                e = float(y[i, t] - x[i, t, j])
                total += q * max(e, 0.0) + (1 - q) * max(-e, 0.0)
            rows.append(total)
    torch.testing.assert_close(L.quantile(x, y, reduction="none"), torch.tensor(rows, dtype=D).reshape(4, 5))
    # q = 0.5 is half the absolute error
    xm = x[..., 1:2]
    torch.testing.assert_close(L.quantile(xm, y, quantiles=(0.5,), reduction="none"), 0.5 * (y - xm[..., 0]).abs())
    torch.testing.assert_close(L.quantile(xm, y, quantiles=(0.5,)), 0.5 * L.mae(xm[..., 0], y))
    assert L.get("pinball") is L.quantile
    # the quantile levels may be a 1-D tensor
    torch.testing.assert_close(L.quantile(x, y, quantiles=torch.tensor(qs)), L.quantile(x, y))


def test_quantile_bad_inputs():
    x, y = torch.zeros(4, 3, dtype=D), torch.zeros(4, dtype=D)
    with pytest.raises(DataError, match="one prediction per quantile"):
        L.quantile(x[:, :2], y)
    with pytest.raises(DataError, match="target's shape"):
        L.quantile(x, torch.zeros(5, dtype=D))
    for bad in ((0.1, 1.5), (), "0.5", 0.5):
        with pytest.raises(ConfigError, match="quantile"):
            L.quantile(x, y, quantiles=bad)


def test_same_shape_is_required():
    x = torch.zeros(3, 4, dtype=D)
    for name in ("mae", "mse", "huber", "log_cosh", "msle", "mape", "mean_bias_error", "madl", "gmadl",
                 "relative_absolute_error", "nrmse", "rrmse", "rmsle"):
        with pytest.raises(DataError, match="same shape"):
            L.get(name)(x, torch.zeros(3, 5, dtype=D))
        with pytest.raises(DataError, match="floating"):
            L.get(name)(x, torch.zeros(3, 4, dtype=torch.long))
        with pytest.raises(DataError, match="NaN"):
            L.get(name)(x, torch.full((3, 4), float("inf"), dtype=D))


# ---------------------------------------------------------------- per-series losses


def _mean(v):
    return sum(v) / len(v)


def test_rmsle_per_series_keras_formula_and_gradient_at_perfect_fit():
    x, y = _xy()
    x, y = x.abs(), y.abs()

    def ref(a, b):
        return math.sqrt(_mean([(math.log(max(p, 1e-7) + 1) - math.log(max(t, 1e-7) + 1)) ** 2
                                for p, t in zip(a, b)]))

    torch.testing.assert_close(L.rmsle(x, y, reduction="none"), _per_series(ref, x, y))
    torch.testing.assert_close(L.rmsle(x, y), _per_series(ref, x, y).mean())
    xg = y.clone().requires_grad_(True)  # perfect fit: the square root's gradient is 0, not NaN
    L.rmsle(xg, y).backward()
    assert torch.equal(xg.grad, torch.zeros_like(y))


def test_relative_absolute_error_per_series_and_batch_global():
    x, y = _xy()

    def ref(a, b):
        m = _mean(b)
        return sum(abs(t - p) for p, t in zip(a, b)) / sum(abs(t - m) for t in b)

    torch.testing.assert_close(L.relative_absolute_error(x, y, reduction="none"), _per_series(ref, x, y))
    # the authors' code sums over the whole batch tensor: that is the loss of one flattened series
    flat = ref(x.reshape(-1).tolist(), y.reshape(-1).tolist())
    assert float(L.relative_absolute_error(x.reshape(1, -1), y.reshape(1, -1))) == pytest.approx(flat, rel=1e-12)
    # predicting each series' mean scores 1, the perfect forecast 0
    ybar = y.mean(-1, keepdim=True).expand_as(y)
    torch.testing.assert_close(L.relative_absolute_error(ybar, y, reduction="none"), torch.ones(4, dtype=D))
    assert float(L.relative_absolute_error(y, y)) == 0.0
    assert L.get("rae") is L.relative_absolute_error


def test_relative_squared_error_is_the_standard_one_not_the_constant_of_the_authors_code():
    x, y = _xy()

    def ref(a, b):
        m = _mean(b)
        return sum((t - p) ** 2 for p, t in zip(a, b)) / sum((t - m) ** 2 for t in b)

    out = L.relative_squared_error(x, y, reduction="none")
    torch.testing.assert_close(out, _per_series(ref, x, y))
    # = 1 - R² per series
    r2 = 1 - ((y - x) ** 2).sum(-1) / ((y - y.mean(-1, keepdim=True)) ** 2).sum(-1)
    torch.testing.assert_close(out, 1 - r2)
    # the authors' utils.RelativeSquaredError divides the squared error by itself: always 1, gradient 0.
    # Here the value depends on the prediction and the gradient is not zero.
    assert not torch.allclose(out, torch.ones_like(out))
    assert float(L.relative_squared_error(y, y)) == 0.0
    xg = x.clone().requires_grad_(True)
    L.relative_squared_error(xg, y).backward()
    assert float(xg.grad.abs().sum()) > 0
    assert L.get("rse") is L.relative_squared_error


@pytest.mark.parametrize("name", ["relative_absolute_error", "relative_squared_error"])
def test_relative_errors_reject_constant_series_and_length_one(name):
    x, y = _xy()
    y = y.clone()
    y[2] = 3.0
    with pytest.raises(DataError, match="1 target series are constant"):
        L.get(name)(x, y)
    with pytest.raises(DataError, match="at least 2 point"):
        L.get(name)(x[:, :1], y[:, :1])


def test_nrmse_authors_code_and_target_std():
    x, y = _xy()

    def std(v):
        m = _mean(v)
        return math.sqrt(_mean([(a - m) ** 2 for a in v]))

    def rmse(a, b):
        return math.sqrt(_mean([(t - p) ** 2 for p, t in zip(a, b)]))

    torch.testing.assert_close(L.nrmse(x, y, reduction="none"), _per_series(lambda a, b: rmse(a, b) / std(a), x, y))
    torch.testing.assert_close(L.nrmse(x, y, normalizer="target_std", reduction="none"),
                               _per_series(lambda a, b: rmse(a, b) / std(b), x, y))
    # collapsed predictions (zero-initialised head): finite value and gradient
    z = torch.zeros_like(x, requires_grad=True)
    out = L.nrmse(z, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(z.grad).all()
    with pytest.raises(ConfigError, match="normalizer"):
        L.nrmse(x, y, normalizer="range")
    with pytest.raises(DataError, match="constant"):
        L.nrmse(x, torch.ones_like(y), normalizer="target_std")


def test_rrmse_authors_code():
    x, y = _xy()

    def ref(a, b):
        return math.sqrt(sum((t - p) ** 2 for p, t in zip(a, b)) / sum(p * p for p in a))

    torch.testing.assert_close(L.rrmse(x, y, reduction="none"), _per_series(ref, x, y))
    assert float(L.rrmse(torch.tensor([[3.0, 4.0]], dtype=D), torch.tensor([[3.0, 7.0]], dtype=D))) == \
        pytest.approx(0.6)
    z = torch.zeros_like(x, requires_grad=True)
    out = L.rrmse(z, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(z.grad).all()
    with pytest.raises(ConfigError, match="eps"):
        L.rrmse(x, y, eps=1e-300)


# ---------------------------------------------------------------- directional trading losses


def test_madl_by_hand_range_and_zero_gradient():
    r_hat = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=D, requires_grad=True)
    r = torch.tensor([0.02, 0.01, -0.03, 0.04], dtype=D)
    out = L.madl(r_hat, r, reduction="none")
    assert out.tolist() == pytest.approx([-0.02, 0.01, 0.03, 0.0])
    out.sum().backward()
    assert torch.equal(r_hat.grad, torch.zeros(4, dtype=D))
    x, y = _xy()
    m = L.madl(x, y, reduction="none")
    assert bool((m.abs() <= y.abs()).all())
    torch.testing.assert_close(L.madl(y, y), -y.abs().mean())  # the perfect direction earns every move


def test_gmadl_formula_and_large_a_limit_is_half_madl():
    x, y = _xy()

    def ref(a_, b_):
        def f(p, t):
            return -(1 / (1 + math.exp(-a_ * t * p)) - 0.5) * abs(t) ** b_
        return f

    for a, b in ((0.5, 1.0), (3.0, 2.0), (10.0, 0.0)):
        torch.testing.assert_close(L.gmadl(x, y, a=a, b=b, reduction="none"), _elementwise(ref(a, b), x, y))
    torch.testing.assert_close(L.gmadl(x, y, a=1e9, b=1.0), 0.5 * L.madl(x, y))
    # hand case: σ(0.5·(-2)·1) - ½ = σ(-1) - ½, times -|R|² = -4
    out = L.gmadl(torch.tensor([1.0], dtype=D), torch.tensor([-2.0], dtype=D), a=0.5, b=2.0)
    assert float(out) == pytest.approx(-(1 / (1 + math.e) - 0.5) * 4)
    # unlike MADL it has a gradient, pointing the prediction towards the sign of the realised return
    xg = torch.zeros(3, dtype=D, requires_grad=True)
    L.gmadl(xg, torch.tensor([1.0, -1.0, 2.0], dtype=D), a=1.0).backward()
    assert xg.grad.tolist() == pytest.approx([-1 / 12, 1 / 12, -4 / 12])  # -½·(a/2)·R·|R|^b / n
    with pytest.raises(ConfigError, match="a="):
        L.gmadl(x, y, a=0.0)
    with pytest.raises(ConfigError, match="b="):
        L.gmadl(x, y, b=-1.0)


# ---------------------------------------------------------------- HL-Gauss


def _appendix_probs(y, lo, hi, m, sigma):
    """Farebrother et al.'s Appendix A transform_to_probs, one target at a time."""
    edges = [lo + (hi - lo) * i / m for i in range(m + 1)]
    cdf = [math.erf((e - y) / (math.sqrt(2) * sigma)) for e in edges]
    z = cdf[-1] - cdf[0]
    return [(cdf[i + 1] - cdf[i]) / z for i in range(m)]


def test_hl_gauss_matches_appendix_code():
    g = torch.Generator().manual_seed(3)
    m, lo, hi, sigma = 10, -1.0, 3.0, 0.3
    x = torch.randn(7, m, generator=g, dtype=D) * 2
    y = torch.rand(7, generator=g, dtype=D) * 4 - 1
    probs = torch.tensor([_appendix_probs(float(v), lo, hi, m, sigma) for v in y], dtype=D)
    torch.testing.assert_close(L.hl_gauss_target(y, num_bins=m, min_value=lo, max_value=hi, sigma=sigma), probs)
    rows = [-sum(float(probs[i, k]) * float(torch.log_softmax(x[i], 0)[k]) for k in range(m)) for i in range(7)]
    out = L.hl_gauss(x, y, min_value=lo, max_value=hi, sigma=sigma, reduction="none")
    torch.testing.assert_close(out, torch.tensor(rows, dtype=D))
    # the appendix's forward: F.cross_entropy with probability targets
    torch.testing.assert_close(L.hl_gauss(x, y, min_value=lo, max_value=hi, sigma=sigma), F.cross_entropy(x, probs))
    torch.testing.assert_close(probs.sum(-1), torch.ones(7, dtype=D))


def test_hl_gauss_default_sigma_clamping_and_shapes():
    m, lo, hi = 8, 0.0, 4.0
    y = torch.tensor([[0.3, 2.0], [3.9, 1.1]], dtype=D)
    x = torch.randn(2, 2, m, generator=torch.Generator().manual_seed(0), dtype=D)
    width = (hi - lo) / m
    torch.testing.assert_close(L.hl_gauss(x, y, min_value=lo, max_value=hi),
                               L.hl_gauss(x, y, min_value=lo, max_value=hi, sigma=0.75 * width))
    assert L.hl_gauss(x, y, min_value=lo, max_value=hi, reduction="none").shape == (2, 2)
    # targets outside the support are clamped to the nearest end (the appendix code gives NaN far away)
    far = torch.tensor([[-1e6, 1e6], [5.0, -0.1]], dtype=D)
    end = torch.tensor([[lo, hi], [hi, lo]], dtype=D)
    torch.testing.assert_close(L.hl_gauss(x, far, min_value=lo, max_value=hi, reduction="none"),
                               L.hl_gauss(x, end, min_value=lo, max_value=hi, reduction="none"))


def test_hl_gauss_value_is_expected_bin_centre():
    lo, hi, m = -2.0, 2.0, 4  # centres -1.5, -0.5, 0.5, 1.5
    big = torch.full((4, m), -1e3, dtype=D)
    big[torch.arange(4), torch.arange(4)] = 0.0
    assert L.hl_gauss_value(big, min_value=lo, max_value=hi).tolist() == pytest.approx([-1.5, -0.5, 0.5, 1.5])
    x = torch.randn(3, m, generator=torch.Generator().manual_seed(0), dtype=D)
    p = torch.softmax(x, -1)
    ref = [sum(float(p[i, k]) * (lo + (k + 0.5) * (hi - lo) / m) for k in range(m)) for i in range(3)]
    torch.testing.assert_close(L.hl_gauss_value(x, min_value=lo, max_value=hi), torch.tensor(ref, dtype=D))
    # logits = log of the target histogram give back y for a target in the middle (symmetric histogram)
    m2 = 51
    p0 = L.hl_gauss_target(torch.tensor([0.0], dtype=D), num_bins=m2, min_value=-1.0, max_value=1.0)
    torch.testing.assert_close(L.hl_gauss_value(p0.clamp_min(1e-300).log(), min_value=-1.0, max_value=1.0),
                               torch.zeros(1, dtype=D), atol=1e-12, rtol=0)


def test_hl_gauss_bad_inputs():
    x, y = torch.zeros(3, 5, dtype=D), torch.zeros(3, dtype=D)
    with pytest.raises(ConfigError, match="max_value"):
        L.hl_gauss(x, y, min_value=1.0, max_value=1.0)
    with pytest.raises(ConfigError, match="sigma"):
        L.hl_gauss(x, y, min_value=0.0, max_value=1.0, sigma=0.0)
    with pytest.raises(DataError, match="at least 2 bins"):
        L.hl_gauss(x[:, :1], y, min_value=0.0, max_value=1.0)
    with pytest.raises(DataError, match="one scalar per row"):
        L.hl_gauss(x, torch.zeros(3, 1, dtype=D), min_value=0.0, max_value=1.0)
    with pytest.raises(ConfigError, match="num_bins"):
        L.hl_gauss_target(y, num_bins=2.5, min_value=0.0, max_value=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        L.hl_gauss(x, y)  # the support has no default  # type: ignore[call-arg]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, kw", [("relative_absolute_error", {}), ("relative_squared_error", {}),
                                      ("nrmse", {"normalizer": "target_std"})])
def test_constant_series_whose_mean_rounds_is_still_refused(name, kw, dtype):
    y = torch.full((2, 7), 0.1, dtype=dtype)  # mean(0.1, ...) is not exactly 0.1: the spread rounds to ~1e-9, not 0
    y[1] = torch.linspace(0, 1, 7, dtype=dtype)
    with pytest.raises(DataError, match="1 target series are constant"):
        L.get(name)(y + 0.1, y, **kw)


@pytest.mark.parametrize("kw, match", [
    ({"num_bins": 1}, "num_bins must be an integer ≥ 2"),
    ({"sigma": 1e300}, "flat"),
    ({"min_value": -3e38, "max_value": 3e38}, "does not fit in float32"),
])
def test_hl_gauss_settings_that_would_give_nan_are_config_errors(kw, match):
    settings = {"num_bins": 4, "min_value": -1.0, "max_value": 1.0, **kw}
    with pytest.raises(ConfigError, match=match):
        L.hl_gauss_target(torch.tensor([0.0]), **settings)
    if settings["num_bins"] >= 2:
        logits = torch.zeros(1, settings["num_bins"])
        with pytest.raises(ConfigError, match=match):
            L.hl_gauss(logits, torch.tensor([0.0]), **{k: v for k, v in settings.items() if k != "num_bins"})
    numpy_bins = L.hl_gauss_target(torch.tensor([0.0]), num_bins=np.int64(4), min_value=-1.0, max_value=1.0)
    torch.testing.assert_close(numpy_bins, L.hl_gauss_target(torch.tensor([0.0]), num_bins=4, min_value=-1.0,
                                                             max_value=1.0))


def test_defaults_that_set_the_numbers_gmadl_a_and_the_eps_floors():
    # GMADL with a = 1000: -(sigmoid(1000 * 0.05 * 0.02) - 1/2) * |0.02|^1
    got = L.gmadl(torch.tensor([0.05], dtype=torch.float64), torch.tensor([0.02], dtype=torch.float64))
    assert got.item() == pytest.approx(-(1 / (1 + math.exp(-1.0)) - 0.5) * 0.02, rel=1e-12)
    collapsed, y = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    assert L.nrmse(collapsed, y).item() == pytest.approx(1e8, rel=1e-12)  # RMSE 1 over the floor eps = 1e-8
    assert L.rrmse(collapsed, y).item() == pytest.approx(math.sqrt(2 / 1e-8), rel=1e-12)
