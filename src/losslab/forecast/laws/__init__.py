"""Catalogue of loss-curve laws across learning-rate schedules (``losslab list laws`` reads ``registry``).

Each law is a :class:`~losslab.forecast.laws._base.Law` subclass in its own file; its :class:`LawInfo` record names
its parameters, options and paper. ``registry.get(name)`` returns the class; build it with its options, e.g.
``registry.get("tissue")(lam=0.999)``.
"""

from __future__ import annotations

from losslab._registry import Registry
from losslab.forecast.laws._base import Law, LawInfo
from losslab.forecast.laws.mpl import MultiPowerLaw
from losslab.forecast.laws.power import PowerLaw
from losslab.forecast.laws.tissue import TissueLaw

__all__ = ["Law", "LawInfo", "MultiPowerLaw", "PowerLaw", "TissueLaw", "registry"]

registry: Registry[LawInfo] = Registry("law")


def _register(cls: type[Law], summary: str, reference: str, aliases: tuple[str, ...] = (),
              schedule_aware: bool = True) -> None:
    registry.register(LawInfo(name=cls.name, summary=summary, reference=reference, obj=cls,
                              params=cls.param_names, options=tuple(cls.option_defaults.items()),
                              schedule_aware=schedule_aware), aliases=aliases)


_register(PowerLaw, "plain power law in steps, L = E + A t^-alpha (schedule-blind baseline)",
          "Kaplan, McCandlish, Henighan et al., Scaling Laws for Neural Language Models, arXiv:2001.08361, 2020",
          aliases=("power_law", "powerlaw"), schedule_aware=False)
_register(TissueLaw, "LR-annealing law, L = L0 + A S1^-alpha - C S2 (forward area + annealing area)",
          "Tissue, Wang, Wang, Scaling Law with Learning Rate Annealing, arXiv:2408.11029, 2024",
          aliases=("annealing", "lr_annealing"))
_register(MultiPowerLaw, "multi-power law, L = L0 + A (S1+S_W)^-alpha - LD(t) (power-law loss drops)",
          "Luo, Wen, Hu, Sun, Liu, Sun, Lyu, Chen, A Multi-Power Law for Loss Curve Prediction Across Learning "
          "Rate Schedules, arXiv:2503.12811, 2025", aliases=("multi_power", "multipower", "multi_power_law"))
