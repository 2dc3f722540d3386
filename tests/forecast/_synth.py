"""Synthetic curves from known laws, shared by the forecast tests."""

from __future__ import annotations

import numpy as np

from losslab.forecast import Curve
from losslab.forecast.laws import registry
from losslab.schedules import cosine, step_decay, wsd

T = 3000
WARMUP = 100
PEAK = 1e-3
TRUE = {
    "power": np.array([2.0, 6.0, 0.45]),
    "tissue": np.array([2.5, 0.8, 0.5, 0.3]),
    "mpl": np.array([2.6, 0.7, 0.45, 450.0, 2.0, 0.6, 0.6]),
}


def schedules(steps: int = T) -> dict[str, np.ndarray]:
    t = np.arange(1, steps + 1)
    return {
        "cosine": cosine(t, peak=PEAK, steps=steps, final_ratio=0.1, warmup=WARMUP),
        "wsd": wsd(t, peak=PEAK, steps=steps, decay=0.25, cooldown="linear", final_ratio=0.05, warmup=WARMUP),
        "step": step_decay(t, peak=PEAK, steps=steps, at=(0.6,), factor=0.3, warmup=WARMUP),
    }


def curves(law: str, noise: float = 0.0, every: int = 10, seed: int = 0, names=("cosine", "wsd", "step"),
           steps: int = T, **options) -> list[Curve]:
    """Curves of ``law`` with its TRUE parameters, logged every ``every`` steps, log-normal noise ``noise``."""
    obj = registry.get(law)(**options)
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        lr = schedules(steps)[name]
        y = obj.predict(TRUE[law], lr) * np.exp(rng.normal(0.0, noise, lr.size))
        loss = np.full(lr.size, np.nan)
        loss[every - 1::every] = y[every - 1::every]
        out.append(Curve(lr, loss, name))
    return out
