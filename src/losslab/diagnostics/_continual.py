"""Regularisers and unit re-initialisation that keep a network trainable in continual learning."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics._common import check_float, check_int, check_model, make_generator

__all__ = ["ContinualBackprop", "SpectralRegularizer", "l2_init_penalty", "wasserstein_init_penalty"]


def _init_pairs(model: nn.Module, init: Any) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    check_model(model)
    if isinstance(init, nn.Module):
        init = dict(init.named_parameters())
    if not isinstance(init, Mapping):
        raise ConfigError("init must be a {name: tensor} mapping (e.g. a copy of model.state_dict() at start) or a model")
    out: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for n, p in model.named_parameters():
        if n not in init:
            raise DataError(f"init misses parameter {n!r}; save {{n: p.detach().clone()}} for every parameter at start")
        if tuple(init[n].shape) != tuple(p.shape):
            raise DataError(f"init[{n!r}] has shape {tuple(init[n].shape)}, the parameter {tuple(p.shape)}")
        out.append((n, p, init[n].detach().to(p)))
    return out


def l2_init_penalty(model: nn.Module, init: Any) -> torch.Tensor:
    r"""L2 regularisation towards the initial parameters, :math:`\sum_l \|\theta_l - \theta_l^{(0)}\|_2^2`.

    Args:
        model: the network being trained.
        init: ``{name: tensor}`` of the initial parameters (or a model holding them).

    Returns:
        A differentiable scalar; add ``lam * penalty`` to the loss.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(1, 1)
        >>> init = {n: p.detach() + 1.0 for n, p in lin.named_parameters()}
        >>> float(l2_init_penalty(lin, init))
        2.0

    References:
        Kumar, Marklund & Van Roy, "Maintaining Plasticity in Continual Learning via Regenerative Regularization",
        arXiv:2308.11958, 2023; Lewandowski et al., arXiv:2406.06811 (as a baseline).
    """
    pairs = _init_pairs(model, init)
    return sum(((p - p0) ** 2).sum() for _, p, p0 in pairs)  # type: ignore[return-value]


def wasserstein_init_penalty(model: nn.Module, init: Any) -> torch.Tensor:
    r"""Squared 1-D Wasserstein-2 distance between each layer's weights and its initial weights, summed.

    For a layer with :math:`n` entries, :math:`W_2^2 = \sum_i (\mathrm{sort}(\theta_l)_i -
    \mathrm{sort}(\theta_l^{(0)})_i)^2`: unlike L2-to-init it only asks that the *distribution* of values stays
    close to the initial one, so units may permute and move freely.

    Args:
        model, init: as in :func:`l2_init_penalty`.

    Returns:
        A differentiable scalar (sum over parameter tensors, no :math:`1/n`).

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad(): _ = lin.weight.copy_(torch.tensor([[2.0, 1.0]]))
        >>> float(wasserstein_init_penalty(lin, {"weight": torch.tensor([[1.0, 2.0]])}))  # a permutation: zero
        0.0

    References:
        Lewandowski, Kumar, Schuurmans, György & Machado, "Learning Continually by Spectral Regularization",
        arXiv:2406.06811 (v1 proposes this regulariser; the exact scaling could not be checked against the paper
        text, so none is applied).
    """
    pairs = _init_pairs(model, init)
    return sum(((torch.sort(p.reshape(-1)).values - torch.sort(p0.reshape(-1)).values) ** 2).sum()
               for _, p, p0 in pairs)  # type: ignore[return-value]


class SpectralRegularizer:
    r"""Spectral regularisation :math:`R = \sum_l (\sigma_{\max}(W_l)^k - 1)^2` keeping each layer's top singular
    value near one.

    Each weight (conv kernels reshaped to ``out x (in*kh*kw)``), with its bias appended as an extra column when
    ``include_bias``, gets a persistent pair of power-iteration vectors updated ``n_power_iterations`` times per
    call (as in Miyato et al.'s spectral norm); :math:`\sigma = u^\top W v` is differentiable in :math:`W`.
    ``exact=True`` uses :func:`torch.linalg.matrix_norm` (``ord=2``) instead.

    Args:
        model: the network; every ``nn.Linear`` and ``nn.Conv{1,2,3}d`` is regularised (or pass ``modules``).
        k: exponent :math:`k` (2 by default).
        include_bias: fold the bias in as a column.
        n_power_iterations: power steps per call (1 by default).
        exact: use the exact spectral norm (slower; for checking).
        modules: explicit list of modules with a ``weight``.
        seed: int or :class:`torch.Generator` for the initial vectors.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 3, bias=False)
        >>> with torch.no_grad(): _ = lin.weight.copy_(2 * torch.eye(3))
        >>> float(SpectralRegularizer(lin, exact=True)())   # (2^2 - 1)^2
        9.0

    References:
        Lewandowski, Kumar, Schuurmans, György & Machado, "Learning Continually by Spectral Regularization",
        arXiv:2406.06811, ICLR 2025 (abstract verified; k = 2, the bias folding and the single power step follow
        the description in our research notes and were not checked against code, none being published);
        Miyato et al., "Spectral Normalization for GANs", arXiv:1802.05957, 2018.
    """

    def __init__(self, model: nn.Module, *, k: int = 2, include_bias: bool = True, n_power_iterations: int = 1,
                 exact: bool = False, modules: Sequence[nn.Module] | None = None,
                 seed: int | torch.Generator = 0) -> None:
        check_model(model)
        self.k = check_int(k, "k", low=1)
        self.n_power_iterations = check_int(n_power_iterations, "n_power_iterations", low=1)
        self.include_bias, self.exact = bool(include_bias), bool(exact)
        mods = list(modules) if modules is not None else [
            m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        if not mods:
            raise ConfigError("no nn.Linear/nn.Conv layer to regularise; pass modules=[...] with a .weight each")
        gen = make_generator(seed)
        self.modules = mods
        self._u: list[torch.Tensor] = []
        for m in mods:
            w = self._matrix(m)
            u = torch.randn(w.shape[0], generator=gen, dtype=torch.float64).to(w.device, w.dtype)
            self._u.append(u / u.norm())

    def _matrix(self, m: nn.Module) -> torch.Tensor:
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor):
            raise ConfigError(f"module {type(m).__name__} has no weight tensor")
        w2 = w.reshape(w.shape[0], -1)
        b = getattr(m, "bias", None)
        if self.include_bias and isinstance(b, torch.Tensor):
            w2 = torch.cat([w2, b.reshape(-1, 1)], dim=1)
        return w2

    def sigmas(self) -> list[torch.Tensor]:
        """Current estimates of each layer's top singular value (differentiable); advances the power vectors."""
        out = []
        for i, m in enumerate(self.modules):
            W = self._matrix(m)
            if self.exact:
                out.append(torch.linalg.matrix_norm(W, ord=2))
                continue
            u = self._u[i]
            with torch.no_grad():
                Wd = W.detach()
                for _ in range(self.n_power_iterations):
                    v = Wd.T @ u
                    v = v / v.norm().clamp_min(1e-12)
                    u = Wd @ v
                    u = u / u.norm().clamp_min(1e-12)
                self._u[i] = u
            out.append(u @ W @ v)
        return out

    def __call__(self) -> torch.Tensor:
        """The penalty :math:`\\sum_l (\\sigma_l^k - 1)^2` (add ``lam * penalty`` to the loss)."""
        return sum((s ** self.k - 1) ** 2 for s in self.sigmas())  # type: ignore[return-value]


