"""Loss-curve laws across learning-rate schedules and scaling laws across runs (NumPy/SciPy only, no torch)."""

from losslab.forecast._curve import Curve

__all__ = ["Curve"]
