"""Per-layer plumbing of :class:`~losslab.optim.KFAC`: supported modules, the Kronecker factors' batch statistics
collected by hooks, and one layer's factors and eigenbases.

Conventions (Grosse & Martens 2016, eq. 23, for the positions of a convolution; a sequence is treated alike):

- the rows of a layer are its input vectors: one per example for ``(B, d)`` inputs, one per example and position
  for ``(B, T, d)`` inputs and for the ``B·H'·W'`` patches of a convolution; ``ā`` is a row with a 1 appended when
  the layer has a bias;
- ``A = (1/N) Σ_rows ā āᵀ`` (``N`` rows), ``G = (1/B) Σ_rows ĝ ĝᵀ`` with ``B`` the leading (example) dimension
  and ``ĝ = B·∂L/∂s`` (``batch_averaged``: the gradient of each example's own loss when ``L`` is the batch mean)
  or ``ĝ = ∂L/∂s``. For ``(B, d)`` inputs ``A ⊗ G`` is then exactly ``E[āāᵀ] ⊗ E[ĝĝᵀ]``; with ``S`` positions
  per example it is ``S · E[āāᵀ] ⊗ E[ĝĝᵀ]`` (positions summed within an example).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from losslab._distributed import is_dtensor
from losslab._errors import ConfigError

__all__ = ["LayerState", "all_reduce_means", "covariance", "input_rows", "output_rows", "running_average",
           "select_layers", "unsupported_reason"]

SUPPORTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
BatchFactors = dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a Linear/Conv2d module cannot be preconditioned (``None`` if it can)."""
    if not all(p.requires_grad for p in module.parameters(recurse=False)):
        return "frozen (a parameter has requires_grad=False)"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups}): its weight is not one (out, in·kh·kw) matrix"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}: only zero padding is unfolded into patches"
    return None


def select_layers(model: nn.Module, skip_layers: Iterable[str | type[nn.Module]]
                  ) -> tuple[dict[str, LayerState], dict[str, str]]:
    """The layers to precondition by name, and the skipped Linear/Conv2d layers with the reason."""
    if isinstance(skip_layers, (str, type)):
        skip_layers = [skip_layers]
    patterns, types = [], []
    for item in skip_layers:
        if isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)
        elif isinstance(item, str):
            try:
                patterns.append(re.compile(item))
            except re.error as exc:
                raise ConfigError(f"KFAC: skip_layers entry {item!r} is not a valid regular expression "
                                  f"({exc})") from exc
        else:
            raise ConfigError(f"KFAC: skip_layers entries must be regular expressions (str) or nn.Module "
                              f"classes, got {item!r}")
    layers, skipped = {}, {}
    for name, module in model.named_modules():
        if not isinstance(module, SUPPORTED):
            continue
        if isinstance(module, tuple(types)) or any(p.search(name) or p.search(type(module).__name__)
                                                   for p in patterns):
            skipped[name] = "skip_layers"
            continue
        if any(is_dtensor(p) for p in module.parameters(recurse=False)):
            raise ConfigError(f"KFAC: layer {name!r} has DTensor parameters (FSDP2 fully_shard or tensor "
                              "parallelism); the Kronecker factors need whole layers: use DDP, or leave the "
                              "layer out with skip_layers")
        reason = unsupported_reason(module)
        if reason is not None:
            skipped[name] = reason
            continue
        layers[name] = LayerState(name, module)
    if not layers:
        found = f" (skipped: {skipped})" if skipped else ""
        raise ConfigError(f"KFAC: the model has no layer to precondition{found}: K-FAC needs an nn.Linear, or an "
                          "nn.Conv2d with groups=1 and zero padding, with trainable parameters")
    return layers, skipped


