r"""Adaptive batch-size tests of AdAdaGrad: grow the batch when the minibatch gradient is too noisy.

From the per-sample gradients :math:`g_1, \dots, g_b` of the current batch, with mean :math:`\bar g` and
unbiased variances (correction 1), each test returns the batch size it asks for; the next batch size is
:math:`b \leftarrow \min(b_{\max}, \lceil \max(b, \text{statistic}) \rceil)`, so it never decreases.

- norm test: :math:`\sum_j \mathrm{Var}_i(g_{ij}) / (\eta^2 \|\bar g\|^2)`
- inner-product test: :math:`\mathrm{Var}_i(\langle g_i, \bar g\rangle) / (\theta^2 \|\bar g\|^4)`
- orthogonality test: :math:`\sum_j \mathrm{Var}_i(o_{ij}) / (\nu^2 \|\bar g\|^2)` with
  :math:`o_i = g_i - \frac{\langle g_i, \bar g\rangle}{\|\bar g\|^2} \bar g`
- augmented inner-product test (``"ip+orth"``): the larger of the last two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from losslab._errors import ConfigError, DataError
from losslab._registry import did_you_mean
from losslab.stability._per_sample import per_sample_gradients

__all__ = ["AdaptiveBatchSize", "BatchSizeTest", "batch_size_test", "per_sample_gradients"]

TESTS = ("norm", "ip", "orth", "ip+orth")
Grads = Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor


def _check_test(test: object) -> str:
    if isinstance(test, str) and test in TESTS:
        return test
    hint = did_you_mean(str(test), TESTS, n=2, cutoff=0.4, sep=" or ")
    raise ConfigError(f"unknown batch-size test {test!r}; {hint}choose one of {', '.join(repr(t) for t in TESTS)}")


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}; the paper's default is 0.1 (a larger "
                          "value tolerates more gradient noise before the batch grows)")
    return float(value)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_group(group: Any) -> None:
    if group is not None and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ConfigError("group was given but torch.distributed is not initialised; call init_process_group first "
                          "or pass group=None")


def _flatten(per_sample_grads: Grads, distributed: bool) -> list[torch.Tensor]:
    """Each per-sample gradient as a ``(b, numel)`` view, after checking shapes and dtypes."""
    if isinstance(per_sample_grads, torch.Tensor):
        tensors = [per_sample_grads]
    elif isinstance(per_sample_grads, Mapping):
        tensors = list(per_sample_grads.values())
    elif isinstance(per_sample_grads, Sequence) and not isinstance(per_sample_grads, str):
        tensors = list(per_sample_grads)
    else:
        raise DataError(f"per_sample_grads must be a dict name -> tensor, a list of tensors or a tensor, got "
                        f"{type(per_sample_grads).__name__}")
    if not tensors:
        raise DataError("no per-sample gradients were given (empty dict or list); pass one (b, *param.shape) tensor "
                        "per parameter, e.g. from per_sample_gradients(model, loss_fn, x, y)")
    for t in tensors:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.ndim < 1:
            what = f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise DataError(f"each per-sample gradient must be a real floating tensor of shape (b, *param.shape), "
                            f"got a {what}")
    sizes = sorted({int(t.shape[0]) for t in tensors})
    if len(sizes) != 1:
        raise DataError(f"all per-sample gradients must hold the same samples (dim 0), got batch sizes {sizes}")
    if sizes[0] == 0 and not distributed:
        raise DataError("the batch is empty (0 samples); the tests need the gradients of at least 2 samples")
    return [t.detach().reshape(sizes[0], -1) for t in tensors]


def _all_reduce(t: torch.Tensor, group: Any) -> torch.Tensor:
    if group is not None:
        torch.distributed.all_reduce(t, group=group)
    return t


def _moments(flat: list[torch.Tensor], per_tensor: bool, group: Any) -> tuple[int, float, float, float, float]:
    """(n, ||g_bar||^2, Var norm, Var ip, Var orth) over all samples of all ranks of ``group``.

    The ranks first agree on the sample count and the mean gradient, then sum their squared deviations from that
    mean: the law of total variance with the ranks' sample counts as weights, so the result equals the variance
    of the whole batch on one process. With d_i = g_i - g_bar, the inner products minus their mean are
    <d_i, g_bar>, and the orthogonal parts o_i (whose mean is 0) have
    ||o_i||^2 = ||d_i||^2 - <d_i, g_bar>^2 / ||g_bar||^2 (Pythagoras). Half-precision gradients are read in
    float32 (their squares overflow float16), and the host waits for the device twice, not once per tensor.
    """
    device = flat[0].device
    work = [torch.promote_types(f.dtype, torch.float32) for f in flat]
    sums = [f.sum(dim=0, dtype=w) for f, w in zip(flat, work)]
    bad = torch.stack([~torch.isfinite(s).all() for s in sums]).any()  # NaN/Inf samples make their sum non-finite
    status = torch.stack([torch.tensor(flat[0].shape[0], device=device), bad.to(torch.int64)])
    n, n_bad = _all_reduce(status, group).tolist()
    if n_bad:
        where = " on at least one rank" if group is not None else ""
        raise DataError(f"the per-sample gradients hold NaN/Inf (or overflow when summed){where}; the loss or the "
                        "model diverged, fix that before testing the batch size (nothing was changed)")
    if n < 2:
        raise DataError(f"the sample variance needs at least 2 per-sample gradients, got {n}; use a batch of >= 2")
    if group is not None:
        buffer = _all_reduce(torch.cat([s.to(torch.float64) for s in sums]), group)
        sums = [part.to(s.dtype) for part, s in zip(buffer.split([s.numel() for s in sums]), sums)]
    means = [s / n for s in sums]
    tiny = torch.finfo(torch.float64).tiny  # a zero mean has zero inner products: 0 / tiny = no projection
    norms_sq = [m.double().square().sum() for m in means]
    zero = torch.zeros((), dtype=torch.float64, device=device)
    row_sq = torch.zeros(flat[0].shape[0], dtype=torch.float64, device=device)  # ||d_i||^2
    row_orth = torch.zeros_like(row_sq)  # ||o_i||^2, per-tensor form
    dots = torch.zeros_like(row_sq)  # <d_i, g_bar>
    ss_ip_per_tensor = zero
    for f, w, m, nsq in zip(flat, work, means, norms_sq):
        # products in the working dtype are taken on a copy scaled by a power of two near the largest entry
        # (exact), so gradients of 1e-25 (or 1e25) neither underflow (overflow) when squared; the scale comes
        # back in float64. A zero tensor has exponent 0: scale 1.
        scale = torch.ldexp(torch.ones((), dtype=torch.float64, device=device),
                            torch.frexp(f.abs().amax().to(torch.float64))[1])
        unit = scale.to(w)
        d = (f.to(w) - m) / unit
        rows = torch.linalg.vector_norm(d, dim=1).double().square() * scale.square()
        c = (d @ (m / unit)).double() * scale.square()
        row_sq += rows
        dots += c
        ss_ip_per_tensor = ss_ip_per_tensor + c.square().sum()
        row_orth += (rows - c.square() / nsq.clamp(min=tiny)).clamp_(min=0)
    grad_norm_sq = torch.stack(norms_sq).sum()
    if not per_tensor:
        row_orth = (row_sq - dots.square() / grad_norm_sq.clamp(min=tiny)).clamp_(min=0)
    ss_ip = ss_ip_per_tensor if per_tensor else dots.square().sum()
    ss = _all_reduce(torch.stack([row_sq.sum(), ss_ip, row_orth.sum()]), group)
    gsq, ss_norm, ss_ip_total, ss_orth = torch.cat([grad_norm_sq.reshape(1), ss]).tolist()
    return n, gsq, ss_norm / (n - 1), ss_ip_total / (n - 1), ss_orth / (n - 1)


@dataclass(frozen=True)
class BatchSizeTest:
    """Outcome of one adaptive batch-size test.

    Attributes:
        test: ``"norm"``, ``"ip"``, ``"orth"`` or ``"ip+orth"``.
        batch_size: the suggested next batch size, :math:`\\min(b_{\\max}, \\lceil\\max(n, \\text{statistic})\\rceil)`.
        statistic: the batch size the test asks for (``ip+orth``: the larger of both); ``inf`` when the mean
            gradient is zero but the samples differ.
        n_samples: number of per-sample gradients (all ranks together).
        grad_norm_sq: :math:`\\|\\bar g\\|^2`.
        var_norm: :math:`\\sum_j \\mathrm{Var}_i(g_{ij})`, the trace of the sample covariance.
        var_ip: :math:`\\mathrm{Var}_i\\langle g_i, \\bar g\\rangle` (per tensor and summed if ``per_tensor``).
        var_orth: :math:`\\sum_j \\mathrm{Var}_i(o_{ij})` of the parts orthogonal to :math:`\\bar g`.
        norm_statistic: ``var_norm / (eta**2 * grad_norm_sq)``.
        ip_statistic: ``var_ip / (theta**2 * grad_norm_sq**2)``.
        orth_statistic: ``var_orth / (nu**2 * grad_norm_sq)``.
        per_tensor: whether inner products and projections were taken per parameter tensor.
    """

    test: str
    batch_size: int
    statistic: float
    n_samples: int
    grad_norm_sq: float
    var_norm: float
    var_ip: float
    var_orth: float
    norm_statistic: float
    ip_statistic: float
    orth_statistic: float
    per_tensor: bool

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (for logs and checkpoints)."""
        return asdict(self)


