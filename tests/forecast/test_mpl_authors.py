"""MultiPowerLaw(method="authors") against the authors' fitting code, written out here in torch float64.

Reference: thu-yao-01-luo/MultiPowerLaw, src/fitting.py (initialize_params, mpl_adam_fit), src/models.py (MPL.forward)
and src/config.py (step sizes, patience). The only change: float64 targets (the code reads them as float32).
"""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import huber
from scipy.stats import linregress

from losslab._errors import ConfigError
from losslab.forecast import Curve, fit_curves
from losslab.forecast.laws import MultiPowerLaw
from losslab.schedules import constant, cosine, step_decay
from tests.forecast._synth import curves as synth_curves

PEAK, T, WARMUP, EVERY = 3e-4, 2400, 100, 40
TRUE = np.array([3.0, 0.55, 0.5, 400.0, 2.0, 0.6, 0.65])


def _curves() -> list[Curve]:
    t = np.arange(1, T + 1)
    rng = np.random.default_rng(3)
    law = MultiPowerLaw(exact=True)
    out = []
    for name, lr in (("cosine", cosine(t, peak=PEAK, steps=T, final_ratio=0.1, warmup=WARMUP)),
                     ("constant", constant(t, peak=PEAK, steps=T, warmup=WARMUP)),
                     ("step", step_decay(t, peak=PEAK, steps=T, at=(0.5,), factor=0.3, warmup=WARMUP))):
        y = law.predict(TRUE, lr) * np.exp(rng.normal(0.0, 0.002, T))
        loss = np.full(T, np.nan)
        loss[WARMUP + EVERY - 1::EVERY] = y[WARMUP + EVERY - 1::EVERY]
        out.append(Curve(lr, loss, name))
    return out


def _their_data(curves: list[Curve]) -> list[dict[str, np.ndarray]]:
    # their schedule arrays are indexed by step with lrs[0] = 0 (the start of the linear warmup)
    return [{"step": c.measured, "loss": c.loss[c.measured - 1], "lrs": np.concatenate([[0.0], c.lr])}
            for c in curves]


def _their_stage1(data: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, float]:
    min_loss = min(d["loss"].min() for d in data)
    log_y = np.concatenate([np.log(d["loss"] - min_loss + 0.01) for d in data])
    log_x = np.concatenate([np.log(np.cumsum(d["lrs"])[d["step"]]) for d in data])
    slope, intercept, _, _, _ = linregress(log_x, log_y)

    def loss_fn0(params):
        l0, a, alpha, b = params
        total = 0.0
        for d in data:
            lr, step = d["lrs"], d["step"]
            pred = l0 + a * np.cumsum(lr)[step] ** (-alpha) - b * (3e-4 - lr[step])
            total += huber(1e-3, np.log(d["loss"]) - np.log(pred)).sum()
        return total

    best, best_x = np.inf, None
    for x0 in product(np.linspace(min_loss - 0.2, min_loss + 0.2, 5),
                      np.linspace(np.exp(intercept) - 0.1, np.exp(intercept) + 0.1, 3),
                      np.linspace(-slope - 0.1, -slope + 0.1, 3), np.linspace(100, 1000, 3)):
        with np.errstate(all="ignore"):
            res = minimize(loss_fn0, x0, method="L-BFGS-B", bounds=[(0, np.inf)] * 4,
                           options={"maxiter": 100000, "ftol": 1e-9, "gtol": 1e-6, "eps": 1e-8})
        if res.fun < best:
            best, best_x = res.fun, res.x
    return best_x, float(best)


class _TheirMPL(torch.nn.Module):
    def __init__(self, *init: float) -> None:
        super().__init__()
        for name, v in zip(("L0", "A", "alpha", "B", "C", "beta", "gamma"), init):
            setattr(self, name, torch.nn.Parameter(torch.tensor(float(v), dtype=torch.float64)))

    def forward(self, s1, lrs, lr_sum, step, lr_gap, loss):
        ld = torch.zeros_like(step, dtype=torch.float64)
        for i, s in enumerate(step):
            ld[i] = torch.sum(lr_gap[1:s + 1] * (1 - (1 + self.C * lrs[1:s + 1] ** (-self.gamma)
                                                         * (lr_sum[s] - lr_sum[:s])) ** (-self.beta)))
        pred = self.L0 + self.A * s1 ** (-self.alpha) + self.B * ld
        r = torch.log(loss) - torch.log(pred.clamp(min=1e-10))
        return torch.where(torch.abs(r) < 1e-3, 0.5 * r**2, 1e-3 * (torch.abs(r) - 0.5e-3)).sum()


