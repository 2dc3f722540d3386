"""The registry of scaling laws (``losslab list scaling-laws``) and :func:`get_law`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from losslab._errors import ConfigError
from losslab._registry import Info, Registry
from losslab.forecast.scaling._law import ScalingLaw
from losslab.forecast.scaling.chinchilla import ChinchillaLaw
from losslab.forecast.scaling.gadre import DownstreamErrorLaw, OverTrainingLaw
from losslab.forecast.scaling.henighan import BivariateNMTLaw, PowerLawConstant
from losslab.forecast.scaling.kaplan import KaplanNDLaw, KaplanNSLaw
from losslab.forecast.scaling.loss_to_loss import LossToLossLaw
from losslab.forecast.scaling.rl import SigmoidComputeLaw

__all__ = ["ScalingLawInfo", "get_law", "registry"]


@dataclass(frozen=True)
class ScalingLawInfo(Info):
    """Registry record of a scaling law: ``obj`` is the law class.

    Attributes:
        inputs: data columns the law reads.
        target: the predicted column.
        params: reported parameter names.
        space: ``"log"`` or ``"linear"`` residuals.
        optimal: True if the law gives a compute-optimal allocation.
    """

    inputs: tuple[str, ...] = ()
    target: str = "loss"
    params: tuple[str, ...] = ()
    space: str = "log"
    optimal: bool = False


registry: Registry[ScalingLawInfo] = Registry("scaling law")


def _register(cls: type[ScalingLaw], aliases: tuple[str, ...] = ()) -> None:
    optimal = cls.optimal is not ScalingLaw.optimal
    registry.register(ScalingLawInfo(name=cls.name, summary=cls.summary, reference=cls.reference, obj=cls,
                                     inputs=cls.inputs, target=cls.target, params=cls.param_names,
                                     space=cls.space, optimal=optimal), aliases=aliases)


def get_law(name: str, **settings: Any) -> ScalingLaw:
    """An instance of the registered law ``name`` with ``settings`` (unknown names suggest the closest)."""
    cls = registry.get(name)
    unknown = sorted(set(settings) - set(cls.settings_names))
    if unknown:
        allowed = ", ".join(cls.settings_names) or "none"
        raise ConfigError(f"law {cls.name!r} has no setting(s) {', '.join(unknown)}; its settings: {allowed}")
    return cls(**settings)


_register(ChinchillaLaw, aliases=("hoffmann",))
_register(KaplanNDLaw, aliases=("kaplan",))
_register(KaplanNSLaw, aliases=("critical_batch",))
_register(OverTrainingLaw, aliases=("gadre",))
_register(DownstreamErrorLaw)
_register(PowerLawConstant, aliases=("henighan",))
_register(BivariateNMTLaw, aliases=("nmt",))
_register(LossToLossLaw)
_register(SigmoidComputeLaw, aliases=("scalerl", "sigmoid"))
