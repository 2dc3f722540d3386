"""Numeric-deviation probe: rounding bounds, a hand-computed case, overflow, modules, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from losslab import ConfigError, DataError
from losslab.stability import NumericDeviation, numeric_deviation

# unit roundoff of round-to-nearest: 2^-(mantissa bits + 1)
UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


def test_identity_op_deviation_is_the_cast_rounding():
    x = torch.linspace(0.1, 10.0, 997, dtype=torch.float64)
    dev = numeric_deviation(lambda t: t * 1, x)
    for dtype, u in UNIT.items():
        d = dev[str(dtype)]
        assert isinstance(d, NumericDeviation) and d.numel == 997 and d.n_nonfinite == 0
        assert 0 < d.max_rel <= u * (1 + 1e-12)
        assert d.mean_rel < d.max_rel
    assert dev["torch.bfloat16"].max_rel > dev["torch.float16"].max_rel > dev["torch.float32"].max_rel


def test_hand_computed_sum():
    x = torch.tensor([1.0, 2.0**-9, 2.0**-9, 3.0], dtype=torch.float64)
    # in bf16: 1 + 2^-9 rounds to 1 (ties to even), again, + 3 = 4 exactly; float64: 4 + 2^-8
    dev = numeric_deviation(lambda t: t.cumsum(0), x, dtypes=(torch.bfloat16,))["torch.bfloat16"]
    ref = np.cumsum(x.numpy())
    low = np.array([1.0, 1.0, 1.0, 4.0])
    d = np.abs(low - ref)
    assert dev.max_abs == pytest.approx(d.max()) and dev.mean_abs == pytest.approx(d.mean())
    assert dev.max_rel == pytest.approx((d / np.abs(ref)).max())


def test_overflow_counts_non_finite():
    x = torch.tensor([1.0, 12.0, 20.0], dtype=torch.float64)  # exp(12) > 65504 (fp16 max)
    dev = numeric_deviation(torch.exp, x, dtypes=(torch.float16, torch.bfloat16))
    assert dev["torch.float16"].n_nonfinite == 2 and math.isinf(dev["torch.float16"].max_abs)
    assert dev["torch.bfloat16"].n_nonfinite == 0


def test_module_parameters_follow_dtype_and_are_restored():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    x = torch.randn(4, 16)
    dev = numeric_deviation(lambda t: torch.softmax(lin(t), -1), x, module=lin, dtypes=(torch.bfloat16,))
    assert 0 < dev["torch.bfloat16"].max_abs < 0.05
    for k, v in lin.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k])


def test_attention_fused_vs_naive():
    """SDPA and a naive attention in bf16 deviate from the float64 golden by the same order of magnitude."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))

    def naive(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / 4.0, -1) @ v
    fused = numeric_deviation(torch.nn.functional.scaled_dot_product_attention, q, k, v, dtypes=(torch.bfloat16,))
    plain = numeric_deviation(naive, q, k, v, dtypes=(torch.bfloat16,))
    ratio = fused["torch.bfloat16"].max_abs / plain["torch.bfloat16"].max_abs
    assert 0.1 < ratio < 10


def test_bad_input():
    x = torch.ones(3)
    with pytest.raises(ConfigError, match="callable"):
        numeric_deviation(3, x)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dtypes"):
        numeric_deviation(torch.exp, x, dtypes=(torch.int32,))
    with pytest.raises(ConfigError, match="dtypes"):
        numeric_deviation(torch.exp, x, dtypes=())
    with pytest.raises(ConfigError, match="rel_floor"):
        numeric_deviation(torch.exp, x, rel_floor=0.0)
    with pytest.raises(DataError, match="floating-point"):
        numeric_deviation(torch.exp, torch.ones(3, dtype=torch.long))
    with pytest.raises(DataError, match="no tensor"):
        numeric_deviation(lambda t: 3, x)
    with pytest.raises(DataError, match="NaN"):
        numeric_deviation(torch.log, -x)
    assert torch.equal(x, torch.ones(3))


