"""Shared plumbing of the diagnostics: argument checks, seeded generators and side-effect-free model evaluation.

Every routine that runs a model goes through :func:`call_model` (or :func:`evaluate_loss`, which checks the loss),
which

- calls the model through :func:`torch.func.functional_call` with *cloned* buffers, so BatchNorm running statistics
  (and ``num_batches_tracked``) of the user's model are never touched, whatever mode the model is in;
- switches every sub-module to the requested mode (``"eval"`` by default, like Li et al.'s ``net.eval()``) and
  restores each sub-module's own ``training`` flag afterwards, even on error (PyHessian calls ``model.eval()``
  and leaves it so);
- runs the forward pass under :func:`private_rng`: a private copy of the global RNG (CPU and the CUDA devices of
  the model and the batch) seeded with a fixed seed (:data:`MODEL_SEED` unless the caller passes one), so random
  draws of the forward pass (dropout masks, RReLU slopes, noise inside ``loss_fn``) are reproducible and the
  caller's RNG state is bit-identical afterwards (running a diagnostic mid-training does not change the run);
- checks that the loss is a finite scalar.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from losslab._errors import ConfigError, DataError

LossFn = Callable[[nn.Module, Any], torch.Tensor]
Seed = int | torch.Generator

_MODES = ("eval", "train", "current")

MODEL_SEED = 0
"""Seed of the private RNG of every model call that is not given one (see :func:`private_rng`)."""


def make_generator(seed: Any, *, name: str = "seed") -> torch.Generator:
    """A CPU :class:`torch.Generator` from an int seed or a generator (used as given); never the global RNG."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(
            f"{name} must be an int or a torch.Generator, got {type(seed).__name__} {seed!r}; "
            f"pass e.g. {name}=0 (results are reproducible for a given seed)"
        )
    if int(seed) < 0:
        raise ConfigError(f"{name} must be a non-negative int, got {seed}; pass e.g. {name}=0")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def model_seed(seed: Any, *, name: str = "seed") -> int:
    """An int seed for :func:`private_rng`: ``seed`` itself (checked) or one int drawn from a generator."""
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**62, (), generator=seed))
    make_generator(seed, name=name)  # the same checks (non-negative int) and error messages
    return int(seed)


def batch_seed(seed: int, index: int) -> int:
    """The private-RNG seed of batch ``index`` of an operator seeded with ``seed``: ``seed + index`` (mod 2**64)."""
    return (seed + index) % 2**64


def check_int(value: Any, name: str, *, low: int = 1, high: int | None = None, hint: str = "") -> int:
    """``value`` as an int in ``[low, high]`` or a :class:`ConfigError` saying what, why and how to fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an int, got {type(value).__name__} {value!r}{hint}")
    v = int(value)
    if v < low or (high is not None and v > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{name} must be {rng}, got {v}{hint}")
    return v


def check_float(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float inside the given (open or closed) bounds, or a :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ConfigError(f"{name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a :class:`ConfigError` listing them."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def check_batch(batch: Any) -> None:
    """Raise :class:`DataError` when the batch is empty (container or tensor with no rows) or holds NaN/Inf."""
    if isinstance(batch, (list, tuple, dict)) and len(batch) == 0:
        raise DataError("the batch is an empty container; pass the inputs (and targets) the loss function expects")
    for t in iter_tensors(batch):
        if t.dim() > 0 and t.shape[0] == 0:
            raise DataError(
                f"the batch holds a tensor with 0 rows (shape {tuple(t.shape)}); a loss over no samples is undefined, "
                "pass at least one sample"
            )
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise DataError(
                f"the batch holds non-finite (NaN/Inf) values in a tensor of shape {tuple(t.shape)}; the loss and "
                "its derivatives would be meaningless — drop or repair those samples first"
            )


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from iter_tensors(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from iter_tensors(item)


def check_model(model: Any) -> nn.Module:
    """``model`` if it is an :class:`torch.nn.Module`, else a :class:`ConfigError`."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_loss_fn(loss_fn: Any) -> LossFn:
    """``loss_fn`` if callable; the contract is ``loss_fn(model, batch) -> scalar tensor``."""
    if not callable(loss_fn):
        raise ConfigError(
            f"loss_fn must be callable as loss_fn(model, batch) -> scalar tensor, got {type(loss_fn).__name__}"
        )
    return loss_fn