def input_rows(module: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The rows ``ā`` of a layer input, shape ``(N, d [+1])``, in ``dtype``."""
    x = x.detach().to(dtype)
    if isinstance(module, nn.Conv2d):
        if x.dim() == 3:  # unbatched (C, H, W)
            x = x.unsqueeze(0)
        x = nn.functional.pad(x, module._reversed_padding_repeated_twice)  # ints, "same" and "valid" alike
        cols = nn.functional.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B·L, C·kh·kw), the order of weight.view(out, -1)
    else:
        rows = x.reshape(-1, x.shape[-1])
    if getattr(module, "bias", None) is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def output_rows(module: nn.Module, g: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """The rows of the gradient w.r.t. the layer output, shape ``(N, out)``, and the number of examples ``B``."""
    g = g.detach().to(dtype)
    if isinstance(module, nn.Conv2d):
        if g.dim() == 3:
            g = g.unsqueeze(0)
        return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]), g.shape[0]
    examples = g.shape[0] if g.dim() >= 2 else 1
    return g.reshape(-1, g.shape[-1]), examples


def covariance(rows: torch.Tensor, divisor: float) -> torch.Tensor:
    """``rowsᵀ rows / divisor``, symmetrised (so that every rank and every solver sees an exactly symmetric matrix)."""
    c = rows.t() @ rows / divisor
    return (c + c.t()) / 2


class LayerState:
    """One preconditioned layer: its batch statistics, running factors ``A``, ``G`` and their eigenbases."""

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name = name
        self.module = module
        weight = self.weight
        self.has_bias = self.bias is not None
        self.factor_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.a_dim = weight[0].numel() + int(self.has_bias)
        self.g_dim = weight.shape[0]
        self.reset_batch()
        self.A: torch.Tensor | None = None
        self.G: torch.Tensor | None = None
        self.updates = 0  # running-average updates so far (for factor_init="first")
        self.eigen: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # qa, da, qg, dg

    @property
    def weight(self) -> torch.Tensor:
        """The layer's weight (read from the module each time)."""
        return self.module.weight  # type: ignore[return-value]

    @property
    def bias(self) -> torch.Tensor | None:
        """The layer's bias, or ``None``."""
        return getattr(self.module, "bias", None)

    def reset_batch(self) -> None:
        """Drop the statistics collected since the last step."""
        self.a_sum: torch.Tensor | None = None
        self.g_sum: torch.Tensor | None = None
        self.a_calls = 0
        self.g_calls = 0
        self.a_rows = 0  # input rows and examples seen since the last step: a rank's weight in the average
        self.g_examples = 0

    def add_input(self, x: torch.Tensor) -> None:
        """Accumulate ``A`` of one call of the layer."""
        rows = input_rows(self.module, x, self.factor_dtype)
        a = covariance(rows, max(rows.shape[0], 1))
        self.a_sum = a if self.a_sum is None else self.a_sum + a
        self.a_calls += 1
        self.a_rows += rows.shape[0]

    def add_output_grad(self, g: torch.Tensor, scale_of: Callable[[int], float]) -> None:
        """Accumulate ``G`` of one call from the gradient w.r.t. the layer's output, rows times
        ``scale_of(examples)``."""
        rows, examples = output_rows(self.module, g, self.factor_dtype)
        scale = scale_of(examples)
        if scale != 1.0:
            rows = rows * scale
        c = covariance(rows, max(examples, 1))
        self.g_sum = c if self.g_sum is None else self.g_sum + c
        self.g_calls += 1
        self.g_examples += examples

    def batch_means(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``A`` and ``G`` of this step's batch, averaged over the calls (``None`` where the layer was not run)."""
        a = None if self.a_sum is None else self.a_sum / self.a_calls
        g = None if self.g_sum is None else self.g_sum / self.g_calls
        return a, g

    def grad_matrix(self) -> torch.Tensor | None:
        """The gradient as one ``(out, in·k [+1])`` matrix, or ``None`` when a parameter has no gradient."""
        weight, bias = self.weight, self.bias
        if weight.grad is None or (bias is not None and bias.grad is None):
            return None
        v = weight.grad.reshape(weight.shape[0], -1)
        if bias is not None and bias.grad is not None:
            v = torch.cat([v, bias.grad.reshape(-1, 1)], dim=1)
        return v

    def write_grad(self, v: torch.Tensor) -> None:
        """Copy a ``(out, in·k [+1])`` matrix back into the parameters' ``.grad`` (in place)."""
        weight, bias = self.weight, self.bias
        assert weight.grad is not None
        cols = weight[0].numel()
        weight.grad.copy_(v[:, :cols].reshape(weight.shape))
        if bias is not None and bias.grad is not None:
            bias.grad.copy_(v[:, cols])

    def hooks(self, collect: Callable[[nn.Module], bool], scale_of: Callable[[int], float]) -> Callable[..., None]:
        """The forward hook: ``A`` from the input, and a hook on the output tensor for ``G`` in the backward pass.

        A tensor hook on the output (not a module backward hook) keeps in-place operations after the layer (an
        in-place ReLU) legal; it receives the gradient w.r.t. the output as the layer produced it.
        """
        def forward_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not (isinstance(output, torch.Tensor) and output.requires_grad and collect(module)):
                return
            with torch.no_grad():
                self.add_input(inputs[0])

            def grad_hook(g: torch.Tensor) -> None:
                with torch.no_grad():
                    self.add_output_grad(g, scale_of)

            output.register_hook(grad_hook)

        return forward_hook


def running_average(old: torch.Tensor | None, new: torch.Tensor, decay: float) -> torch.Tensor:
    """``decay·old + (1-decay)·new``, ``old`` being the identity before the first update (kfac-pytorch)."""
    if old is None:
        old = torch.eye(new.shape[0], dtype=new.dtype, device=new.device)
    return decay * old + (1.0 - decay) * new


def all_reduce_means(layers: Mapping[str, LayerState], means: BatchFactors, group: Any) -> BatchFactors:
    """Average each layer's batch factors over the ranks that ran it (one all-reduce of one float64 buffer).

    Each rank weighs by what it saw this step: its input rows for ``A`` (tokens or positions count, not only
    examples) and its examples for ``G``, so ranks with unequal batches (an uneven last batch, ``Join``) pool
    exactly as one process on the concatenated batch would.

    Every rank must call this on a factor step, with the same layers; without an initialised process group of more
    than one rank it returns ``means`` as they are.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return dict(means)
    device = next(iter(layers.values())).weight.device
    pieces, weights = [], []
    for name, (a, g) in means.items():
        s = layers[name]
        for t, dim, seen in ((a, s.a_dim, s.a_rows), (g, s.g_dim, s.g_examples)):
            weight = 0.0 if t is None else float(max(seen, 1))
            pieces.append(torch.zeros(dim * dim, dtype=torch.float64, device=device) if t is None
                          else t.reshape(-1).to(device=device, dtype=torch.float64) * weight)
            weights.append(weight)  # 0 where this rank did not run the layer
    buf = torch.cat([*pieces, torch.tensor(weights, dtype=torch.float64, device=device)])
    dist.all_reduce(buf, group=group)
    totals = buf[-len(weights):].tolist()
    out: BatchFactors = {}
    offset = 0
    for i, name in enumerate(means):
        s = layers[name]
        pair = []
        for j, dim in enumerate((s.a_dim, s.g_dim)):
            chunk = buf[offset: offset + dim * dim]
            offset += dim * dim
            n = totals[2 * i + j]
            pair.append(None if n == 0 else (chunk / n).reshape(dim, dim).to(device=s.weight.device,
                                                                             dtype=s.factor_dtype))
        out[name] = (pair[0], pair[1])
    return out
