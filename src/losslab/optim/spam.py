"""SPAM: spike-aware Adam with momentum reset (Huang et al. 2025)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from losslab._errors import ConfigError
from losslab.optim._atoms import (
    check_adam_group,
    check_bool,
    check_fused,
    check_int,
    check_number,
    merged_group,
    params_with_grad,
)
from losslab.optim._base import Optimizer, closure_loss

__all__ = ["SPAM"]

_DETECT_MARGIN = 1e-6  # the spike pre-check flags g^2 > theta*v*(1 - ~1e-6): a superset of the authors' test


def spam_warmup_scale(current_step: int, warmup_steps: int) -> float:
    """Step-size multiplier ``1 - dr(c)`` after a momentum reset, exactly as the authors' ``CosineDecay``.

    ``dr(c) = 0.99 * (1 + cos(pi * c / (N + 1))) / 2`` for ``c < N`` (torch's CosineAnnealingLR with
    ``T_max = N + 1`` in closed form) and ``0`` for ``c >= N``; ``c = 0`` is the step of the reset.
    """
    if current_step >= warmup_steps:
        return 1.0
    return 1.0 - (0.0 + (0.99 - 0.0) * (1 + math.cos(math.pi * current_step / (warmup_steps + 1))) / 2)


def spam_clip(grad: torch.Tensor, exp_avg_sq: torch.Tensor, threshold: float) -> torch.Tensor:
    """Spike-aware clipping: where ``g^2 > threshold * v`` return ``sign(g) * sqrt(threshold * v)`` (a new tensor)."""
    mask = grad**2 > threshold * exp_avg_sq
    return torch.where(mask, grad.sign() * torch.sqrt(exp_avg_sq * threshold), grad)


class SPAM(Optimizer):
    r"""SPAM: Adam with periodic momentum reset, spike-aware gradient clipping and a cosine warm-up after each reset.

    With ``T`` the number of completed steps, ``ΔT = reset_interval``, ``N = warmup_steps`` and ``θ = threshold``,
    one step does, for every parameter with a gradient ``g`` (``k`` is the parameter's own step count, never reset):

    .. math::

        \text{if } (T+1) \bmod ΔT = 0:\; m, v \leftarrow 0 \\
        g \leftarrow \operatorname{sign}(g)\sqrt{θ v} \text{ where } g^2 > θ v
            \quad(\text{only if } T+1 \ge A \text{ and } (T+1) \bmod ΔT \ge A,\ A=\texttt{grad\_accu\_steps}) \\
        m \leftarrow β_1 m + (1-β_1) g,\quad v \leftarrow β_2 v + (1-β_2) g^2 \\
        p \leftarrow p - η\,s(c)\,\frac{\sqrt{1-β_2^k}}{1-β_1^k}\,\frac{m}{\sqrt v + ε},\qquad
        p \leftarrow p - ηλ p

    where ``s(c) = 1 - 0.99 (1 + \cos(π c/(N+1)))/2`` for ``c < N`` and 1 otherwise, ``c`` counting steps since the
    last reset (``c = 0`` on the reset step itself, so the step size right after a reset is ``0.01 η``).

    Sparse momentum: a param group with a ``"density"`` key (2-D parameters only) keeps its moments only on a random
    mask with that fraction of entries; the rest of the parameter is not updated. The masks are redrawn at every
    reset (moments kept on the overlap of old and new masks), from a generator seeded with ``seed``.

    Args:
        params: parameters or param groups (a group may carry ``density`` in (0, 1]).
        lr: step size ``η``.
        betas: ``(β1, β2)`` of the moment averages.
        eps: added to ``sqrt(v)`` (outside the bias correction, as in the authors' code; default 1e-6 as theirs).
        weight_decay: decoupled decay ``λ``, applied after the update and not scaled by the warm-up.
        correct_bias: apply Adam's bias correction with the per-parameter step ``k``.
        warmup_steps: ``N``, length of the cosine warm-up of the step size after each reset.
        threshold: ``θ``; 0 disables spike clipping.
        reset_interval: ``ΔT`` (the authors' ``DeltaT``); 0 never resets (the authors' code divides by zero).
        grad_accu_steps: ``A``, steps without clipping at the start and after every reset.
        seed: seed of the generator that draws the sparse-momentum masks (same on every rank by default).
        fused: None (default) uses torch's fused AdamW kernel where it supports the parameters (CPU, CUDA),
            False forces the single-tensor reference, True requires the fused kernel.

    Returns:
        ``step()`` returns the closure's loss (or None).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = SPAM([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, -2.0, 0.5]); opt.step()
        >>> [round(x, 4) for x in w.tolist()]
        [0.9, 1.1, 0.9]

    References:
        Tianjin Huang, Ziquan Zhu, Gaojie Jin, Lu Liu, Zhangyang Wang, Shiwei Liu, "SPAM: Spike-Aware Adam with
        Momentum Reset for Stable LLM Training", arXiv:2501.06842, 2025. Code: TianjinYellow/SPAM-Optimizer
        (``galore_torch/SPAM.py``), followed here.

    Notes:
        Quirks of the authors' code that are reproduced: the warm-up scale after a reset is 0.01, 0.0301, ... and
        jumps to exactly 1 at ``c = N``; the clip uses ``v`` of the previous step (after a reset, the zeroed ``v``);
        the bias-correction step ``k`` is not reset with the moments; weight decay is not scaled by the warm-up;
        the initial mask has exactly ``int(density * numel)`` entries while redrawn masks are Bernoulli(density).
        Differences: the authors' code writes the clipped gradient into ``p.grad`` (and, for ``density`` groups,
        overwrites ``p.grad`` with the update); here ``p.grad`` is left untouched. Their weight decay on ``density``
        groups writes into a copy and is a no-op; here it decays the masked entries, as intended.
        pytorch-optimizer 4.1's ``SPAM`` evaluates the warm-up one step late (0.0301, 0.0886, ..., 0.9799, 1) and
        defaults ``warmup_epoch=50``; both differ from the authors'.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        warmup_steps: int = 150,
        threshold: float = 5000,
        reset_interval: int = 500,
        grad_accu_steps: int = 20,
        *,
        seed: int = 0,
        fused: bool | None = None,
    ) -> None:
        owner = type(self).__name__
        self.warmup_steps = check_int(owner, "warmup_steps", warmup_steps)
        self.threshold = check_number(owner, "threshold", threshold, low=0.0, hint="use 0 to disable clipping")
        self.reset_interval = check_int(owner, "reset_interval", reset_interval, hint="use 0 to never reset")
        self.grad_accu_steps = check_int(owner, "grad_accu_steps", grad_accu_steps)
        self.seed = check_int(owner, "seed", seed)
        self.fused = check_fused(owner, fused)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._total_step = 0
        self._current_step = self.warmup_steps + 1
        super().__init__(params, defaults)

    # ----------------------------------------------------------------------------------------- validation
    def _check_group(self, group: dict[str, Any]) -> None:
        owner = type(self).__name__
        check_adam_group(owner, group)
        check_bool(owner, "correct_bias", group["correct_bias"])
        if "density" in group:
            check_number(owner, "density", group["density"], low=0.0, high=1.0, low_open=True,
                         hint="density is the kept fraction of each 2-D parameter, e.g. density=0.25")
            for p in group["params"]:
                if p.ndim != 2:
                    raise ConfigError(f"{owner}: a param group with density={group['density']} holds a parameter of "
                                      f"shape {tuple(p.shape)}; sparse momentum needs 2-D parameters, so put the "
                                      "others in a group without 'density'")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate the group (before any change) and draw its sparse-momentum masks if it has ``density``."""
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, torch.Tensor) else list(params)
        self._check_group({**merged_group(self.defaults, group), "params": group["params"]})
        torch.optim.Optimizer.add_param_group(self, group)  # validated above, with its params
        if "density" in group:
            for p in self.param_groups[-1]["params"]:
                total = p.numel()
                keep = min(int(group["density"] * total), total)
                mask = torch.zeros(total, dtype=torch.bool)
                if keep > 0:
                    mask[torch.randperm(total, generator=self._generator)[:keep]] = True
                self.state[p]["mask"] = mask.view(p.shape).to(p.device)

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus the global counters and the mask generator under ``"spam"``."""
        out = super().state_dict()
        out["spam"] = {"total_step": self._total_step, "current_step": self._current_step,
                       "generator": self._generator.get_state()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load torch's part and the ``"spam"`` counters (a dict saved by :meth:`state_dict`)."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("spam", None)
        if extra is None:
            raise ConfigError("SPAM.load_state_dict: the state dict has no 'spam' entry; save it with SPAM.state_dict()")
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch casts every non-step state tensor to the parameter's dtype
            if "mask" in state:
                state["mask"] = state["mask"].bool()
        self._total_step = int(extra["total_step"])
        self._current_step = int(extra["current_step"])
        self._generator.set_state(extra["generator"])

    # ----------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SPAM step (see the class docstring); returns the closure's loss or None."""
        loss = closure_loss(closure)
        t1 = self._total_step + 1
        interval = self.reset_interval
        scale = spam_warmup_scale(self._current_step, self.warmup_steps)
        reset = interval > 0 and t1 % interval == 0
        clip = (self.threshold != 0 and t1 >= self.grad_accu_steps
                and (interval == 0 or t1 % interval >= self.grad_accu_steps))
        for group in self.param_groups:
            params = params_with_grad(group)
            if not params:
                continue
            if "density" in group:
                for p in params:
                    self._step_masked(group, p, scale, reset, clip)
                continue
            fast, rest = self._split_fused(params)
            self._step_fused(group, fast, scale, reset, clip)
            for p in rest:
                self._step_reference(group, p, scale, reset, clip)
        self._total_step += 1
        self._current_step += 1
        if interval > 0 and (self._total_step + 1) % interval == 0:
            self._update_masks()
            self._current_step = 0
        return loss

    def _moments(self, p: torch.Tensor, like: torch.Tensor, reset: bool) -> tuple[torch.Tensor, torch.Tensor]:
        state = self._count_step(p, "exp_avg", "exp_avg_sq", like=like)
        if reset and state["step"] > 1:
            state["exp_avg"].zero_()
            state["exp_avg_sq"].zero_()
        return state["exp_avg"], state["exp_avg_sq"]

    def _step_size(self, group: dict[str, Any], k: int) -> float:
        beta1, beta2 = group["betas"]
        step_size = group["lr"]
        if group["correct_bias"]:
            step_size *= math.sqrt(1.0 - beta2**k) / (1.0 - beta1**k)
        return step_size

    def _direction(self, group: dict[str, Any], p: torch.Tensor, grad: torch.Tensor, reset: bool,
                   clip: bool) -> torch.Tensor:
        """Update the moments of ``p`` with ``grad`` (clipped where it spikes) and return ``m / (sqrt(v) + eps)``."""
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = self._moments(p, grad, reset)
        if clip:
            grad = spam_clip(grad, exp_avg_sq, self.threshold)
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        return exp_avg / exp_avg_sq.sqrt().add_(group["eps"])

    def _step_reference(self, group: dict[str, Any], p: torch.Tensor, scale: float, reset: bool, clip: bool) -> None:
        assert p.grad is not None
        direction = self._direction(group, p, p.grad, reset, clip)
        p.add_(direction, alpha=-self._step_size(group, self.state[p]["step"]) * scale)
        if group["weight_decay"] > 0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])

    def _step_masked(self, group: dict[str, Any], p: torch.Tensor, scale: float, reset: bool, clip: bool) -> None:
        assert p.grad is not None
        mask = self.state[p]["mask"]
        direction = self._direction(group, p, p.grad[mask], reset, clip)
        full = torch.zeros_like(p)
        full[mask] = direction
        full.mul_(scale)
        p.add_(full, alpha=-self._step_size(group, self.state[p]["step"]))
        if group["weight_decay"] > 0:
            kept = p[mask]
            p[mask] = kept.add(kept, alpha=-group["lr"] * group["weight_decay"])

    def _step_fused(self, group: dict[str, Any], params: list[torch.Tensor], scale: float, reset: bool,
                    clip: bool) -> None:
        """Same rule as the reference: a cheap spike pre-check, exact clipping where it fires, one fused kernel."""
        if not params:
            return
        beta1, beta2 = group["betas"]
        grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
        moments = [self._moments(p, p, reset) for p in params]
        exp_avgs = [m for m, _ in moments]
        exp_avg_sqs = [v for _, v in moments]
        if clip:
            # v - (1+margin) g^2 / theta < 0 wherever the authors' g^2 > theta v holds (and slightly more often)
            gap = torch._foreach_addcmul(exp_avg_sqs, grads, grads, value=-(1.0 + _DETECT_MARGIN) / self.threshold)
            device = gap[0].device
            flags = torch.stack([x.min().to(device, torch.float64) for x in gap]).lt(0).tolist()  # one host sync
            grads = [spam_clip(g, v, self.threshold) if f else g for g, v, f in zip(grads, exp_avg_sqs, flags)]
        by_step: dict[tuple[int, torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(params):  # the kernel takes one device and dtype per call
            by_step.setdefault((self.state[p]["step"], p.device, p.dtype), []).append(i)
        for (k, device, _), idx in by_step.items():
            if group["correct_bias"]:
                step_value, eps = float(k), group["eps"] / math.sqrt(1.0 - beta2**k)
            else:  # 1 - beta**inf == 1: no bias correction
                step_value, eps = math.inf, group["eps"]
            steps = [torch.tensor(step_value, dtype=torch.float32, device=device) for _ in idx]
            torch._fused_adamw_([params[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx],
                                [exp_avg_sqs[i] for i in idx], [], steps, lr=group["lr"] * scale, beta1=beta1,
                                beta2=beta2, weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
        if group["weight_decay"] > 0:
            torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])

    def _update_masks(self) -> None:
        """Redraw the masks of ``density`` groups; moments survive on the overlap of the old and new masks."""
        for group in self.param_groups:
            if "density" not in group:
                continue
            for p in group["params"]:
                state = self.state[p]
                old = state["mask"]
                new = (torch.rand(p.shape, generator=self._generator) < group["density"]).to(p.device)
                if "exp_avg" in state:
                    both = new & old
                    for key in ("exp_avg", "exp_avg_sq"):
                        fresh = torch.zeros(int(new.sum()), dtype=p.dtype, device=p.device)
                        fresh[both[new]] = state[key][both[old]]
                        state[key] = fresh
                state["mask"] = new
