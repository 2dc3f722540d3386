"""losslab.optim (see the package docstring of losslab)."""

__all__: list[str] = []
