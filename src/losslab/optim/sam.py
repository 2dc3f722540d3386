"""SAM and ASAM: sharpness-aware minimisation around any base optimizer (Foret et al. 2021; Kwon et al. 2021)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from losslab._errors import ConfigError
from losslab.optim._atoms import check_bool, check_number, params_with_grad
from losslab.optim._base import Wrapper, closure_loss

__all__ = ["SAM"]


class SAM(Wrapper):
    r"""Sharpness-aware minimisation: take the base optimizer's step with the gradient at ``w + e(w)``.

    .. math::

        e(w) = ρ\,\frac{T_w^2\, g}{\|T_w\, g\|_2 + ε},\qquad T_w = \operatorname{diag}(|w|)
        \text{ if adaptive (ASAM) else } I

    where the norm runs over all parameters with a gradient. ``first_step`` moves to ``w + e(w)``; after a second
    forward/backward there, ``second_step`` moves back to ``w`` and calls the base optimizer's ``step`` with the new
    gradient.

    Usage::

        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        loss_fn(model(x), y).backward();  opt.first_step(zero_grad=True)
        loss_fn(model(x), y).backward();  opt.second_step(zero_grad=True)
        # or opt.step(closure), closure = forward + backward; the gradient at w is the one already there, or,
        # when there is none (opt.zero_grad() before), the closure is run at w first

    Gradient accumulation: accumulate ``.backward()`` over micro-batches before each of the two steps.
    AMP: ``first_step`` may run on *scaled* gradients (``e`` does not depend on the gradient scale; a non-finite
    norm skips the perturbation), so no ``unscale_`` is needed before it. After the second backward call
    ``opt.restore()`` and then ``scaler.step(opt); scaler.update()``: ``step()`` without a closure is the second
    step, and a step that the scaler skips leaves the weights at ``w``.
    DDP: run the first backward inside ``model.no_sync()`` to perturb with each replica's own gradient (the
    paper's m-sharpness, and one all-reduce less), and the second backward normally, so the base step uses the
    averaged gradient and replicas stay identical.

    Args:
        params: parameters or param groups (shared with the base optimizer).
        base_optimizer: optimizer class (or factory) called as ``base_optimizer(param_groups, **kwargs)``.
        rho: ``ρ``, radius of the perturbation (the ASAM authors recommend 2.0 with ``adaptive=True``).
        adaptive: ASAM's scale-invariant perturbation.
        eps: ``ε`` in the denominator (1e-12 as in the reference PyTorch code; the paper's JAX code has none).
        **kwargs: arguments of the base optimizer (``lr``, ``momentum``, ...).

    Returns:
        ``step(closure)`` returns the closure's loss at ``w + e(w)``.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        >>> opt = SAM([w], torch.optim.SGD, rho=0.5, lr=0.1)
        >>> w.grad = w.detach().clone(); opt.first_step(zero_grad=True)   # moves by rho * g/||g||
        >>> [round(x, 4) for x in w.tolist()]
        [3.3, 4.4]

    References:
        Pierre Foret, Ariel Kleiner, Hossein Mobahi, Behnam Neyshabur, "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", arXiv:2010.01412, 2021. Jungmin Kwon, Jeongseop Kim, Hyunseo Park, In Kwon Choi,
        "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural Networks",
        arXiv:2102.11600, 2021. The rule and API follow davda54/sam (the de-facto PyTorch reference).

    Notes:
        ``state_dict()`` holds the base optimizer's state (davda54/sam did not restore it before its PR #39); the
        saved copies of ``w`` are scratch buffers reused every step. The weights are restored with ``copy_`` (the
        reference rebinds ``p.data``), so parameter identities and DDP buckets are untouched.
    """

    _load_hint = " (key 'base')"

    def __init__(self, params: Iterable[Any], base_optimizer: Callable[..., torch.optim.Optimizer],
                 rho: float = 0.05, adaptive: bool = False, eps: float = 1e-12, **kwargs: Any) -> None:
        owner = type(self).__name__
        check_number(owner, "rho", rho, low=0.0)
        check_bool(owner, "adaptive", adaptive)
        check_number(owner, "eps", eps, low=0.0, low_open=True,
                     hint="eps keeps rho / (||g|| + eps) finite when the gradient is zero; use e.g. 1e-12")
        if not callable(base_optimizer) or isinstance(base_optimizer, torch.optim.Optimizer):
            raise ConfigError(f"{owner}: base_optimizer={base_optimizer!r} is invalid: pass an optimizer class such as "
                              "torch.optim.SGD (with its arguments as keywords), not an instance")
        defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
        super().__init__(params, defaults)
        self.eps = float(eps)
        self._wrap(base_optimizer, kwargs)
        self._perturbed: list[torch.Tensor] = []

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate ``rho``/``adaptive`` of the group, then add it (to the base optimizer too, once it exists)."""
        merged = {**self.defaults, **param_group}
        check_number(type(self).__name__, "rho", merged["rho"], low=0.0)
        check_bool(type(self).__name__, "adaptive", merged["adaptive"])
        super().add_param_group(merged if hasattr(self, "base_optimizer") else param_group)

    def _grad_norm(self) -> torch.Tensor:
        norms = []
        device = None
        for group in self.param_groups:
            for p in params_with_grad(group):
                assert p.grad is not None
                device = device or p.device
                g = p.grad.abs().mul_(p.abs()) if group["adaptive"] else p.grad
                norms.append(torch.linalg.vector_norm(g).to(device))
        if not norms:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack(norms))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, _norm: torch.Tensor | None = None) -> None:
        """Move every parameter with a gradient to ``w + e(w)`` and remember ``w``."""
        if self._perturbed:
            raise ConfigError("SAM.first_step was called twice without second_step/restore in between")
        norm = self._grad_norm() if _norm is None else _norm
        if bool(torch.isfinite(norm)):
            for group in self.param_groups:
                scale = group["rho"] / (norm + self.eps)
                for p in params_with_grad(group):
                    state = self.state[p]
                    old = state.get("old_p")
                    if old is None or old.shape != p.shape or old.dtype != p.dtype:
                        old = state["old_p"] = torch.empty_like(p)
                    old.copy_(p)
                    assert p.grad is not None
                    e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                    p.add_(e_w)
                    self._perturbed.append(p)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Move the perturbed parameters back to ``w`` (idempotent; ``second_step`` does it too)."""
        for p in self._perturbed:
            p.copy_(self.state[p]["old_p"])
        self._perturbed = []

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, **step_kwargs: Any) -> Any:
        """Go back to ``w`` and take the base optimizer's step with the current gradient (kwargs go to its step)."""
        self.restore()
        out = self.base_optimizer.step(**step_kwargs)
        if zero_grad:
            self.zero_grad()
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """With a closure: first step, closure (forward + backward at ``w + e``), second step. Without: second step.

        The first step needs the gradient at ``w``: if there is none (no parameter has a gradient, or all are zero),
        the closure is run at ``w`` first.
        Returns the closure's loss at ``w + e``. A base optimizer whose ``step`` takes the loss (MoMo) gets it.
        """
        if closure is None:
            return self.second_step()
        norm = self._grad_norm()
        if not bool(norm > 0):  # no gradient at w yet (zero_grad before step): compute it
            closure_loss(closure)
            norm = self._grad_norm()
        self.first_step(zero_grad=True, _norm=norm)  # the norm is not read twice
        loss = closure_loss(closure)
        if "loss" in inspect.signature(self.base_optimizer.step).parameters:
            self.second_step(loss=loss)
        else:
            self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its param groups carry ``rho`` and ``adaptive``)."""
        if self._perturbed:
            raise ConfigError("SAM.state_dict between first_step and second_step would save w + e(w); save after "
                              "second_step (or call restore() first)")
        return super().state_dict()
