"""SCALE: column-normalised SGD with momentum only on the last layer (Glentis, Li, Han, Hong 2025)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from losslab._errors import ConfigError
from losslab.optim._atoms import check_betas, check_bool, check_number, params_with_grad
from losslab.optim._base import Optimizer, closure_loss

__all__ = ["SCALE", "scale_param_groups"]


def column_normalize(g: torch.Tensor, col_dim: int) -> torch.Tensor:
    """``g / max(sqrt(mean(g^2, dim=col_dim)), 1e-8)`` on the 2-D view ``(size(0), -1)`` (RMS normalisation)."""
    g2 = g.reshape(g.size(0), -1)
    s = torch.sqrt(torch.mean(torch.square(g2), dim=col_dim, keepdim=True)).clamp_min_(1e-8)
    return (g2 / s).view_as(g)


class SCALE(Optimizer):
    r"""SCALE: normalised SGD for matrices (momentum on the last layer only) and AdamW for 1-D parameters.

    For a parameter with ``ndim >= 2`` (viewed as ``(size(0), -1)``):

    .. math::

        \tilde g = m \leftarrow β m + (1-β) g \ \ (\text{last layer only; otherwise } \tilde g = g),\qquad
        u = \tilde g / \max\big(\sqrt{\operatorname{mean}(\tilde g^2, \texttt{col\_dim})}, 10^{-8}\big),\qquad
        p \leftarrow p(1-ηλ) - η u

    ``col_dim = 1`` normalises each row (output unit) of a ``Linear`` weight over its inputs; ``col_dim = 0`` is for
    token embeddings ``(vocab, hidden)``. Parameters with ``ndim < 2`` use AdamW with ``adamw_betas``,
    ``adamw_eps`` (added to ``sqrt(v)`` before the bias correction) and the rate ``adam_lr * lr / lr_0``
    (``lr_0`` the constructor's ``lr``, so the AdamW rate follows the schedule of the main rate).

    **Marking the last layer.** Put its weight in a param group with ``"last_layer": True`` (and embeddings in a
    group with ``"col_dim": 0``), or build the groups with :func:`scale_param_groups`.

    Args:
        params: parameters or param groups (keys ``last_layer``, ``col_dim`` per group).
        lr: ``η`` (> 0; the AdamW rate is scaled relative to it). weight_decay: ``λ`` (the authors' ``wd``).
        momentum: ``β`` of the last-layer momentum. adam_lr: AdamW rate for 1-D parameters (default ``lr``).
        adamw_betas, adamw_eps: AdamW settings for 1-D parameters.

    Returns:
        ``step()`` returns the closure's loss (or None).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2, 2))
        >>> opt = SCALE([w], lr=0.1)
        >>> w.grad = torch.tensor([[3.0, 4.0], [0.0, 1.0]]); opt.step()   # rows divided by their RMS
        >>> [[round(x, 4) for x in row] for row in w.tolist()]
        [[-0.0849, -0.1131], [0.0, -0.1414]]

    References:
        Athanasios Glentis, Jiaxiang Li, Andi Han, Mingyi Hong, "A Minimalist Optimizer Design for LLM
        Pretraining", arXiv:2506.16659, 2025. Code: OptimAI-Lab/Minimalist_LLM_Pretraining
        (``mem_eff_pt/pt_scale/scale_optimizer.py``), followed here.

    Notes:
        The authors' constructor takes ``main_params``/``secondary_params``/``oned_params`` lists and finds
        embeddings by the name ``embed_tokens``; here roles are param-group keys and 1-D parameters are detected by
        ``ndim``. Their code adds the 2-D update to a >2-D parameter without reshaping it (an error); here it is
        reshaped back. Not in pytorch-optimizer.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, weight_decay: float = 0.0, momentum: float = 0.9,
                 adam_lr: float | None = None, adamw_betas: tuple[float, float] = (0.9, 0.999),
                 adamw_eps: float = 1e-8) -> None:
        check_number(type(self).__name__, "lr", lr, low=0.0, low_open=True,
                     hint="SCALE scales the AdamW rate by lr/lr_0, so the constructor's lr must be > 0")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        adam_lr=lr if adam_lr is None else adam_lr, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
                        last_layer=False, col_dim=1)
        self.max_lr = float(lr)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        owner = type(self).__name__
        check_number(owner, "lr", group["lr"], low=0.0)
        check_number(owner, "weight_decay", group["weight_decay"], low=0.0)
        check_number(owner, "momentum", group["momentum"], low=0.0, high=1.0, high_open=True)
        check_number(owner, "adam_lr", group["adam_lr"], low=0.0)
        check_betas(owner, group["adamw_betas"], "adamw_betas")
        check_number(owner, "adamw_eps", group["adamw_eps"], low=0.0)
        check_bool(owner, "last_layer", group["last_layer"])
        if group["col_dim"] not in (0, 1) or isinstance(group["col_dim"], bool):
            raise ConfigError(f"{owner}: col_dim={group['col_dim']!r} is invalid: use 1 (normalise each row, the "
                              "default for Linear weights) or 0 (each column, for embeddings)")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SCALE step; returns the closure's loss or None."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            params = [p for p in params_with_grad(group) if p.numel() > 0]
            for p in (q for q in params if q.ndim >= 2):
                g = p.grad
                assert g is not None
                if group["last_layer"]:
                    state = self.state[p]
                    if "moment1" not in state:
                        state["moment1"] = torch.zeros_like(p)
                    g = state["moment1"].lerp_(g, 1 - group["momentum"])
                u = column_normalize(g, group["col_dim"])
                p.mul_(1 - lr * wd)
                p.add_(u, alpha=-lr)
            beta1, beta2 = group["adamw_betas"]
            # lr_0 is the schedule's base rate: a scheduler records it as initial_lr (schedule_scheduler sets it to
            # the peak), otherwise it is the constructor's lr
            adam_lr = (group["adam_lr"] / group.get("initial_lr", self.max_lr)) * lr
            for p in (q for q in params if q.ndim < 2):
                g = p.grad
                assert g is not None
                state = self._count_step(p, "moment1", "moment2")
                k = state["step"]
                m = state["moment1"].lerp_(g, 1 - beta1)
                v = state["moment2"].lerp_(g.square(), 1 - beta2)
                u = m / (group["adamw_eps"] + v.sqrt())
                scale = (1 - beta1**k) / (1 - beta2**k) ** 0.5
                p.mul_(1 - adam_lr * wd)
                p.add_(u, alpha=-adam_lr / scale)
        return loss


