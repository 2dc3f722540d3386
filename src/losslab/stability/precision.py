"""Numeric-deviation probe: how far an op's low-precision result is from its float64 result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from losslab._errors import ConfigError, DataError

__all__ = ["NumericDeviation", "numeric_deviation"]


@dataclass(frozen=True)
class NumericDeviation:
    """Deviation of one op run in ``dtype`` from the same op in float64.

    Attributes:
        dtype: the low precision, e.g. ``"torch.bfloat16"``.
        max_abs: :math:`\\max |y - y_{64}|`.
        mean_abs: :math:`\\mathrm{mean} |y - y_{64}|`.
        max_rel: :math:`\\max |y - y_{64}| / \\max(|y_{64}|, \\tau)`.
        mean_rel: mean of the same ratio.
        n_nonfinite: elements where the low-precision output is NaN/Inf but the float64 one is finite.
        numel: number of output elements compared.
    """

    dtype: str
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    n_nonfinite: int
    numel: int

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict."""
        return asdict(self)


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return obj.detach().to(dtype)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


_Saved = tuple[dict[str, Any], str, torch.Tensor, torch.Tensor]


def _cast_module(module: torch.nn.Module, dtype: torch.dtype) -> list[_Saved]:
    """Cast the floating-point parameters and buffers of ``module`` to copies in ``dtype``, each tensor on its own.

    Returns what :func:`_restore_module` needs to put every original tensor back untouched, with its own dtype (a
    module may mix dtypes, e.g. a float32 layer with a float64 or an integer buffer). Parameters keep their identity
    (their ``.data`` is swapped, as ``Module.to`` does); gradients are left alone.
    """
    saved: list[_Saved] = []
    copies: dict[int, torch.Tensor] = {}  # shared (tied) tensors are cast once
    with torch.no_grad():
        for mod in module.modules():
            stores: tuple[dict[str, Any], ...] = (mod._parameters, mod._buffers)
            for store in stores:
                for name, t in list(store.items()):
                    if t is None or not t.is_floating_point() or (isinstance(t, torch.nn.Parameter) and id(t) in copies):
                        continue
                    if id(t) not in copies:
                        copies[id(t)] = t.detach().to(dtype, copy=True)
                    saved.append((store, name, t, t.data))
                    if isinstance(t, torch.nn.Parameter):
                        t.data = copies[id(t)]
                    else:
                        store[name] = copies[id(t)]
    return saved


def _restore_module(saved: list[_Saved]) -> None:
    for store, name, original, data in reversed(saved):
        if isinstance(original, torch.nn.Parameter):
            original.data = data
        else:
            store[name] = original


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flatten(out[k])]
    return []


