"""K-FAC: a Kronecker-factored natural-gradient preconditioner for the gradients of Linear and Conv2d layers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from losslab._distributed import is_dtensor, unwrap_parallel
from losslab._errors import ConfigError, DataError
from losslab.optim._atoms import check_bool, check_int, check_number
from losslab.optim._kfac_layers import (
    all_reduce_means,
    running_average,
    select_layers,
)

__all__ = ["KFAC", "eigen_factors", "precondition"]

_FORMS = ("eigen", "factored", "factored_pi")
_INITS = ("identity", "first")
_HYPER = ("lr", "damping", "factor_decay", "kl_clip", "factor_update_steps", "inv_update_steps", "damping_form",
          "factor_init", "batch_averaged")
Eigen = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def eigen_factors(A: torch.Tensor, G: torch.Tensor, dtype: torch.dtype) -> Eigen:
    """``(Q_A, λ_A, Q_G, λ_G)``: eigendecompositions of the factors in ``dtype``, eigenvalues clamped at 0."""
    da, qa = torch.linalg.eigh(A.to(dtype))
    dg, qg = torch.linalg.eigh(G.to(dtype))
    return qa, da.clamp(min=0.0), qg, dg.clamp(min=0.0)


def precondition(v: torch.Tensor, eigen: Eigen, damping: float, form: str = "eigen") -> torch.Tensor:
    r"""The damped K-FAC direction for a gradient matrix ``v`` (out × in [+1]), in the eigenbases of ``A`` and ``G``.

    ``Q_G [(Q_Gᵀ V Q_A) / D] Q_Aᵀ`` with ``D`` by ``form``: ``"eigen"`` :math:`λ_G λ_Aᵀ + γ` (exactly
    :math:`(A ⊗ G + γI)^{-1}`), ``"factored"`` :math:`(λ_G + \sqrt γ)(λ_A + \sqrt γ)ᵀ` (exactly
    :math:`(G + \sqrt γ I)^{-1} V (A + \sqrt γ I)^{-1}`), ``"factored_pi"`` :math:`(λ_G + \sqrt γ/π)(λ_A +
    π\sqrt γ)ᵀ` with :math:`π = \sqrt{(\operatorname{tr} A/\dim A)/(\operatorname{tr} G/\dim G)}`.
    """
    qa, da, qg, dg = eigen
    if form == "eigen":
        denom = torch.outer(dg, da) + damping
    else:
        pi = torch.ones((), dtype=da.dtype, device=da.device)
        if form == "factored_pi":  # on the device: no host sync
            mean_a, mean_g = da.mean(), dg.mean()
            pi = torch.where((mean_a > 0) & (mean_g > 0), torch.sqrt(mean_a / mean_g), pi)
        root = math.sqrt(damping)
        denom = torch.outer(dg + root / pi, da + root * pi)
    w = v.to(qa.dtype)
    return qg @ ((qg.t() @ w @ qa) / denom) @ qa.t()


class KFAC:
    r"""K-FAC preconditioner: rewrites the ``.grad`` of Linear/Conv2d layers into the damped natural gradient.

    Per layer with weight :math:`W` (out × in, the bias as a last column) and gradient :math:`V`:

    .. math::

        A = E[\bar a \bar a^\top],\quad G = E[\hat g \hat g^\top],\quad
        V \leftarrow \nu\, Q_G \Big[\frac{Q_G^\top V Q_A}{\lambda_G \lambda_A^\top + \gamma}\Big] Q_A^\top
        = \nu\,(A \otimes G + \gamma I)^{-1} V,\qquad
        \nu = \min\Big(1, \sqrt{\frac{\kappa}{\eta^2 \sum_{\rm layers} \langle V, V_{\rm precond}\rangle}}\Big)

    :math:`\bar a` the layer input with a 1 appended when it has a bias (patches for a convolution), :math:`\hat g`
    the gradient w.r.t. the layer output times the batch size (the gradient of each example's own loss when the
    loss is a batch mean; ``batch_averaged=False`` for a summed loss). ``A`` and ``G`` are running averages
    ``F ← decay·F + (1-decay)·F_batch`` (started from the identity, as kfac-pytorch), updated on every
    ``factor_update_steps``-th step; their eigendecompositions are refreshed every ``inv_update_steps``-th step.
    Any torch optimizer then steps with the preconditioned gradients::

        loss.backward(); kfac.step(); optimizer.step()

    Args:
        model: the network (a ``DistributedDataParallel`` wrapper is looked through). Every ``nn.Linear`` and
            ``nn.Conv2d`` (``groups=1``, zero padding) whose parameters all require grad is preconditioned; other
            parameters keep their gradients.
        lr: the learning rate :math:`\eta` of the KL clipping, or a callable ``step -> lr`` (e.g.
            ``lambda _: optimizer.param_groups[0]["lr"]`` to follow a scheduler). Default 0.1 (kfac-pytorch).
        damping: :math:`\gamma > 0` (default 1e-3, kfac-pytorch).
        factor_decay: running-average coefficient in [0, 1) (default 0.95).
        kl_clip: :math:`\kappa > 0`, or ``None`` for no clipping (default 1e-3).
        factor_update_steps: collect the factors on steps ``0, k, 2k, ...`` (default 1).
        inv_update_steps: recompute the eigendecompositions on steps ``0, m, 2m, ...`` (default 1).
        damping_form: ``"eigen"`` (above, kfac-pytorch), ``"factored"`` :math:`(G+\sqrt\gamma I)^{-1} V
            (A+\sqrt\gamma I)^{-1}` or ``"factored_pi"`` (Martens & Grosse's factored Tikhonov; see :func:`precondition`).
        factor_init: ``"identity"`` (kfac-pytorch) or ``"first"``: decay :math:`\min(1-1/k, \text{decay})` at the
            k-th update (Martens & Grosse), so the first update takes the batch's factors as they are.
        batch_averaged: the loss is a mean over the leading (example) dimension (default True).
        inv_dtype: dtype of the eigendecompositions (``None``: float32, float64 for float64 layers).
        skip_layers: layers left alone: regular expressions searched in the module name and its class name
            (kfac-pytorch), and/or module classes.
        grad_scaler: a ``torch.amp.GradScaler`` (or a callable returning the loss scale): the output gradients are
            divided by it for ``G``. Unscale ``.grad`` (``scaler.unscale_(optimizer)``) before :meth:`step`.
        process_group: group over which the factors are averaged when ``torch.distributed`` is initialised
            (default: the default group).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> kfac = KFAC(model, lr=0.1, damping=0.01)
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> torch.nn.functional.mse_loss(model(x), y).backward()
        >>> kfac.step(); opt.step()
        >>> kfac.layers, kfac.steps
        (['0', '2'], 1)

    References:
        James Martens, Roger Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
        arXiv:1503.05671, 2015. Roger Grosse, James Martens, "A Kronecker-factored approximate Fisher matrix for
        convolution layers", arXiv:1602.01407, 2016. Jimmy Ba, Roger Grosse, James Martens, "Distributed
        Second-Order Optimization using Kronecker-Factored Approximations", ICLR 2017 (KL clipping). J. Gregory
        Pauloski et al., "Convolutional Neural Network Training with Distributed K-FAC", arXiv:2007.00784, 2020;
        code gpauloski/kfac-pytorch (``KFACPreconditioner``, eigen method), followed here.

    Notes:
        Differences from kfac-pytorch 0.4+: its ``G`` is the covariance of the output gradients *without* the batch
        size (ours / B²), and its convolution factors divide patches and gradients by the number of positions;
        ours are the factors of the papers (for a convolution ``A ⊗ G`` is Grosse & Martens' ``|T| Ω ⊗ Γ``). The
        constants change only the meaning of ``damping`` and the step before clipping. Its inverse method adds
        ``damping`` to each factor: ``damping_form="factored"`` with ``damping`` squared. Every rank decomposes
        every factor (no KAISA work split). A decomposition is in ``inv_dtype`` (kfac-pytorch decomposes in float32
        whatever its ``inv_dtype``). Layers whose ``forward`` is not called (``nn.MultiheadAttention.out_proj``)
        or that have no factors yet keep their gradients. The factors come from the loss that is backpropagated:
        the empirical Fisher with the data's labels, as kfac-pytorch. With ``batch_averaged=False``, SGD + this
        class followed kfac-pytorch's own code (commit 869cf11) on an MLP to float32 rounding over 30 steps.
    """

    def __init__(self, model: nn.Module, *, lr: float | Callable[[int], float] = 0.1, damping: float = 1e-3,
                 factor_decay: float = 0.95, kl_clip: float | None = 1e-3, factor_update_steps: int = 1,
                 inv_update_steps: int = 1, damping_form: str = "eigen", factor_init: str = "identity",
                 batch_averaged: bool = True, inv_dtype: torch.dtype | None = None,
                 skip_layers: Iterable[str | type[nn.Module]] = (), grad_scaler: Any = None,
                 process_group: Any = None) -> None:
        owner = "KFAC"
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}")
        self.lr, self.damping, self.factor_decay, self.kl_clip = lr, damping, factor_decay, kl_clip
        self.factor_update_steps, self.inv_update_steps = factor_update_steps, inv_update_steps
        self.damping_form, self.factor_init, self.batch_averaged = damping_form, factor_init, batch_averaged
        self._check_hyperparameters()
        if inv_dtype not in (None, torch.float32, torch.float64):
            raise ConfigError(f"{owner}: inv_dtype={inv_dtype!r} is invalid: use torch.float32, torch.float64 or None")
        self.inv_dtype = inv_dtype
        if grad_scaler is not None and not callable(grad_scaler) and not callable(getattr(grad_scaler, "get_scale",
                                                                                          None)):
            raise ConfigError(f"{owner}: grad_scaler must be a torch.amp.GradScaler or a callable returning the loss "
                              f"scale, got {type(grad_scaler).__name__}")
        self._grad_scaler = grad_scaler
        self.process_group = process_group
        model = unwrap_parallel(model)
        self._layers, self.skipped = select_layers(model, skip_layers)
        self._steps = 0
        self._handles = [s.module.register_forward_hook(s.hooks(self._collecting, self._output_scale))
                         for s in self._layers.values()]

    # ---------------------------------------------------------------------------------------------- set-up
    def _check_hyperparameters(self) -> None:
        owner = "KFAC"
        check_number(owner, "damping", self.damping, low=0.0, low_open=True, hint="kfac-pytorch uses 1e-3")
        check_number(owner, "factor_decay", self.factor_decay, low=0.0, high=1.0, high_open=True,
                     hint="kfac-pytorch uses 0.95")
        if self.kl_clip is not None:
            check_number(owner, "kl_clip", self.kl_clip, low=0.0, low_open=True,
                         hint="kfac-pytorch uses 1e-3; pass None for no clipping")
        if not callable(self.lr):
            check_number(owner, "lr", self.lr, low=0.0, hint="pass the optimizer's learning rate or a callable")
        for key in ("factor_update_steps", "inv_update_steps"):
            check_int(owner, key, getattr(self, key), low=1, hint="a number of steps")
        for key, choices in (("damping_form", _FORMS), ("factor_init", _INITS)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"{owner}: {key}={getattr(self, key)!r} is invalid: it must be one of "
                                  f"{', '.join(map(repr, choices))}")
        check_bool(owner, "batch_averaged", self.batch_averaged)

    def _collecting(self, module: nn.Module) -> bool:
        return module.training and torch.is_grad_enabled() and self._steps % self.factor_update_steps == 0

    def _output_scale(self, examples: int) -> float:
        """The factor applied to the output gradients for ``G``: the batch size, divided by the AMP loss scale."""
        scale = float(examples) if self.batch_averaged else 1.0
        s = self._grad_scaler
        if s is not None:
            scale /= float(s.get_scale() if hasattr(s, "get_scale") else s())
        return scale

    # ---------------------------------------------------------------------------------------------- public
    @property
    def steps(self) -> int:
        """Number of completed :meth:`step` calls."""
        return self._steps

    @property
    def layers(self) -> list[str]:
        """Names of the preconditioned layers (in the model's order)."""
        return list(self._layers)

    def factors(self) -> dict[str, dict[str, torch.Tensor | None]]:
        """Per layer, the running factors ``{"A": ..., "G": ...}`` (``None`` before the first update)."""
        return {n: {"A": s.A, "G": s.G} for n, s in self._layers.items()}

    def remove(self) -> None:
        """Remove the hooks from the model (idempotent); :meth:`step` then refuses to run."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for s in self._layers.values():
            s.reset_batch()

    def __enter__(self) -> KFAC:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @torch.no_grad()
    def step(self) -> None:
        """Update the factors (on factor steps), the eigenbases (on inverse steps) and precondition every ``.grad``.

        Call after ``loss.backward()`` (after DDP has averaged the gradients) and before ``optimizer.step()``.

        Raises:
            DataError: the factors of this batch or the preconditioned gradients hold NaN/Inf, or a decomposition
                failed. Nothing is changed (gradients, factors, step count); the batch's statistics are dropped.
        """
        if not self._handles:
            raise ConfigError("KFAC: step() after remove(): the hooks are gone; build a new KFAC for this model")
        self._check_hyperparameters()
        try:
            self._step()
        finally:
            for s in self._layers.values():
                s.reset_batch()

    def _step(self) -> None:
        for s in self._layers.values():
            if is_dtensor(s.weight):
                raise ConfigError(f"KFAC: layer {s.name!r} now has DTensor parameters (FSDP2 was applied after "
                                  "KFAC was built); the factors need whole layers: use DDP instead")
        factors = {n: (s.A, s.G) for n, s in self._layers.items()}
        folded = self._updated_factors() if self._steps % self.factor_update_steps == 0 else {}
        factors.update(folded)
        refresh = self._steps % self.inv_update_steps == 0
        eigens: dict[str, Eigen] = {}
        for name, s in self._layers.items():
            A, G = factors[name]
            if A is None or G is None:
                continue
            if refresh or s.eigen is None:
                dtype = self.inv_dtype or s.factor_dtype
                try:
                    eigens[name] = eigen_factors(A, G, dtype)
                except RuntimeError as exc:  # torch.linalg.LinAlgError
                    raise DataError(f"KFAC: the eigendecomposition of layer {name!r}'s factors failed ({exc}); "
                                    "nothing was changed; use inv_dtype=torch.float64 or a larger damping") from exc
            else:
                eigens[name] = s.eigen
        new_grads, dot = {}, None
        for name, eig in eigens.items():
            v = self._layers[name].grad_matrix()
            if v is None:
                continue
            p = precondition(v, eig, float(self.damping), self.damping_form)
            term = (p * v.to(p.dtype)).sum(dtype=torch.float64)
            dot = term if dot is None else dot + term.to(dot.device)
            new_grads[name] = p
        total = 0.0 if dot is None else float(dot)  # host sync: finiteness and the KL clipping
        if not math.isfinite(total):
            raise DataError("KFAC: the preconditioned gradients hold NaN/Inf (non-finite gradients?); nothing was "
                            "changed: skip this step (zero the gradients) or lower the learning rate")
        nu = self._kl_scale(total)
        for name, s in self._layers.items():  # commit
            s.A, s.G = factors[name]
            if name in eigens:
                s.eigen = eigens[name]
            if name in new_grads:
                g = new_grads[name]
                s.write_grad(g * nu if nu != 1.0 else g)
        for name in folded:
            self._layers[name].updates += 1
        self._steps += 1

    def _kl_scale(self, total: float) -> float:
        if self.kl_clip is None:
            return 1.0
        lr = self.lr(self._steps) if callable(self.lr) else self.lr
        lr = check_number("KFAC", "lr (returned by the callable)", lr, low=0.0)
        vg = abs(total) * lr ** 2
        return 1.0 if vg == 0.0 else min(1.0, math.sqrt(float(self.kl_clip) / vg))

    def _updated_factors(self) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
        """This step's batch factors (averaged over the ranks), folded into new running averages (not committed)."""
        means = {n: s.batch_means() for n, s in self._layers.items()}
        means = all_reduce_means(self._layers, means, self.process_group)
        present = [(n, t) for n, pair in means.items() for t in pair if t is not None]
        finite = [torch.isfinite(t).all().to(present[0][1].device) for _, t in present]
        if finite and not bool(torch.stack(finite).all()):  # one host sync
            bad = [n for (n, _), ok in zip(present, finite) if not bool(ok)]
            raise DataError(f"KFAC: the Kronecker factors of layer(s) {', '.join(sorted(set(bad)))} hold NaN/Inf "
                            "(non-finite activations or gradients); nothing was changed and the batch's statistics "
                            "were dropped: skip this step")
        out: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        for name, (a, g) in means.items():
            s = self._layers[name]
            if a is None or g is None:
                continue
            k = s.updates + 1
            decay = float(self.factor_decay)
            if self.factor_init == "first":
                decay = min(1.0 - 1.0 / k, decay)
            out[name] = (running_average(s.A, a, decay), running_average(s.G, g, decay))
        return out

    # ---------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Step count, hyperparameters, and per layer the factors, update count and eigenbases (for an exact resume)."""
        layers = {}
        for name, s in self._layers.items():
            entry: dict[str, Any] = {"A": s.A, "G": s.G, "updates": s.updates}
            if s.eigen is not None:
                entry.update(zip(("QA", "dA", "QG", "dG"), s.eigen))
            layers[name] = entry
        hyper = {k: getattr(self, k) for k in _HYPER if not (k == "lr" and callable(self.lr))}
        return {"steps": self._steps, "hyperparameters": hyper, "layers": layers}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (tensors are moved to each layer's device); validated before any change."""
        if not isinstance(state, Mapping) or not {"steps", "hyperparameters", "layers"} <= set(state):
            raise DataError("KFAC.load_state_dict: expected the dict returned by KFAC.state_dict() (keys 'steps', "
                            "'hyperparameters', 'layers')")
        layers = state["layers"]
        if set(layers) != set(self._layers):
            raise DataError(f"KFAC.load_state_dict: the checkpoint's layers {sorted(layers)} differ from this "
                            f"model's {sorted(self._layers)}")
        for name, entry in layers.items():
            s = self._layers[name]
            if not isinstance(entry, Mapping) or not {"A", "G"} <= set(entry):
                raise DataError(f"KFAC.load_state_dict: layer {name!r} must map 'A' and 'G' to its factors")
            for key, dim in (("A", s.a_dim), ("G", s.g_dim), ("QA", s.a_dim), ("QG", s.g_dim)):
                t = entry.get(key)
                if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (dim, dim)):
                    raise DataError(f"KFAC.load_state_dict: layer {name!r} {key} must be a ({dim}, {dim}) tensor, "
                                    f"got {getattr(t, 'shape', type(t).__name__)}")
        check_int("KFAC.load_state_dict", "steps", state["steps"], low=0)
        hyper = {k: v for k, v in dict(state["hyperparameters"]).items() if k in _HYPER
                 and not (k == "lr" and callable(self.lr))}  # a callable rate given to this object is kept
        old = {k: getattr(self, k) for k in hyper}
        for key, value in hyper.items():
            setattr(self, key, value)
        try:
            self._check_hyperparameters()
        except ConfigError:
            for key, value in old.items():
                setattr(self, key, value)
            raise
        self._steps = int(state["steps"])
        for name, entry in layers.items():
            s = self._layers[name]
            device = s.weight.device
            s.A = None if entry["A"] is None else entry["A"].to(device)
            s.G = None if entry["G"] is None else entry["G"].to(device)
            s.updates = int(entry.get("updates", 0))
            s.eigen = tuple(entry[k].to(device) for k in ("QA", "dA", "QG", "dG")) if "QA" in entry else None  # type: ignore[assignment]
            s.reset_batch()