def scale_param_groups(model: torch.nn.Module, last_layer: torch.nn.Module | str | None = None,
                       **group_options: Any) -> list[dict[str, Any]]:
    """Param groups for :class:`SCALE`: embeddings (``col_dim=0``), the last layer (``last_layer=True``), the rest.

    Args:
        model: the network.
        last_layer: the module (or its qualified name in ``model.named_modules()``) whose >=2-D weights get momentum;
            default: the last module in ``model.modules()`` order that owns a >=2-D parameter (e.g. ``lm_head``).
        **group_options: extra keys copied into every group (e.g. ``weight_decay``).

    Returns:
        A list of param groups (empty groups are left out). A weight shared by an ``nn.Embedding`` and the last
        layer (tied embeddings) is treated as an embedding, as in the authors' code.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 10))
        >>> [(len(g["params"]), g.get("last_layer", False), g.get("col_dim", 1)) for g in scale_param_groups(net)]
        [(1, False, 0), (3, False, 1), (1, True, 1)]
    """
    modules = dict(model.named_modules())
    last_module: torch.nn.Module | None
    if isinstance(last_layer, str):
        if last_layer not in modules:
            raise ConfigError(f"scale_param_groups: no module named {last_layer!r} in the model; names include "
                              f"{', '.join(list(modules)[1:6])}")
        last_module = modules[last_layer]
    elif last_layer is None:
        owners = [m for m in model.modules() if any(p.ndim >= 2 for p in m.parameters(recurse=False))]
        last_module = owners[-1] if owners else None
    else:
        last_module = last_layer
    embed: list[torch.Tensor] = []
    last: list[torch.Tensor] = []
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            embed.append(m.weight)
            seen.add(id(m.weight))
    if last_module is not None:
        for p in last_module.parameters(recurse=False):
            if p.ndim >= 2 and id(p) not in seen:
                last.append(p)
                seen.add(id(p))
    rest = [p for p in model.parameters() if id(p) not in seen]
    groups: list[dict[str, Any]] = [{"params": embed, "col_dim": 0}, {"params": rest},
                                    {"params": last, "last_layer": True}]
    return [{**g, **group_options} for g in groups if g["params"]]
