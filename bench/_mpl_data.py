"""Loader of the Multi-Power-Law authors' curves (shared data) with per-step LR rebuilt from the schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from losslab.forecast import Curve
from losslab.schedules import Schedule

PEAK, END, WARMUP = 3e-4, 3e-5, 2160
TRAIN = ["cosine_24000", "constant_24000", "wsdcon_9"]
TEST = ["constant_72000", "cosine_72000", "wsd_20000_24000", "wsdld_20000_24000", "wsdcon_3", "wsdcon_18"]
# the authors' published test figures (README of thu-yao-01-luo/MultiPowerLaw): mean and worst relative error
PUBLISHED = {"25": (0.00110, 0.00409), "100": (0.00142, 0.00583), "400": (0.00168, 0.00995)}
REPO_PARAMS = {  # the authors' fitted MPL parameters (config.py), L0, A, alpha, B, C, beta, gamma
    "25": [3.04045406, 0.52468604, 0.50786857, 363.78751622, 2.06560812, 0.58279013, 0.64142257],
    "100": [2.6514477, 0.60115152, 0.45295811, 437.9464276, 2.13245612, 0.59785199, 0.65523644],
    "400": [2.37474466, 0.65421216, 0.42878731, 523.42464371, 2.02462735, 0.59350493, 0.63472457],
}


def schedule_of(name: str) -> tuple[Schedule, int]:
    """The losslab schedule of a run and its number of steps T (the runs end one step before ``total``)."""
    kind, _, rest = name.partition("_")
    if kind in ("cosine", "constant"):
        total = int(rest)
        if kind == "cosine":
            return Schedule("cosine", {"peak": PEAK, "steps": total, "final_ratio": END / PEAK, "warmup": WARMUP}), total - 1
        return Schedule("constant", {"peak": PEAK, "steps": total, "warmup": WARMUP}), total - 1
    if kind == "wsdcon":
        lr_b = int(rest) * 1e-5
        return Schedule("step", {"peak": PEAK, "steps": 16000, "at": (0.5,), "factor": lr_b / PEAK,
                                 "warmup": WARMUP}), 15999
    cooldown = "exp" if kind == "wsd" else "linear"
    return Schedule("wsd", {"peak": PEAK, "steps": 24000, "decay_start": 20000, "cooldown": cooldown,
                            "final_ratio": END / PEAK, "warmup": WARMUP}), 23999


def load(folder: Path, size: str, name: str) -> tuple[Curve, float]:
    """Curve of run ``name`` of model ``size`` and the largest relative gap between rebuilt and logged LR."""
    data = np.genfromtxt(folder / f"csv_{size}" / f"{name}.csv", delimiter=",", skip_header=1)
    step, lr_col, loss = data[:, 0].astype(np.int64), data[:, 1], data[:, 2]
    sched, total = schedule_of(name)
    lr = sched.lr(total)
    keep = step <= total
    gap = float(np.max(np.abs(lr[step[keep] - 1] - lr_col[keep]) / lr_col[keep]))
    y = np.full(total, np.nan)
    y[step[keep] - 1] = loss[keep]
    return Curve(lr, y, name, {"source": f"multipowerlaw/csv_{size}/{name}.csv"}), gap