def batch_size_test(per_sample_grads: Grads, test: str = "norm", *, eta: float = 0.1, theta: float = 0.1,
                    nu: float = 0.1, per_tensor: bool = True, max_batch_size: int = 50_000,
                    group: Any = None) -> BatchSizeTest:
    r"""Run an AdAdaGrad batch-size test on the per-sample gradients of one batch.

    With :math:`\bar g = \frac1n\sum_i g_i` and unbiased variances over the :math:`n` samples:

    .. math::
        T_{\text{norm}} = \frac{\sum_j \mathrm{Var}_i(g_{ij})}{\eta^2 \|\bar g\|^2}, \quad
        T_{\text{ip}} = \frac{\mathrm{Var}_i \langle g_i, \bar g\rangle}{\theta^2 \|\bar g\|^4}, \quad
        T_{\text{orth}} = \frac{\sum_j \mathrm{Var}_i(o_{ij})}{\nu^2 \|\bar g\|^2}, \quad
        o_i = g_i - \frac{\langle g_i, \bar g\rangle}{\|\bar g\|^2}\bar g,

    ``"ip+orth"`` uses :math:`\max(T_{\text{ip}}, T_{\text{orth}})`, and the suggested batch size is
    :math:`\min(b_{\max}, \lceil \max(n, T) \rceil)`.

    Args:
        per_sample_grads: ``{name: (n, *shape)}`` (e.g. from :func:`per_sample_gradients`), a list of such
            tensors, or one tensor ``(n, *shape)``.
        test: ``"norm"`` (η), ``"ip"`` (θ), ``"orth"`` (ν) or ``"ip+orth"`` (θ and ν).
        eta, theta, nu: tolerances, each > 0 (paper and code default 0.1; their scripts also use 0.25 and 0.5).
        per_tensor: ``True`` (default, as the authors' code): the inner products :math:`\langle g_i^p, \bar g^p\rangle`
            and projections are taken per parameter tensor :math:`p` and their variances summed, which drops the
            covariances between tensors; ``False``: the exact global inner product and projection of the paper.
            The norm test is the same either way.
        max_batch_size: cap on the suggested batch size (code default 50 000).
        group: a ``torch.distributed`` process group (e.g. ``torch.distributed.group.WORLD``) whose ranks each
            hold a part of the batch; every rank gets the statistics of the whole batch. ``None``: this process only.

    Returns:
        A :class:`BatchSizeTest` with the suggested batch size and every statistic.

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, -1.0]])  # 4 samples, mean (2, 0)
        >>> r = batch_size_test(g, "norm")
        >>> r.var_norm, r.batch_size  # (2/3 + 2/3) / (0.1**2 * 4) = 33.3
        (1.3333333333333333, 34)
        >>> batch_size_test(g, "ip+orth").batch_size, batch_size_test(g, "norm", eta=0.5).batch_size
        (17, 4)

    References:
        Lau, Liu, Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", arXiv:2402.11215,
        2024 (tests from Byrd et al., 2012, and Bollapragada et al., "Adaptive Sampling Strategies for Stochastic
        Optimization", arXiv:1710.11258, 2018).

    Notes:
        Differences from the authors' code: a parameter tensor whose mean gradient is zero gets no projection in
        the per-tensor orthogonality test (the code divides 0 by 0); a zero mean gradient with noisy samples asks
        for ``max_batch_size`` (the code fails on ``ceil(inf)``). Across ranks the code adds the mean of the
        ranks' unbiased variances to the variance of their means, which is only close to the variance of the
        whole batch; here the ranks pool their squared deviations, which is exact and allows unequal shares.
    """
    test = _check_test(test)
    eta, theta, nu = _check_positive("eta", eta), _check_positive("theta", theta), _check_positive("nu", nu)
    max_batch_size = _check_int("max_batch_size", max_batch_size, 1)
    if not isinstance(per_tensor, bool):
        raise ConfigError(f"per_tensor must be True or False, got {per_tensor!r}")
    _check_group(group)
    n, gsq, var_norm, var_ip, var_orth = _moments(_flatten(per_sample_grads, group is not None), per_tensor, group)
    if gsq > 0:
        t_norm, t_ip, t_orth = var_norm / (eta**2 * gsq), var_ip / (theta**2 * gsq**2), var_orth / (nu**2 * gsq)
    else:  # the limits as g_bar -> 0: each test asks for an infinite batch unless the samples agree
        t_norm = t_ip = t_orth = math.inf if var_norm > 0 else 0.0
    statistic = {"norm": t_norm, "ip": t_ip, "orth": t_orth, "ip+orth": max(t_ip, t_orth)}[test]
    wanted = max_batch_size if math.isinf(statistic) else max(n, math.ceil(statistic))
    return BatchSizeTest(test, min(max_batch_size, wanted), statistic, n, gsq, var_norm, var_ip, var_orth, t_norm,
                         t_ip, t_orth, per_tensor)