def _their_stage2(data: list[dict[str, np.ndarray]], init: list[float]) -> tuple[list[float], int]:
    tensors = []
    for d in data:
        lrs = torch.tensor(d["lrs"], dtype=torch.float64)
        lr_sum = torch.cumsum(lrs, 0)
        gap = torch.zeros_like(lrs)
        gap[1:] = torch.diff(lrs)
        step = torch.tensor(d["step"])
        tensors.append((lr_sum[step], lrs, lr_sum, step, gap, torch.tensor(d["loss"], dtype=torch.float64)))
    model = _TheirMPL(*init)
    opt = torch.optim.AdamW([{"params": [model.L0, model.A, model.B, model.C], "lr": 5e-2},
                             {"params": [model.alpha, model.beta, model.gamma], "lr": 5e-3}])
    best, best_params, lowest, stale = float("inf"), None, float("inf"), 0
    for step in range(200):
        opt.zero_grad()
        total = sum(model(*t) for t in tensors)
        total.backward()
        opt.step()
        if total < lowest - 0.0:
            lowest, stale = total.item(), 0
        else:
            stale += 1
        if step > 20 and stale >= 20:
            break
        if torch.cat([p.grad.flatten() for p in model.parameters()]).norm() < 1e-5:
            break
        if total < best:
            best, best_params = total.item(), [p.item() for p in model.parameters()]
    return best_params, step


@pytest.mark.slow
def test_authors_procedure_matches_their_code():
    curves = _curves()
    fit = fit_curves(curves, "mpl", method="authors", exact=True, quiet=True, calibrate=False)
    record = fit.diagnostics["starts"][0]
    data = _their_data(curves)
    # stage 1: the best of their 135 L-BFGS-B starts (finite differences) is no better than ours; the simplified law
    # is flat along B here, so the two stop at different points of the valley (on the authors' data they agree to
    # 1e-4, see the test on their data below)
    _, cost1 = _their_stage1(data)
    assert record["stage1_cost"] <= cost1 * (1 + 1e-6)
    assert record["lr_rescaled_by"] == 1.0  # the peak LR is the authors' already
    # stage 2: their AdamW loop from our stage-1 start gives the same parameters and stops at the same step
    theirs, stop = _their_stage2(data, record["x0"])
    np.testing.assert_allclose(fit.theta, theirs, rtol=1e-9)
    assert f"AdamW step {stop})" in record["message"]
    assert fit.diagnostics["failed_starts"] == 0


def test_authors_procedure_predicts_the_synthetic_curves():
    curves = _curves()
    fit = fit_curves(curves, "mpl", method="authors", quiet=True, calibrate=False)
    for c in curves:
        rel = np.abs(fit.predict(c.lr, steps=c.measured) / c.loss[c.measured - 1] - 1)
        assert rel.mean() < 0.004
    assert fit.options["method"] == "authors"


@pytest.mark.parametrize("k", [0.1, 10.0])
def test_authors_procedure_does_not_depend_on_the_units_of_the_lr(k):
    curves = synth_curves("mpl", noise=0.002, every=20)  # peak LR 1e-3: the procedure runs on the LR times 0.3
    scaled = [Curve(c.lr * k, c.loss, c.name) for c in curves]
    a = fit_curves(curves, "mpl", method="authors", quiet=True, calibrate=False)
    b = fit_curves(scaled, "mpl", method="authors", quiet=True, calibrate=False)
    np.testing.assert_allclose(b.params["B"], a.params["B"] / k, rtol=1e-4)  # LD blocks merge by log-LR bins
    for c, s in zip(curves, scaled):
        np.testing.assert_allclose(b.predict(s.lr), a.predict(c.lr), rtol=1e-4)


def test_an_overshooting_first_step_keeps_the_parameters_its_objective_was_measured_at():
    from importlib.resources import files
    from pathlib import Path

    from losslab.forecast.io import load_curve

    demo = Path(str(files("losslab") / "data" / "demo"))
    curves = [load_curve(demo / "constant.csv"), load_curve(demo / "cosine.csv")]
    fit = fit_curves(curves, "mpl", method="authors", quiet=True, calibrate=False)
    # the simplified start has A ~ 0.002: the first AdamW step (rate 5e-2) sends A below 0, and the later steps
    # never get back to the start's objective
    assert "kept the parameters before the best step's update" in fit.diagnostics["starts"][0]["message"]
    assert fit.params["A"] > 0
    for c in curves:
        assert np.all(np.isfinite(fit.predict(c.lr))) and np.all(fit.predict(c.lr) > 0)
    # a poor fit (the procedure never improves on its start here), but a valid one
    assert all(c["mean_rel_err"] < 0.03 for c in fit.diagnostics["curves"])


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="method must be one of gauss-newton, authors"):
        fit_curves(_curves(), "mpl", method="adam", quiet=True)


@pytest.mark.slow
def test_authors_procedure_reproduces_their_published_parameters(shared_data):
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    import _mpl_data as D

    folder = shared_data / "multipowerlaw"
    stops = {"25": 100, "100": 107, "400": 90}  # the early-stopping steps in their logs/{25,100,400}.log
    for size, stop in stops.items():
        train = [D.load(folder, size, n)[0] for n in D.TRAIN]
        fit = fit_curves(train, "mpl", method="authors", quiet=True, calibrate=False)
        np.testing.assert_allclose(fit.theta, D.REPO_PARAMS[size], rtol=1e-3)
        assert f"(AdamW step {stop})" in fit.diagnostics["starts"][0]["message"]
