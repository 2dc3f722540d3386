r"""Hyperparameter transfer: AdamW param groups across width, learning rates across batch size, top singular values.

Tune ``lr`` and ``weight_decay`` on a small proxy model, then:

- :func:`width_scaled_param_groups` gives the AdamW param groups of a model ``d`` times wider (Fan et al. 2025, or
  μP with a constant weight decay, or no change);
- :func:`batch_scaled_lr` moves a learning rate tuned at one batch size to another (square root for Adam-type
  optimizers, linear for SGD; Granziol, Zohren, Roberts 2022);
- :func:`top_singular_values` is the diagnostic of Fan et al.: the largest singular value of every weight matrix,
  which their rule keeps roughly the same across widths.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch

from losslab._errors import ConfigError, DataError
from losslab._registry import did_you_mean
from losslab.optim._atoms import check_int, check_number

__all__ = ["batch_scaled_lr", "top_singular_values", "width_scaled_param_groups"]

WIDTH_RULES = ("robust", "mup", "standard")
BATCH_RULES = ("sqrt", "linear")
EMBEDDING_CHOICES = ("vector", "matrix")
NamedParams = torch.nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def _choice(owner: str, what: str, value: object, choices: tuple[str, ...], hint: str = "") -> str:
    if isinstance(value, str) and value in choices:
        return value
    guess = did_you_mean(str(value).lower(), choices, n=2, cutoff=0.4, sep=" or ")
    raise ConfigError(f"{owner}: unknown {what} {value!r}; {guess}choose one of "
                      f"{', '.join(repr(c) for c in choices)}{'; ' + hint if hint else ''}")


def _named_params(owner: str, source: Any) -> tuple[list[tuple[str, torch.Tensor]], set[int]]:
    """``(name, tensor)`` pairs without repeats (a tied weight keeps its first name), ids of embedding weights."""
    embedding_ids: set[int] = set()
    if isinstance(source, torch.nn.Module):
        items = list(source.named_parameters())
        for m in source.modules():
            if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
                embedding_ids.add(id(m.weight))
    elif isinstance(source, Mapping):
        items = list(source.items())
    elif isinstance(source, Iterable) and not isinstance(source, (str, bytes, torch.Tensor)):
        items = list(source)
    else:
        raise ConfigError(f"{owner}: expected an nn.Module, a dict name -> parameter or (name, parameter) pairs "
                          f"(e.g. model.named_parameters()), got {type(source).__name__}")
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], torch.Tensor)):
            raise ConfigError(f"{owner}: each entry must be a (name, tensor) pair as model.named_parameters() gives, "
                              f"got {type(item).__name__}; pass the model itself or model.named_parameters()")
        if id(item[1]) not in seen:
            seen.add(id(item[1]))
            out.append(item)
    if not out:
        raise DataError(f"{owner}: the model has no parameters, so there is nothing to build groups for or measure; "
                        "pass the model after its layers are created")
    return out, embedding_ids


def _name_selector(owner: str, arg: str, value: Any, names: list[str]) -> Callable[[str, torch.Tensor], bool]:
    """A predicate from None, a callable ``(name, param) -> bool`` or a collection of parameter names."""
    if value is None:
        return lambda name, p: False
    if callable(value):
        return lambda name, p: bool(value(name, p))
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"{owner}: {arg}={value!r} is invalid: pass a list of parameter names, a function "
                          f"(name, param) -> bool, or None")
    wanted = set(value)
    unknown = sorted(str(n) for n in wanted - set(names))
    if unknown:
        hint = did_you_mean(unknown[0], names)
        guess = f"; {hint.rstrip()}" if hint else ""
        raise ConfigError(f"{owner}: {arg} names {', '.join(repr(n) for n in unknown)}, which the model does not "
                          f"have{guess} (names are those of model.named_parameters())")
    return lambda name, p: name in wanted


def width_scaled_param_groups(model_or_named_params: NamedParams, *, width_multiplier: float, lr: float,
                              weight_decay: float, rule: Literal["robust", "mup", "standard"] = "robust",
                              no_decay: Iterable[str] | Callable[[str, torch.Tensor], bool] | None = None,
                              embeddings: Literal["vector", "matrix"] | None = None,
                              vector_like: Iterable[str] | Callable[[str, torch.Tensor], bool] | None = None,
                              ) -> list[dict[str, Any]]:
    r"""AdamW param groups for a model ``d = width_multiplier`` times wider than the proxy where ``lr`` was tuned.

    Parameters with ``ndim >= 2`` are *matrix-like*, the others (biases, norm gains) *vector-like*. With ``η``,
    ``λ`` the proxy's ``lr`` and AdamW ``weight_decay`` (torch's coefficient: a step decays ``p`` by
    ``lr·weight_decay``):

    ================  ===========================  ==========================
    rule              matrix-like (lr, wd)         vector-like (lr, wd)
    ================  ===========================  ==========================
    ``"robust"``      ``η/d``, ``λ·√d``            ``η``, ``0``
    ``"mup"``         ``η/d``, ``λ``               ``η``, ``λ``
    ``"standard"``    ``η``, ``λ``                 ``η``, ``λ``
    ================  ===========================  ==========================

    ``"robust"`` is the rule of Fan et al.: in the steady state of AdamW the top singular value of a weight matrix
    grows like ``sqrt(η/λ)·d^0.75``, so ``η ∝ 1/d`` (μP) together with ``λ ∝ √d`` keeps it, and with it the
    gain of each sublayer, the same at every width. Vector-like parameters get no weight decay at every width,
    the proxy included, so tune the proxy with the same rule (``width_multiplier=1``). ``"mup"`` is μP's learning
    rate with a constant AdamW coefficient (the baseline the paper improves on). Parameters picked by ``no_decay``
    get weight decay 0 under every rule.

    Args:
        model_or_named_params: an ``nn.Module``, a dict name -> parameter, or ``model.named_parameters()``. A tensor
            met twice (tied weights) is put in one group, under its first name.
        width_multiplier: ``d`` = target width / proxy width (finite, > 0).
        lr: the proxy's learning rate ``η`` (finite, > 0). weight_decay: its AdamW coefficient ``λ`` (finite, >= 0).
        rule: ``"robust"`` (default), ``"mup"`` or ``"standard"``.
        no_decay: parameter names, or a function ``(name, param) -> bool``, whose weight decay is 0.
        embeddings: how ``nn.Embedding``/``nn.EmbeddingBag`` weights (found when a module is given) are scaled:
            ``"vector"`` (μP's classification: only one of their dimensions grows with width) or ``"matrix"``. There
            is no default: which one the paper uses was not verified, so a model with embeddings under ``"robust"``
            or ``"mup"`` must choose.
        vector_like: names, or a function ``(name, param) -> bool``, of ``>= 2``-D parameters to treat as
            vector-like, e.g. a first layer whose input size does not grow with width (μP's input weights). It
            takes precedence over ``embeddings``.

    Returns:
        A list of dicts for ``torch.optim.AdamW(groups, ...)``, in the order ``matrix``, ``matrix_no_decay``,
        ``vector``, ``vector_no_decay`` (empty ones left out), each with ``params`` (in ``named_parameters()``
        order), ``param_names``, ``lr``, ``weight_decay``, ``name`` and ``rule``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
        >>> groups = width_scaled_param_groups(net, width_multiplier=4, lr=1e-3, weight_decay=0.1)
        >>> [(g["name"], g["lr"], round(g["weight_decay"], 6)) for g in groups]
        [('matrix', 0.00025, 0.2), ('vector', 0.001, 0.0)]
        >>> groups[0]["param_names"]
        ['0.weight', '2.weight']
        >>> opt = torch.optim.AdamW(groups)

    References:
        Zhiyuan Fan, Yifeng Liu, Qingyue Zhao, Angela Yuan, Quanquan Gu, "Robust Layerwise Scaling Rules by Proper
        Weight Decay Tuning", arXiv:2510.15262, 2025.
        Greg Yang, Edward J. Hu, Igor Babuschkin, Szymon Sidor, Xiaodong Liu, David Farhi, Nick Ryder, Jakub
        Pachocki, Weizhu Chen, Jianfeng Gao, "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
        Hyperparameter Transfer", arXiv:2203.03466, 2022.

    Notes:
        Checked against the paper's abstract (read in full): ``η₂ ∝ 1/d`` and ``λ₂ ∝ √d`` for matrix-like
        parameters, ``η₁ = Θ(1)`` and ``λ₁ = 0`` for vector-like ones, ``σ_max ≈ sqrt(η/λ)·d^0.75``, and
        matching top singular values as the diagnostic. Not checked (the body of the paper was not read): which
        parameters the paper counts as vector-like beyond the abstract's wording (embeddings, the output layer, a
        first layer of fixed fan-in), hence ``embeddings`` and ``vector_like``; here every ``>= 2``-D parameter is
        matrix-like unless named. μP's own package (microsoft/mup ``MuAdamW``) divides the rate of parameters with two
        width-scaled dimensions by ``d`` and *multiplies* the AdamW coefficient by ``d`` (``lr·weight_decay`` kept),
        unlike ``"mup"`` here (coefficient kept), and it decides matrix-like from shapes relative to a base model.
    """
    owner = "width_scaled_param_groups"
    d = check_number(owner, "width_multiplier", width_multiplier, low=0.0, low_open=True,
                     hint="it is target width / proxy width, e.g. 4 for a model four times wider")
    eta = check_number(owner, "lr", lr, low=0.0, low_open=True, hint="pass the learning rate tuned on the proxy")
    lam = check_number(owner, "weight_decay", weight_decay, low=0.0,
                       hint="pass the AdamW weight decay tuned on the proxy (0 for none)")
    rule_name = _choice(owner, "rule", rule, WIDTH_RULES)
    emb_kind = None if embeddings is None else _choice(owner, "embeddings", embeddings, EMBEDDING_CHOICES)
    named, embedding_ids = _named_params(owner, model_or_named_params)
    names = [n for n, _ in named]
    skip_decay = _name_selector(owner, "no_decay", no_decay, names)
    as_vector = _name_selector(owner, "vector_like", vector_like, names)
    found = [n for n, p in named if id(p) in embedding_ids and not as_vector(n, p)]
    if found and emb_kind is None and rule_name != "standard":
        raise ConfigError(f"{owner}: the model has embeddings ({', '.join(found)}) and how rule={rule_name!r} "
                          "should scale them is a choice: pass embeddings='vector' (μP's classification: learning "
                          "rate kept, and for 'robust' no weight decay) or embeddings='matrix' (treated like hidden "
                          "weight matrices)")
    matrix_lr, matrix_wd, vector_wd = eta, lam, lam
    if rule_name in ("robust", "mup"):
        matrix_lr = eta / d
    if rule_name == "robust":
        matrix_wd, vector_wd = lam * math.sqrt(d), 0.0
    settings = {"matrix": (matrix_lr, matrix_wd), "matrix_no_decay": (matrix_lr, 0.0),
                "vector": (eta, vector_wd), "vector_no_decay": (eta, 0.0)}
    members: dict[str, list[tuple[str, torch.Tensor]]] = {key: [] for key in settings}
    for name, p in named:
        if as_vector(name, p) or p.ndim < 2:
            kind = "vector"
        elif id(p) in embedding_ids and emb_kind is not None:
            kind = emb_kind
        else:
            kind = "matrix"
        no_decay_here = skip_decay(name, p) and not (kind == "vector" and vector_wd == 0.0)
        members[kind + ("_no_decay" if no_decay_here else "")].append((name, p))
    return [{"params": [p for _, p in group], "param_names": [n for n, _ in group], "lr": settings[key][0],
             "weight_decay": settings[key][1], "name": key, "rule": rule_name}
            for key, group in members.items() if group]


def batch_scaled_lr(lr: float, *, base_batch_size: int, batch_size: Any,
                    rule: Literal["sqrt", "linear"] = "sqrt") -> Any:
    r"""The learning rate for ``batch_size`` given ``lr`` tuned at ``base_batch_size``.

    .. math::

        η(B) = η_0 \sqrt{B / B_0}\ \ (\texttt{"sqrt"}: \text{Adam and other adaptive optimizers}),\qquad
        η(B) = η_0\, B / B_0\ \ (\texttt{"linear"}: \text{SGD})

    Both hold below a critical batch size; beyond it the best rate stops growing (not modelled here).

    Args:
        lr: ``η_0``, the rate tuned at ``base_batch_size`` (finite, > 0).
        base_batch_size: ``B_0`` (an integer >= 1).
        batch_size: ``B``: an integer >= 1, or an array/list of them (the result is then a float64 array).
        rule: ``"sqrt"`` (default) or ``"linear"``.

    Returns:
        A float, or a NumPy float64 array shaped like ``batch_size``.

    Example:
        >>> batch_scaled_lr(1e-3, base_batch_size=256, batch_size=1024)
        0.002
        >>> batch_scaled_lr(0.1, base_batch_size=256, batch_size=[128, 512], rule="linear").tolist()
        [0.05, 0.2]

    References:
        Diego Granziol, Stefan Zohren, Stephen Roberts, "Learning Rates as a Function of Batch Size: A Random Matrix
        Theory Approach to Neural Network Training", JMLR 23, 2022, arXiv:2006.09092.

    Notes:
        Checked against the paper's abstract: linear scaling for SGD, square-root scaling for adaptive methods such
        as Adam, from the extreme eigenvalues of the batch Hessian. The critical batch size where the rules stop
        holding is not reproduced.
    """
    owner = "batch_scaled_lr"
    eta = check_number(owner, "lr", lr, low=0.0, low_open=True, hint="pass the rate tuned at base_batch_size")
    b0 = check_int(owner, "base_batch_size", int(base_batch_size) if isinstance(base_batch_size, np.integer)
                   else base_batch_size, low=1)
    rule_name = _choice(owner, "rule", rule, BATCH_RULES, hint="'sqrt' for Adam-type optimizers, 'linear' for SGD")
    power = 0.5 if rule_name == "sqrt" else 1.0
    if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool):
        b = check_int(owner, "batch_size", int(batch_size), low=1)
        return eta * (b / b0) ** power
    if isinstance(batch_size, (str, bytes, float, bool)) or batch_size is None:
        raise ConfigError(f"{owner}: batch_size={batch_size!r} is invalid: it must be an integer >= 1 or an array of "
                          "them")
    arr = np.asarray(batch_size)
    if arr.size == 0:
        raise DataError(f"{owner}: batch_size is empty; pass at least one batch size")
    if arr.dtype.kind not in "iu" or bool(np.any(arr < 1)):
        raise ConfigError(f"{owner}: batch_size must hold integers >= 1, got dtype {arr.dtype} with values "
                          f"{arr.ravel()[:5].tolist()}; cast with np.asarray(sizes, dtype=int) if they are whole")
    return eta * (arr.astype(np.float64) / b0) ** power


def _power_iteration(w: torch.Tensor, n_iter: int, generator: torch.Generator) -> float:
    v = torch.randn(w.shape[1], generator=generator, dtype=torch.float64).to(w.device, w.dtype)
    sigma = w.new_zeros(())
    for _ in range(n_iter):
        v = v / torch.linalg.vector_norm(v).clamp_min(1e-300)
        u = w @ v
        sigma = torch.linalg.vector_norm(u)
        v = w.T @ u
    return float(sigma)


@torch.no_grad()
def top_singular_values(model_or_named_params: NamedParams, n_iter: int | None = None,
                        seed: int = 0) -> OrderedDict[str, float]:
    r"""The largest singular value of every parameter with ``ndim >= 2``, viewed as ``(size(0), -1)``.

    The diagnostic of Fan et al.: under their rule the top singular value of each weight matrix is about the same at
    every width, so comparing ``top_singular_values`` of a proxy and a wide model checks the transfer.

    Args:
        model_or_named_params: an ``nn.Module``, a dict name -> tensor, or ``model.named_parameters()``; tied
            weights are measured once, under their first name. Convolution kernels ``(out, in, *k)`` are viewed as
            ``(out, in·prod(k))``.
        n_iter: None (default): exact, ``torch.linalg.matrix_norm(ord=2)`` in float64. An integer >= 1: that many
            power-iteration steps in float64 (a lower bound that converges to the exact value; cheaper for large
            matrices). Complex matrices are always measured exactly.
        seed: seed of the power iteration's start vectors.

    Returns:
        An ordered dict name -> top singular value (float), in ``named_parameters()`` order; 0.0 for an empty matrix.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 2, bias=False)
        >>> _ = lin.weight.data.copy_(torch.tensor([[3.0, 0.0], [0.0, -4.0]]))
        >>> dict(top_singular_values(lin))
        {'weight': 4.0}

    References:
        Zhiyuan Fan, Yifeng Liu, Qingyue Zhao, Angela Yuan, Quanquan Gu, "Robust Layerwise Scaling Rules by Proper
        Weight Decay Tuning", arXiv:2510.15262, 2025.

    Notes:
        Matching top singular values across widths is the diagnostic named in the paper's abstract; how the paper
        computes them (exactly or iteratively, whole matrices or per attention head) was not checked.
    """
    owner = "top_singular_values"
    if n_iter is not None:
        n_iter = check_int(owner, "n_iter", n_iter, low=1, hint="or None for the exact value")
    check_int(owner, "seed", seed, low=0)
    named, _ = _named_params(owner, model_or_named_params)
    matrices = [(n, p) for n, p in named if p.ndim >= 2]
    if not matrices:
        raise DataError(f"{owner}: no parameter has ndim >= 2 (got {', '.join(n for n, _ in named[:5])}); the "
                        "diagnostic measures weight matrices")
    generator = torch.Generator().manual_seed(seed)
    out: OrderedDict[str, float] = OrderedDict()
    for name, p in matrices:
        w = p.detach()
        w = w.to(torch.complex128 if w.is_complex() else torch.float64).reshape(w.shape[0], math.prod(w.shape[1:]))
        if w.numel() == 0:
            out[name] = 0.0
            continue
        if not bool(torch.isfinite(w).all()):
            raise DataError(f"{owner}: parameter {name!r} holds NaN or Inf, so it has no singular values; check the "
                            "training run that produced it")
        if n_iter is None or w.is_complex():
            out[name] = float(torch.linalg.matrix_norm(w, ord=2))
        else:
            out[name] = _power_iteration(w, n_iter, generator)
    return out