def numeric_deviation(fn: Callable[..., Any], *inputs: Any,
                      dtypes: Sequence[torch.dtype] = (torch.bfloat16, torch.float16, torch.float32),
                      rel_floor: float | None = None, module: torch.nn.Module | None = None,
                      reference: Literal["exact", "rounded"] = "exact") -> dict[str, NumericDeviation]:
    r"""Run ``fn(*inputs)`` in each low precision and in float64 and report the deviation of the outputs.

    Floating-point tensors in ``inputs`` (nested lists/tuples/dicts too) and, if given, the parameters of
    ``module`` are cast to each dtype; the float64 run is the "golden" reference. Deviations are measured in
    float64 over all output tensors:

    .. math:: d_i = |y_i - y^{(64)}_i|, \qquad r_i = d_i / \max(|y^{(64)}_i|, \tau)

    with :math:`\tau` = ``rel_floor`` (default: :math:`10^{-6} \max_i |y^{(64)}_i|`, so near-zero references
    do not blow up the relative error). Comparing, say, a fused attention kernel and a naive one by their
    deviations from the same golden value tells how much of the error the kernel adds.

    Args:
        fn: any callable taking ``inputs`` and returning a tensor or a (nested) tuple/list/dict of tensors.
        inputs: its arguments.
        dtypes: the low precisions to probe.
        rel_floor: :math:`\tau` above.
        module: a module ``fn`` uses whose floating-point parameters and buffers must follow the dtype; each one
            gets its own dtype and values back afterwards (integer buffers are left alone).
        reference: ``"exact"`` runs the float64 reference on the inputs as given, so the deviation includes the
            rounding of the inputs to ``dtype`` (the error a user of that precision gets end to end);
            ``"rounded"`` runs it, for each dtype, on the inputs (and module tensors) first rounded to that dtype,
            so the deviation is the op's own arithmetic error (what a kernel comparison needs).

    Returns:
        ``{str(dtype): NumericDeviation}``.

    Example:
        >>> x = torch.linspace(-3, 3, 101)
        >>> dev = numeric_deviation(torch.exp, x, dtypes=(torch.bfloat16,))
        >>> 1e-4 < dev["torch.bfloat16"].max_rel < 1e-2
        True

    References:
        Golden et al., "Is Flash Attention Stable?", arXiv:2405.02803, 2024 (numeric deviation of an
        optimised kernel against a float64 golden reference).

    Notes:
        Golden et al. additionally compare the deviation to that of a baseline run in the same precision and
        measure its effect on model weights over training; this probe gives the per-op building block.
    """
    if not callable(fn):
        raise ConfigError(f"fn must be callable, got {type(fn).__name__}")
    if not dtypes or not all(isinstance(d, torch.dtype) and d.is_floating_point for d in dtypes):
        raise ConfigError(f"dtypes must be a non-empty sequence of floating torch dtypes, got {dtypes!r}")
    if reference not in ("exact", "rounded"):
        raise ConfigError(f"reference must be 'exact' or 'rounded', got {reference!r}")
    if rel_floor is not None and not rel_floor > 0:
        raise ConfigError(f"rel_floor must be > 0, got {rel_floor!r}")
    if module is None and not any(isinstance(t, torch.Tensor) and t.is_floating_point()
                                  for t in _flatten(list(inputs))):
        raise DataError("no floating-point tensor among the inputs: nothing to cast to low precision")

    def run(*casts: torch.dtype) -> list[torch.Tensor]:
        saved: list[list[_Saved]] = []
        args = inputs
        try:
            for dtype in casts:  # one cast after the other: rounded to the first, computed in the last
                saved.append(_cast_module(module, dtype) if module is not None else [])
                args = _cast(args, dtype)
            with torch.no_grad():
                return [t.detach().to(torch.float64) for t in _flatten(fn(*args))]
        finally:
            for s in reversed(saved):
                _restore_module(s)

    def golden_of(dtype: torch.dtype | None) -> tuple[list[torch.Tensor], torch.Tensor, float]:
        golden = run(torch.float64) if dtype is None else run(dtype, torch.float64)
        if not golden:
            raise DataError("fn returned no tensor; it must return a tensor or a tuple/list/dict of tensors")
        ref = torch.cat([g.reshape(-1) for g in golden])
        if not torch.isfinite(ref).all():
            where = "" if dtype is None else f" on the inputs rounded to {dtype}"
            raise DataError(f"the float64 reference output has NaN/Inf{where}; the op itself is ill-defined on "
                            "these inputs")
        tau = float(rel_floor) if rel_floor is not None else max(1e-6 * float(ref.abs().max()), 1e-300)
        return golden, ref, tau

    exact = golden_of(None) if reference == "exact" else None
    out = {}
    for dtype in dtypes:
        golden, ref, tau = exact if exact is not None else golden_of(dtype)
        low = run(dtype)
        if [t.shape for t in low] != [g.shape for g in golden]:
            raise DataError(f"fn returned shapes {[tuple(t.shape) for t in low]} in {dtype} but "
                            f"{[tuple(g.shape) for g in golden]} in float64")
        y = torch.cat([t.reshape(-1) for t in low])
        finite = torch.isfinite(y)
        d = (y - ref).abs()
        r = d / ref.abs().clamp(min=tau)
        d_f, r_f = d[finite], r[finite]
        n_bad = int((~finite).sum())
        out[str(dtype)] = NumericDeviation(
            dtype=str(dtype),
            max_abs=float("inf") if n_bad else float(d_f.max()) if d_f.numel() else 0.0,
            mean_abs=float(d_f.mean()) if d_f.numel() else float("nan"),
            max_rel=float("inf") if n_bad else float(r_f.max()) if r_f.numel() else 0.0,
            mean_rel=float(r_f.mean()) if r_f.numel() else float("nan"),
            n_nonfinite=n_bad, numel=int(y.numel()))
    return out