def check_loss(loss: Any, what: str = "loss_fn(model, batch)") -> torch.Tensor:
    """Raise :class:`DataError` unless ``loss`` is a finite scalar tensor."""
    if not isinstance(loss, torch.Tensor):
        raise DataError(f"{what} must return a tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise DataError(
            f"{what} must return a scalar, got shape {tuple(loss.shape)}; reduce it (e.g. .mean()) inside loss_fn"
        )
    if not bool(torch.isfinite(loss.detach()).all()):
        raise DataError(
            f"{what} returned a non-finite loss ({loss.item()}); curvature is undefined there — check the "
            "inputs for NaN/Inf or evaluate at a point where the loss is finite"
        )
    return loss.reshape(())


@contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put every sub-module in ``mode`` ("eval", "train" or "current") and restore each flag afterwards."""
    check_choice(mode, "mode", _MODES)
    saved = [(m, m.training) for m in model.modules()]
    try:
        if mode == "eval":
            model.eval()
        elif mode == "train":
            model.train()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


class _LossModule(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so that :func:`torch.func.functional_call` can rebind tensors."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_loss_fn", loss_fn)  # not a sub-module even when loss_fn is an nn.Module

    def forward(self, batch: Any) -> Any:
        fn: LossFn = self.__dict__["_loss_fn"]
        return fn(self.model, batch)


def trainable_names(model: nn.Module, params: Any = None) -> list[str]:
    """Names of the parameters to differentiate: all with ``requires_grad`` or the given list of names."""
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
    else:
        names = list(params)
        unknown = [n for n in names if n not in named]
        if unknown:
            raise ConfigError(f"unknown parameter names {unknown}; valid names are e.g. {list(named)[:5]}")
    if not names:
        raise ConfigError("the model has no trainable parameters to differentiate; pass params=[names] explicitly")
    return names


def cuda_devices(*groups: Iterable[torch.Tensor]) -> list[int]:
    """Sorted indices of the CUDA devices that hold any of the given tensors."""
    return sorted({t.get_device() for group in groups for t in group if t.is_cuda})


@contextmanager
def private_rng(seed: int, devices: list[int]) -> Iterator[None]:
    """Run the block on a private copy of the global RNG (CPU and the CUDA ``devices``) seeded with ``seed``.

    The states of the CPU generator and of each listed CUDA generator are saved, set to ``seed`` for the block and
    restored afterwards (:func:`torch.random.fork_rng`), also on error: the caller's RNG is untouched and the
    block's random draws depend on ``seed`` only.
    """
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def call_model(model: nn.Module, fn: Callable[[nn.Module, Any], Any], batch: Any,
               params: Mapping[str, torch.Tensor] | None = None, mode: str = "eval", *,
               seed: int = MODEL_SEED) -> Any:
    """``fn(model, batch)`` with parameters replaced by ``params`` and buffers cloned; restores the mode.

    The call runs under :func:`private_rng` seeded with ``seed``: the same call twice draws the same dropout masks,
    and the caller's global RNG (CPU and the CUDA devices of the model and the batch) is left as it was.
    """
    wrapper = _LossModule(model, fn)
    tensors: dict[str, torch.Tensor] = {f"model.{n}": b.clone() for n, b in model.named_buffers()}
    if params is not None:
        tensors.update({f"model.{n}": t for n, t in params.items()})
    devices = cuda_devices(model.parameters(), tensors.values(), iter_tensors(batch))
    with model_mode(model, mode), private_rng(seed, devices):
        return torch.func.functional_call(wrapper, tensors, (batch,))


def evaluate_loss(model: nn.Module, loss_fn: LossFn, batch: Any,
                  params: Mapping[str, torch.Tensor] | None = None, mode: str = "eval", *,
                  seed: int = MODEL_SEED) -> torch.Tensor:
    """The finite scalar ``loss_fn(model, batch)`` at ``params`` without side effects on the model or the RNG."""
    return check_loss(call_model(model, loss_fn, batch, params, mode, seed=seed))


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped like ``like``."""
    out, i = [], 0
    for t in like:
        out.append(vector[i:i + t.numel()].view_as(t))
        i += t.numel()
    return out
