"""Distributed helpers shared by the optimizers and the monitor: DTensors (FSDP2 ``fully_shard``, HSDP, tensor
parallelism) and data-parallel wrappers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["is_dtensor", "local_part", "unwrap_parallel", "vdot"]


def _dtensor_class() -> Any:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4: DTensor lived in a private module, or torch without distributed support
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


_DTENSOR = _dtensor_class()


def is_dtensor(t: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (a parameter sharded by FSDP2, for instance)."""
    return _DTENSOR is not None and isinstance(t, _DTENSOR)


def local_part(t: Tensor) -> tuple[Tensor, float | None]:
    """``(local tensor, weight)`` of ``t``: a plain tensor comes back as is with weight ``None``.

    A DTensor comes back as its local piece with weight ``1 / replicas``, ``replicas`` being the number of ranks
    of its mesh holding a copy of that piece (the product of the mesh sizes along ``Replicate`` placements). A sum
    over all ranks of ``weight * f(piece)`` then counts every piece once.

    Raises:
        ValueError: a ``Partial`` placement (pending reduction): the local pieces do not add up to a norm.
    """
    if not is_dtensor(t):
        return t, None
    replicas = 1
    for dim, placement in enumerate(t.placements):  # type: ignore[attr-defined]
        if placement.is_replicate():
            replicas *= t.device_mesh.size(dim)  # type: ignore[attr-defined]
        elif placement.is_partial():
            raise ValueError("a DTensor with a Partial placement (a pending reduction) cannot be measured; "
                             "measure after the gradients are reduced (after backward with FSDP)")
    return t.to_local(), 1.0 / replicas  # type: ignore[attr-defined]


def vdot(a: Tensor, b: Tensor) -> Tensor:
    """``<a, b>`` over all entries (0-d). Plain tensors: ``torch.dot`` of the flattened tensors. DTensors: the
    sum of the products, reduced over the ranks and returned as a plain (replicated) tensor, since a sharded
    tensor whose first dimension does not divide by the mesh cannot be flattened."""
    if is_dtensor(a) or is_dtensor(b):
        out = (a * b).sum()
        return out.full_tensor() if is_dtensor(out) else out  # type: ignore[attr-defined]
    return torch.dot(a.reshape(-1), b.reshape(-1))


def unwrap_parallel(model: Any) -> Any:
    """The module inside a ``DataParallel``/``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    return model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model