class ContinualBackprop:
    r"""Continual backprop: re-initialise a small fraction of low-utility mature hidden units every step.

    Follows the authors' ``GnT`` code (``lop/algos/gnt.py``), used for the paper's feed-forward results. For hidden
    layer :math:`l` (outputs of ``layers[l]``, activations :math:`h` seen as the input of ``layers[l+1]``), each
    :meth:`step`:

    1. ages += 1; :math:`\bar f \leftarrow \eta \bar f + (1-\eta)\,\mathrm{mean}_x h`;
       :math:`u \leftarrow \eta u + (1-\eta)\,\mathrm{mean}_k|w^{out}_{k i}|\cdot\mathrm{mean}_x|h_i|`
       (contribution utility; the *mean* over outgoing weights as in the code, where the paper writes a sum);
    2. eligible units have age :math:`> m`; the number to replace is :math:`\rho\cdot\#\mathrm{eligible}`, and when
       it is below one a single unit is replaced with that probability (``accumulate=False``, the code default)
       or the fraction is carried over (``accumulate=True``);
    3. the eligible units with the lowest bias-corrected utility :math:`\hat u = u/(1-\eta^{age})` are replaced:
       incoming weights :math:`\sim U(-b, b)`, :math:`b = \mathrm{gain}\sqrt{3/\mathrm{fan\_in}}`, incoming bias 0;
       outgoing weights 0; utility, mean and age reset to 0; Adam's ``exp_avg``, ``exp_avg_sq`` of those rows
       and columns are zeroed when an optimizer is given (``AdamGnT``'s per-element ``step`` has no counterpart
       in ``torch.optim.Adam``, whose step count is shared by the tensor and is left alone).

    Code versus paper: the paper's "mean substitution" adds :math:`w^{out}_{:, i}\,\bar f_i/(1-\eta^{age})` to
    the next layer's bias, but ``GnT.test_features`` zeroes :math:`\bar f_i` *before* ``gen_new_features``
    uses it, so in the authors' code the bias never changes. ``mean_substitution=False`` (default) follows the
    code; ``True`` applies the paper's correction. With ``replacement_rate=0`` the code returns before updating
    utilities or ages, and so does this class.

    Args:
        layers: consecutive ``nn.Linear`` layers; hidden units are the outputs of all but the last.
        replacement_rate: :math:`\rho` (1e-4). decay_rate: :math:`\eta` (0.99). maturity_threshold: :math:`m` (20).
        gain: init gain (``nn.init.calculate_gain("relu")`` by default).
        accumulate: carry fractional replacement counts.
        mean_substitution: add the replaced unit's mean contribution to the next layer's bias (paper) instead of
            leaving it unchanged (authors' code, the default).
        optimizer: optional Adam-like optimizer whose state of replaced units is reset.
        seed: int or :class:`torch.Generator`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> cbp = ContinualBackprop([net[0], net[2]], replacement_rate=0.5, maturity_threshold=0)
        >>> _ = net(torch.randn(8, 2, generator=torch.Generator().manual_seed(0))); cbp.step()
        [2]

    References:
        Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood & Sutton, "Loss of plasticity in deep continual
        learning", Nature 632, 2024, arXiv:2306.13812 (rule from the authors' ``GnT`` code; ``CBPLinear`` differs:
        no bias correction, decay 0, always accumulating).
    """

    def __init__(self, layers: Sequence[nn.Linear], *, replacement_rate: float = 1e-4, decay_rate: float = 0.99,
                 maturity_threshold: int = 20, gain: float | None = None, accumulate: bool = False,
                 mean_substitution: bool = False, optimizer: torch.optim.Optimizer | None = None, seed: int | torch.Generator = 0) -> None:
        self.layers = list(layers)
        if len(self.layers) < 2 or not all(isinstance(m, nn.Linear) for m in self.layers):
            raise ConfigError("layers must be at least two consecutive nn.Linear layers (hidden ... output)")
        for a, b in zip(self.layers[:-1], self.layers[1:]):
            if a.out_features != b.in_features:
                raise ConfigError(f"layer sizes do not chain: {a.out_features} outputs feed {b.in_features} inputs")
        self.rho = check_float(replacement_rate, "replacement_rate", low=0.0, high=1.0)
        self.eta = check_float(decay_rate, "decay_rate", low=0.0, high=1.0, high_open=True)
        self.maturity = check_int(maturity_threshold, "maturity_threshold", low=0)
        self.gain = math.sqrt(2.0) if gain is None else check_float(gain, "gain", low=0.0, low_open=True)
        self.accumulate, self.optimizer = bool(accumulate), optimizer
        self.mean_substitution = bool(mean_substitution)
        self._gen = make_generator(seed)
        hidden = [m.out_features for m in self.layers[:-1]]
        dev = self.layers[0].weight.device
        self.util = [torch.zeros(h, dtype=torch.float64, device=dev) for h in hidden]
        self.mean_act = [torch.zeros(h, dtype=torch.float64, device=dev) for h in hidden]
        self.ages = [torch.zeros(h, dtype=torch.long, device=dev) for h in hidden]
        self.pending = [0.0 for _ in hidden]
        self._acts: list[torch.Tensor | None] = [None for _ in hidden]
        self._handles = [nxt.register_forward_hook(self._make_hook(i)) for i, nxt in enumerate(self.layers[1:])]

    def _make_hook(self, i: int) -> Any:
        def hook(_m: nn.Module, inputs: Any, _out: Any) -> None:
            self._acts[i] = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
        return hook

    def remove(self) -> None:
        """Remove the forward hooks."""
        for h in self._handles:
            h.remove()

    @torch.no_grad()
    def step(self) -> list[int]:
        """Update utilities from the last forward pass and replace units; returns the count replaced per layer."""
        replaced = []
        if any(a is None for a in self._acts):
            raise DataError("no activations recorded: run a forward pass of the model before step()")
        if self.rho == 0:
            self._acts = [None for _ in self._acts]
            return [0 for _ in self.util]
        for i in range(len(self.util)):
            h = self._acts[i]
            assert h is not None
            h = h.to(torch.float64)
            w_out = self.layers[i + 1].weight.detach().to(torch.float64)
            self.ages[i] += 1
            self.mean_act[i].mul_(self.eta).add_((1 - self.eta) * h.mean(dim=0))
            self.util[i].mul_(self.eta).add_((1 - self.eta) * w_out.abs().mean(dim=0) * h.abs().mean(dim=0))
            eligible = torch.nonzero(self.ages[i] > self.maturity).reshape(-1)
            count = self.rho * eligible.numel()
            if self.accumulate:
                self.pending[i] += count
                n_new = int(self.pending[i])
                self.pending[i] -= n_new
            else:
                if 0 < count < 1 and float(torch.rand((), generator=self._gen, dtype=torch.float64)) <= count:
                    count = 1
                n_new = int(count)
            if n_new == 0:
                replaced.append(0)
                continue
            corr = 1 - self.eta ** self.ages[i][eligible].to(torch.float64)
            uhat = self.util[i][eligible] / corr
            idx = eligible[torch.topk(-uhat, n_new).indices]
            self._replace(i, idx)
            replaced.append(n_new)
        self._acts = [None for _ in self._acts]
        return replaced

    def _replace(self, i: int, idx: torch.Tensor) -> None:
        lin_in, lin_out = self.layers[i], self.layers[i + 1]
        age = self.ages[i][idx].to(torch.float64)
        mean = (self.mean_act[i][idx] / (1 - self.eta ** age)).to(lin_out.weight.dtype)
        if lin_out.bias is not None and self.mean_substitution:
            lin_out.bias.add_(lin_out.weight[:, idx] @ mean)
        bound = self.gain * math.sqrt(3.0 / lin_in.in_features)
        fresh = torch.rand((idx.numel(), lin_in.in_features), generator=self._gen, dtype=torch.float64)
        lin_in.weight[idx] = ((fresh * 2 - 1) * bound).to(lin_in.weight)
        if lin_in.bias is not None:
            lin_in.bias[idx] = 0.0
        lin_out.weight[:, idx] = 0.0
        self.util[i][idx] = 0.0
        self.mean_act[i][idx] = 0.0
        self.ages[i][idx] = 0
        if self.optimizer is not None:
            for p, sl in ((lin_in.weight, (idx,)), (lin_in.bias, (idx,)), (lin_out.weight, (slice(None), idx))):
                state = self.optimizer.state.get(p) if p is not None else None
                if state:
                    for key in ("exp_avg", "exp_avg_sq"):
                        if key in state:
                            state[key][sl] = 0.0

    def state_dict(self) -> dict[str, Any]:
        """Utilities, means, ages, pending fractions and the generator state."""
        return {"util": [u.clone() for u in self.util], "mean_act": [m.clone() for m in self.mean_act],
                "ages": [a.clone() for a in self.ages], "pending": list(self.pending),
                "generator": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.util = [u.clone() for u in state["util"]]
        self.mean_act = [m.clone() for m in state["mean_act"]]
        self.ages = [a.clone() for a in state["ages"]]
        self.pending = list(state["pending"])
        self._gen.set_state(state["generator"])