class AdaptiveBatchSize:
    r"""Batch-size controller of AdAdaGrad: test every ``test_interval`` steps, grow, never shrink.

    At a test step, :meth:`step` runs :func:`batch_size_test` on the per-sample gradients of the batch just used
    and sets :math:`b \leftarrow \max(b, \min(b_{\max}, \lceil T\rceil))`. Testing stops once ``max_batch_size``
    is reached (:attr:`should_test` is then ``False``), so the per-sample gradients need not be computed. AdAdaGrad
    is this controller with ``torch.optim.Adagrad``.

    Args:
        batch_size: initial (global) batch size, >= 2 (the tests need a sample variance).
        test: ``"norm"``, ``"ip"``, ``"orth"`` or ``"ip+orth"`` (see :func:`batch_size_test`).
        eta, theta, nu: test tolerances (default 0.1 each).
        test_interval: test at steps 0, k, 2k, ... (default 1: every step).
        max_batch_size: the batch never grows beyond this (default 50 000).
        per_tensor: per-tensor inner products as the authors' code (default) or the exact global form.
        group: ``torch.distributed`` group whose ranks share the batch (see :func:`batch_size_test`).

    Example:
        >>> ctrl = AdaptiveBatchSize(4, test="norm", eta=0.1)
        >>> g = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, -1.0]])
        >>> ctrl.should_test, ctrl.step({"w": g}), ctrl.step({"w": 10 + 0 * g})  # noisy, then noiseless
        (True, 34, 34)
        >>> ctrl.state_dict()["batch_size"], ctrl.steps
        (34, 2)

    References:
        Lau, Liu, Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", arXiv:2402.11215,
        2024.

    Notes:
        The current batch size, not the number of per-sample gradients passed, is the floor of the new one, so a
        test on a subsample never shrinks the batch. Per-sample gradients passed on a step where no test is due
        are ignored; check :attr:`should_test` first to avoid computing them.
    """

    def __init__(self, batch_size: int, *, test: str = "norm", eta: float = 0.1, theta: float = 0.1, nu: float = 0.1,
                 test_interval: int = 1, max_batch_size: int = 50_000, per_tensor: bool = True,
                 group: Any = None) -> None:
        self.test = _check_test(test)
        self.eta, self.theta, self.nu = (_check_positive(k, v) for k, v in (("eta", eta), ("theta", theta), ("nu", nu)))
        self.test_interval = _check_int("test_interval", test_interval, 1)
        self.max_batch_size = _check_int("max_batch_size", max_batch_size, 2)
        self.batch_size = _check_int("batch_size", batch_size, 2)
        if batch_size > max_batch_size:
            raise ConfigError(f"batch_size ({batch_size}) exceeds max_batch_size ({max_batch_size})")
        if not isinstance(per_tensor, bool):
            raise ConfigError(f"per_tensor must be True or False, got {per_tensor!r}")
        _check_group(group)
        self.per_tensor, self.group = per_tensor, group
        self.steps = 0
        self.last: BatchSizeTest | None = None

    @property
    def should_test(self) -> bool:
        """Whether the next :meth:`step` runs a test (and so needs the per-sample gradients)."""
        return self.steps % self.test_interval == 0 and self.batch_size < self.max_batch_size

    def step(self, per_sample_grads: Grads | None = None) -> int:
        """Count one training step, test if one is due, and return the batch size for the next step."""
        if self.should_test:
            if per_sample_grads is None:
                raise DataError(f"a batch-size test is due at step {self.steps} (test_interval={self.test_interval})"
                                "; pass the per-sample gradients of this step's batch (check should_test first)")
            result = batch_size_test(per_sample_grads, self.test, eta=self.eta, theta=self.theta, nu=self.nu,
                                     per_tensor=self.per_tensor, max_batch_size=self.max_batch_size, group=self.group)
            asked = self.max_batch_size if math.isinf(result.statistic) else math.ceil(result.statistic)
            self.batch_size = max(self.batch_size, min(self.max_batch_size, asked))
            self.last = result
        self.steps += 1
        return self.batch_size

    def state_dict(self) -> dict[str, Any]:
        """The batch size, the step count and the last test (a plain dict)."""
        return {"batch_size": self.batch_size, "steps": self.steps,
                "last": None if self.last is None else self.last.to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the settings (test, tolerances, cap) come from the constructor."""
        missing = {"batch_size", "steps", "last"} - set(state)
        if missing:
            raise DataError(f"state is missing {sorted(missing)}; pass what AdaptiveBatchSize.state_dict() returned")
        b, steps, last = state["batch_size"], state["steps"], state["last"]
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= self.max_batch_size:
            raise DataError(f"state batch_size must be an integer in [2, max_batch_size={self.max_batch_size}], "
                            f"got {b!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise DataError(f"state steps must be an integer >= 0, got {steps!r}")
        try:
            restored = None if last is None else BatchSizeTest(**last)
        except TypeError as exc:
            raise DataError(f"state 'last' is not a BatchSizeTest record: {exc}") from None
        self.batch_size, self.steps, self.last = b, steps, restored
