"""LR sensitivity: hand-computed cases (NaN runs included), bad input, and the sweep runner on several executors."""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab import ConfigError, DataError
from losslab.stability import LRSweepResult, lr_sensitivity, lr_sweep, plot_lr_sweep
from tests.conftest import REPO

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(("losses", "l0", "want"), [
    ({1e-3: 3.0, 1e-2: 2.0, 1e-1: 2.5}, 5.0, (3.0 + 2.0 + 2.5) / 3 - 2.0),
    ({1e-3: 3.0, 1e-2: 2.0, 1e-1: NAN}, 5.0, (3.0 + 2.0 + 5.0) / 3 - 2.0),  # NaN run counts as l0
    ({1e-3: 3.0, 1e-2: 2.0, 1e-1: INF}, 5.0, (3.0 + 2.0 + 5.0) / 3 - 2.0),
    ({1e-3: 3.0, 1e-2: 2.0, 1e-1: 1e9}, 5.0, (3.0 + 2.0 + 5.0) / 3 - 2.0),  # worse than init == diverged
    ({1e-3: 3.0, 1e-2: 2.0, 1e-1: -INF}, 5.0, (3.0 + 2.0 + 5.0) / 3 - 2.0),
    ({3e-4: 4.0, 1e-3: 3.0, 3e-3: 2.0, 1e-2: 2.2, 3e-2: NAN, 1e-1: NAN}, 6.0,
     (4.0 + 3.0 + 2.0 + 2.2 + 6.0 + 6.0) / 6 - 2.0),
    ({1e-2: 2.0}, 5.0, 0.0),  # one LR: no sensitivity
    ({1e-3: 2.0, 1e-2: 2.0}, 5.0, 0.0),
])
def test_lr_sensitivity_hand_computed(losses, l0, want):
    assert lr_sensitivity(losses, l0) == pytest.approx(want, abs=1e-12)


def test_worse_than_init_run_is_equivalent_to_nan_run():
    base = {1e-3: 3.0, 1e-2: 2.0}
    assert lr_sensitivity({**base, 1.0: 50.0}, 4.0) == lr_sensitivity({**base, 1.0: NAN}, 4.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 10.0), st.just(NAN), st.just(INF)), min_size=1, max_size=12),
       st.floats(0.5, 10.0), st.floats(-5.0, 5.0), st.floats(0.1, 10.0))
def test_lr_sensitivity_invariants(losses, l0, shift, scale):
    if not any(math.isfinite(v) and v < l0 for v in losses):
        return  # the degenerate all-diverged grid is covered by its own test
    grid = {10.0 ** -(i + 1): v for i, v in enumerate(losses)}
    base = lr_sensitivity(grid, l0)
    assert 0.0 <= base <= l0 - min(v for v in losses if math.isfinite(v)) + 1e-12
    # order of the grid does not matter; shifting and scaling losses and l0 together shifts/scales nothing/scales
    assert lr_sensitivity(dict(reversed(list(grid.items()))), l0) == pytest.approx(base, abs=1e-12)
    assert lr_sensitivity({k: v + shift for k, v in grid.items()}, l0 + shift) == pytest.approx(base, abs=1e-9)
    assert lr_sensitivity({k: v * scale for k, v in grid.items()}, l0 * scale) == pytest.approx(base * scale,
                                                                                              abs=1e-9)


def test_all_runs_diverged_warns_and_returns_zero():
    with pytest.warns(RuntimeWarning, match="no run"):
        assert lr_sensitivity({1e-2: NAN, 1e-1: 9.0}, 4.0) == 0.0


@pytest.mark.parametrize(("args", "err", "match"), [
    (({}, 3.0), ConfigError, "final_losses_by_lr is empty"),
    (({1e-3: 2.0}, NAN), ConfigError, "init_loss"),
    (({1e-3: 2.0}, INF), ConfigError, "init_loss"),
    (({1e-3: 2.0}, None), ConfigError, "init_loss"),
    (({0.0: 2.0}, 3.0), ConfigError, "learning rate"),
    (({-1e-3: 2.0}, 3.0), ConfigError, "learning rate"),
    (({1e-3: "x"}, 3.0), DataError, "numbers"),
    (([(1e-3, 2.0)], 3.0), ConfigError, "mapping"),
])
def test_lr_sensitivity_bad_input(args, err, match):
    with pytest.raises(err, match=match):
        lr_sensitivity(*args)


# -- the sweep runner ------------------------------------------------------------------------------------------
def quadratic_train(lr, z_loss=0.0, steps=20):
    """GD on f(w) = w^2 / 2 * curvature from w=2: diverges when lr * curvature > 2. Module level: picklable."""
    curvature = 10.0 / (1.0 + 100.0 * z_loss)  # an "intervention" that lowers the curvature
    w = 2.0
    init = 0.5 * curvature * w * w
    for _ in range(steps):
        w -= lr * curvature * w
        if abs(w) > 1e6:
            return {"final_loss": NAN, "init_loss": init}
    return {"final_loss": 0.5 * curvature * w * w, "init_loss": init}


def raising_train(lr):
    if lr > 0.05:
        raise RuntimeError("out of memory (simulated)")
    return 1.0 - lr


LRS = [1e-3, 1e-2, 0.1, 0.15, 0.3]


def _expected(z):
    out = {lr: quadratic_train(lr, z) for lr in LRS}
    return lr_sensitivity({lr: o["final_loss"] for lr, o in out.items()}, out[LRS[0]]["init_loss"])


