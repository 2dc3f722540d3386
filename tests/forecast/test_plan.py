"""plan_schedule: known optima on hand-made fits, brute-force agreement, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from losslab._errors import ConfigError
from losslab.forecast.fit import CurveFit
from losslab.forecast.laws.tissue import annealing_areas
from losslab.forecast.plan import plan_schedule
from losslab.schedules import Schedule

OPTIONS = {"lam": 0.999, "fit_lambda": False, "warmup": "area"}


def tissue_fit(l0=2.5, a=0.8, alpha=0.5, c=0.3):
    return CurveFit("tissue", {"L0": l0, "A": a, "alpha": alpha, "C": c}, options=dict(OPTIONS),
                    settings={"peak_lr": 1e-3})


def final_loss_reference(params, lr):
    """The Tissue law at the last step, from the paper's recursion written out."""
    l0, a, alpha, c = params
    s1 = s2 = m = 0.0
    prev = lr[0]
    for eta in lr:
        s1 += eta
        m = 0.999 * m + (prev - eta)
        s2 += m
        prev = eta
    return l0 + a * s1 ** -alpha - c * s2


def test_no_annealing_benefit_means_keep_the_peak():
    plan = plan_schedule(tissue_fit(c=0.0), 4000, "cosine")
    assert plan.best.params["final_ratio"] == pytest.approx(1.0, abs=0.02)
    plan = plan_schedule(tissue_fit(c=0.0), 4000, "wsd")
    lr = plan.best.lr(4000)
    assert lr.mean() > 0.97e-3  # (almost) no cooldown: all the area is kept


def test_no_area_benefit_means_anneal_fully_and_early():
    plan = plan_schedule(tissue_fit(a=0.0), 4000, "linear")
    assert plan.best.params["final_ratio"] == pytest.approx(0.0, abs=1e-3)
    plan = plan_schedule(tissue_fit(a=0.0), 4000, "wsd")
    assert plan.best.params["final_ratio"] <= 1e-3 and plan.best.params["decay"] >= 0.9


def test_cosine_plan_matches_brute_force():
    params = (2.5, 0.8, 0.5, 0.3)
    plan = plan_schedule(tissue_fit(*params), 3000, "cosine")
    finals = np.linspace(0.0, 1.0, 201)
    losses = [final_loss_reference(params, Schedule("cosine", {"peak": 1e-3, "steps": 3000, "final_ratio": f})
                                   .lr(3000)) for f in finals]
    assert plan.best.params["final_ratio"] == pytest.approx(finals[int(np.argmin(losses))], abs=0.01)
    assert plan.best_loss == pytest.approx(min(losses), rel=1e-6)
    assert plan.best_loss <= plan.baselines["cosine"] + 1e-12


def test_wsd_plan_beats_defaults_and_reports():
    fit = tissue_fit()
    plan = plan_schedule(fit, 5000, "wsd", warmup=100)
    assert plan.best.kind == "wsd" and plan.best.params["warmup"] == 100
    assert plan.best_loss <= min(plan.baselines.values()) + 1e-12
    lr = plan.best.lr(5000)
    s1, s2 = annealing_areas(lr)
    assert plan.best_loss == pytest.approx(2.5 + 0.8 * s1[-1] ** -0.5 - 0.3 * s2[-1], rel=1e-12)
    d = plan.to_dict()
    assert d["best"] == plan.best.to_spec() and set(d["baselines"]) == {"cosine", "wsd"}
    assert "planned is" in plan.summary()


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"steps": -5}, "steps must be a positive integer"),
    ({"steps": 2.5}, "steps must be a positive integer"),
    ({"steps": 100, "family": "cosinus"}, "unknown schedule family"),
    ({"steps": 100, "warmup": 100}, "warmup must be"),
    ({"steps": 100, "peak": -1.0}, "peak must be"),
])
def test_bad_inputs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        plan_schedule(tissue_fit(), **kwargs)


def test_peak_is_required_when_the_fit_does_not_record_it():
    fit = tissue_fit()
    fit.settings = {}
    with pytest.raises(ConfigError, match="pass peak"):
        plan_schedule(fit, 1000)


def test_final_ratio_stays_within_the_fitted_lr_range_unless_asked():
    fit = tissue_fit(c=0.5)
    fit.uncertainty["extent"] = {"steps": 4000.0, "s1": 4.0, "lr_min": 1e-4}  # fitted down to 0.1 x peak
    bounded = plan_schedule(fit, 4000, "cosine")
    assert bounded.min_final_ratio == pytest.approx(0.1)
    assert bounded.best.params["final_ratio"] >= 0.1 - 1e-12
    free = plan_schedule(fit, 4000, "cosine", min_final_ratio=0.0)
    assert free.best.params["final_ratio"] < 0.1  # the law alone rewards decaying further
    assert free.best_loss <= bounded.best_loss
    assert bounded.to_dict()["min_final_ratio"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="min_final_ratio must be in"):
        plan_schedule(fit, 4000, "cosine", min_final_ratio=1.5)


def test_summary_says_higher_when_a_default_beats_the_plan():
    """A default outside the searched range (WSD decays to 0) can predict lower: say "higher", not "-x % lower"."""
    from losslab.forecast.plan import SchedulePlan

    best = Schedule("wsd", {"peak": 1e-3, "steps": 100, "decay": 0.5, "cooldown": "cosine", "final_ratio": 0.1})
    plan = SchedulePlan(best=best, best_loss=2.0, baselines={"cosine": 2.1, "wsd": 1.9}, family="wsd", steps=100,
                        peak=1e-3, warmup=0, evaluated=1, law="mpl", min_final_ratio=0.1)
    text = plan.summary()
    assert "default cosine: 2.1000 (planned is 4.76 % lower)" in text
    assert "default wsd: 1.9000 (planned is 5.26 % higher" in text
    assert "-" not in text.split("default wsd:")[1].split("%")[0]