def test_rel_floor_bounds_the_relative_error_of_near_zero_outputs():
    # t - 1 on 1 + 2^-20: float64 gives 2^-20, bfloat16 rounds the input to 1 and gives 0 (and 3 - 1 = 2 exactly)
    x = torch.tensor([1.0 + 2.0**-20, 3.0], dtype=torch.float64)
    d = 2.0**-20
    default = numeric_deviation(lambda t: t - 1, x, dtypes=(torch.bfloat16,))["torch.bfloat16"]
    assert default.max_abs == d
    assert default.max_rel == pytest.approx(d / (1e-6 * 2.0))  # tau = 1e-6 * max|y64| = 2e-6 > 2^-20
    assert default.mean_rel == pytest.approx(d / (1e-6 * 2.0) / 2)
    floored = numeric_deviation(lambda t: t - 1, x, dtypes=(torch.bfloat16,), rel_floor=0.5)["torch.bfloat16"]
    assert floored.max_rel == pytest.approx(d / 0.5) and floored.mean_rel == pytest.approx(d / 0.5 / 2)
    tiny = numeric_deviation(lambda t: t - 1, x, dtypes=(torch.bfloat16,), rel_floor=1e-30)["torch.bfloat16"]
    assert tiny.max_rel == pytest.approx(1.0)  # the floor is below |y64|: plain relative error


class _Mixed(torch.nn.Module):
    """A float32 layer, a float64 buffer and an integer buffer (registered first)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("idx", torch.tensor([3, 2, 1, 0]))
        self.lin = torch.nn.Linear(4, 4)
        self.register_buffer("table", torch.linspace(0, 1, 4, dtype=torch.float64))

    def forward(self, x):
        return self.lin(x)[..., self.idx] + self.table.to(x.dtype)


def test_module_with_mixed_dtypes_gets_each_dtype_back():
    torch.manual_seed(0)
    m = _Mixed()
    weight = m.lin.weight
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.lin.weight.grad = torch.ones(4, 4)
    dev = numeric_deviation(m, torch.randn(3, 4), module=m, dtypes=(torch.bfloat16, torch.float16))
    assert 0 < dev["torch.bfloat16"].max_abs < 0.1
    after = m.state_dict()
    assert {k: v.dtype for k, v in after.items()} == {k: v.dtype for k, v in before.items()}
    assert {k: v.dtype for k, v in before.items()} == {"idx": torch.int64, "lin.weight": torch.float32,
                                                      "lin.bias": torch.float32, "table": torch.float64}
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert m.lin.weight is weight and torch.equal(m.lin.weight.grad, torch.ones(4, 4))


def test_rounded_reference_isolates_the_op_error():
    x = torch.linspace(-3, 3, 1001, dtype=torch.float64)
    exact = numeric_deviation(torch.exp, x, dtypes=tuple(UNIT))
    rounded = numeric_deviation(torch.exp, x, dtypes=tuple(UNIT), reference="rounded")
    for dtype, u in UNIT.items():
        # exp of an input already in dtype: only the output rounding is left, one unit roundoff for the 16-bit
        # types (computed in float32, then rounded); float32's exp is accurate to one ulp, not correctly rounded
        bound = 2 * u if dtype == torch.float32 else u * (1 + 1e-6)
        assert 0 < rounded[str(dtype)].max_rel <= bound
        assert exact[str(dtype)].max_rel > rounded[str(dtype)].max_rel
    # the input rounding (|x| * u, up to 3u) is part of the end-to-end error
    assert exact["torch.bfloat16"].max_rel > UNIT[torch.bfloat16]
    xb = x.to(torch.bfloat16)
    by_hand = (torch.exp(xb).double() - torch.exp(xb.double())).abs()
    assert rounded["torch.bfloat16"].max_abs == pytest.approx(float(by_hand.max()), rel=1e-12)
    assert rounded["torch.bfloat16"].mean_abs == pytest.approx(float(by_hand.mean()), rel=1e-12)


def test_rounded_reference_with_a_module_restores_it():
    torch.manual_seed(0)
    m = _Mixed()
    weight = m.lin.weight
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(3, 4)
    exact = numeric_deviation(m, x, module=m, dtypes=(torch.bfloat16,))["torch.bfloat16"]
    rounded = numeric_deviation(m, x, module=m, dtypes=(torch.bfloat16,), reference="rounded")["torch.bfloat16"]
    assert 0 < rounded.mean_rel < exact.mean_rel
    after = m.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert m.lin.weight is weight
    with pytest.raises(ConfigError, match="'exact' or 'rounded'"):
        numeric_deviation(torch.exp, x, reference="golden")