def test_lr_sweep_threads_matches_formula_and_orders_settings():
    settings = {"baseline": {}, "z-loss": {"z_loss": 0.01}}
    with ThreadPoolExecutor(2) as ex:
        r = lr_sweep(quadratic_train, LRS[::-1], settings=settings, executor=ex, quiet=True)
        assert ex.submit(lambda: 1).result() == 1  # a passed executor is left open
    assert isinstance(r, LRSweepResult) and r.lrs.tolist() == sorted(LRS)
    assert r.init_loss == {"baseline": 20.0, "z-loss": 10.0}
    assert r.sensitivity["baseline"] == pytest.approx(_expected(0.0), rel=1e-12)
    assert r.sensitivity["z-loss"] == pytest.approx(_expected(0.01), rel=1e-12)
    assert r.sensitivity["z-loss"] < r.sensitivity["baseline"]
    assert math.isnan(r.final_losses["baseline"][-1])  # lr 0.3 * curvature 10 > 2 diverges
    assert "LR sensitivity" in r.summary() and r.to_dict()["provenance"]["settings"]["settings"] == settings


def test_lr_sweep_records_errors_as_diverged():
    with ThreadPoolExecutor(2) as ex, pytest.warns(RuntimeWarning, match="raised"):
        r = lr_sweep(raising_train, [0.01, 0.02, 0.1], init_loss=2.0, executor=ex, quiet=True)
    assert list(r.errors["baseline"]) == [0.1] and "out of memory" in r.errors["baseline"][0.1]
    assert r.sensitivity["baseline"] == pytest.approx(lr_sensitivity({0.01: 0.99, 0.02: 0.98, 0.1: NAN}, 2.0))


def test_lr_sweep_bad_input():
    for kwargs, match in [({"lrs": []}, "lrs is empty"), ({"lrs": [1e-3, -1.0]}, "lrs"),
                          ({"lrs": [1e-3, 1e-3]}, "duplicates"), ({"lrs": [1e-3], "init_loss": NAN}, "init_loss"),
                          ({"lrs": [1e-3], "settings": {}}, "settings"),
                          ({"lrs": [1e-3], "settings": {"a": {}}, "init_loss": {"b": 1.0}}, "init_loss"),
                          ({"lrs": [1e-3], "max_workers": 0}, "max_workers")]:
        with pytest.raises(ConfigError, match=match):
            lr_sweep(quadratic_train, **kwargs)
    with pytest.raises(ConfigError, match="callable"):
        lr_sweep(3, [1e-3])  # type: ignore[arg-type]
    with ThreadPoolExecutor(1) as ex, pytest.raises(ConfigError, match="no init_loss"):
        lr_sweep(raising_train, [0.01], executor=ex, quiet=True)


def test_lr_sweep_unpicklable_train_fn_on_processes_is_a_clear_error():
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1) as ex, pytest.raises(ConfigError, match="picklable"):
        lr_sweep(lambda lr: 1.0, [1e-3], init_loss=2.0, executor=ex, quiet=True)


@pytest.mark.slow
def test_lr_sweep_default_process_pool():
    r = lr_sweep(quadratic_train, [1e-2, 0.3], max_workers=2, quiet=True)
    assert r.provenance["settings"]["executor"] == "ProcessPoolExecutor"
    assert r.sensitivity["baseline"] == pytest.approx(
        lr_sensitivity({1e-2: quadratic_train(1e-2)["final_loss"], 0.3: NAN}, 20.0))


@pytest.mark.slow
def test_lr_sweep_on_ray():
    pytest.importorskip("ray")
    from losslab.stability import RayExecutor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # workers must import this checkout's losslab and tests package, not an installed copy
        path = os.pathsep.join([str(REPO / "src"), str(REPO)])
        with RayExecutor(num_cpus=1, ray_init={"num_cpus": 1, "include_dashboard": False, "log_to_driver": False,
                                               "runtime_env": {"env_vars": {"PYTHONPATH": path}}}) as ex:
            r = lr_sweep(quadratic_train, [1e-2, 0.1, 0.3], init_loss=20.0, executor=ex, quiet=True)
    assert r.sensitivity["baseline"] == pytest.approx(
        lr_sensitivity({lr: quadratic_train(lr)["final_loss"] for lr in (1e-2, 0.1, 0.3)}, 20.0))


def test_plot_lr_sweep(tmp_path):
    r = LRSweepResult(np.array([1e-3, 1e-2, 1e-1]), {"baseline": np.array([3.0, 2.0, NAN]),
                                                     "qk-norm": np.array([2.5, 2.0, 2.2])},
                      {"baseline": 4.0, "qk-norm": 4.0}, {"baseline": 1.0, "qk-norm": 0.23})
    fig = plot_lr_sweep(r, title="toy")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "toy"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["baseline (LR sensitivity 1)", "qk-norm (LR sensitivity 0.23)", "loss at init ℓ0",
                      "diverged (counted as ℓ0)"]
    crosses = [ln for ln in ax.lines if ln.get_marker() == "x" and len(ln.get_ydata())]
    assert len(crosses) == 1 and crosses[0].get_ydata().tolist() == [4.0]  # the NaN run drawn at l0
    fig.savefig(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 1000


@pytest.mark.slow
def test_tiny_transformer_example_trains(monkeypatch):
    """The example's training function runs (few steps) and the qk-norm/z-loss switches are wired in."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lr_example", REPO / "examples" / "lr_sensitivity_tiny_transformer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "STEPS", 6)
    monkeypatch.setattr(mod, "WARMUP", 2)
    out = mod.train(1e-2)
    assert out["final_loss"] < out["init_loss"] and abs(out["init_loss"] - math.log(mod.VOCAB)) < 0.5
    assert any(isinstance(m, mod.QKNorm) for m in mod.TinyGPT(qk_norm=True).modules())
    assert mod.train(1e-2, z_loss_coef=1e-4)["final_loss"] != out["final_loss"]
