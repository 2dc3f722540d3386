"""``losslab diagnose hessian|landscape``: curvature and landscape of a checkpoint, written as JSON + PNG.

The user supplies a Python file (the *contract*, see docs/diagnostics.md) that defines

- ``build_model() -> torch.nn.Module``: the architecture, with any weights (the checkpoint replaces them);
- ``batch() -> Any``: the batch the loss is evaluated on (e.g. ``(inputs, targets)``);
- ``loss_fn(model, batch) -> scalar tensor``: the loss; another name is chosen with ``--loss-fn FILE:NAME``.

The checkpoint is a ``state_dict`` saved with ``torch.save`` (or a dict holding it under ``"model"``,
``"state_dict"`` or ``"model_state_dict"``); it is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from losslab._errors import ConfigError, DataError

__all__ = ["register", "run"]

_CONTRACT = "the file must define build_model(), batch() and loss_fn(model, batch) (see docs/diagnostics.md)"


def register(subparsers: Any) -> None:
    """Add ``diagnose`` with its ``hessian`` and ``landscape`` sub-commands."""
    parser = subparsers.add_parser("diagnose", help="Hessian spectrum or loss landscape of a checkpoint",
                                   description=(__doc__ or "").replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="diagnostic", metavar="DIAGNOSTIC")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", required=True, help="state_dict saved with torch.save")
    common.add_argument("--loss-fn", required=True, metavar="FILE.py[:NAME]",
                        help="Python file defining build_model(), batch() and the loss function (default name loss_fn)")
    common.add_argument("--mode", default="eval", choices=("eval", "train"), help="model mode (default eval)")
    common.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    common.add_argument("--out", default="diagnostics-out", help="output folder (default diagnostics-out)")

    h = sub.add_parser("hessian", parents=[common], help="top eigenvalues, trace and spectral density")
    h.add_argument("--k", type=int, default=3, help="number of eigenvalues (default 3)")
    h.add_argument("--which", default="LA", choices=("LA", "SA", "LM"),
                   help="LA largest algebraic (default), SA smallest, LM largest magnitude")
    h.add_argument("--tol", type=float, default=1e-6, help="Lanczos tolerance (default 1e-6)")
    h.add_argument("--max-iter", type=int, default=100, help="most Lanczos steps (default 100)")
    h.add_argument("--trace-samples", type=int, default=50, help="Hutchinson samples, 0 to skip (default 50)")
    h.add_argument("--density-iter", type=int, default=60, help="SLQ Lanczos steps, 0 to skip (default 60)")
    h.add_argument("--density-vectors", type=int, default=1, help="SLQ probe vectors (default 1)")
    h.set_defaults(func=run)

    s = sub.add_parser("landscape", parents=[common], help="1-D or 2-D loss landscape around the checkpoint")
    s.add_argument("--dims", type=int, default=2, choices=(1, 2), help="1 or 2 directions (default 2)")
    s.add_argument("--steps", type=int, default=21, help="grid points per direction (default 21)")
    s.add_argument("--span", type=float, default=1.0, help="grid from -span to span (default 1.0)")
    s.add_argument("--directions", default="random", choices=("random", "hessian"),
                   help="filter-normalised random (default) or top Hessian eigenvectors")
    s.add_argument("--keep-biasbn", action="store_true",
                   help="do not zero bias/BatchNorm entries of random directions (Li et al.'s ignore='')")
    s.set_defaults(func=run)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def load_user_module(spec: str) -> tuple[Any, Any, Any]:
    """``(module, loss function, file path)`` from ``FILE.py[:NAME]``, with one-line errors."""
    path_str, _, name = spec.partition(":")
    name = name or "loss_fn"
    path = Path(path_str)
    if not path.is_file():
        raise ConfigError(f"--loss-fn file {str(path)!r} does not exist; {_CONTRACT}")
    mod_spec = importlib.util.spec_from_file_location(f"losslab_user_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise ConfigError(f"cannot import {str(path)!r} as a Python module; give a .py file")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code failed: report it in one line
        raise ConfigError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
    for needed in ("build_model", "batch", name):
        if not callable(getattr(module, needed, None)):
            raise ConfigError(f"{str(path)!r} defines no function {needed!r}; {_CONTRACT}")
    return module, getattr(module, name), path


def _load_checkpoint(model: Any, path: str) -> None:
    import torch

    p = Path(path)
    if not p.is_file():
        raise DataError(f"checkpoint {path!r} does not exist; save one with torch.save(model.state_dict(), path)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read checkpoint {path!r} ({type(exc).__name__}); "
                        "save it with torch.save(model.state_dict(), path)") from exc
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"checkpoint {path!r} holds no state_dict (a mapping name -> tensor)")
    try:
        model.load_state_dict(obj)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise DataError(f"checkpoint {path!r} does not match build_model(): {detail}") from exc


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Any, Path]:
    import torch

    module, loss_fn, _ = load_user_module(args.loss_fn)
    model = module.build_model()
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"build_model() must return a torch.nn.Module, got {type(model).__name__}")
    _load_checkpoint(model, args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return model, module.batch(), loss_fn, out


def _write(out: Path, name: str, payload: dict[str, Any], fig: Any) -> None:
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    if fig is not None:
        fig.savefig(out / f"{name}.png", dpi=120)


def run(args: argparse.Namespace) -> int:
    """Run ``diagnose hessian`` or ``diagnose landscape`` and print where the files went."""
    from losslab._provenance import provenance
    from losslab.diagnostics import (
        HessianOperator,
        hessian_directions,
        hutchinson_trace,
        lanczos,
        loss_line,
        loss_plane,
        random_direction,
        spectral_density,
    )
    from losslab.report import diagnostics_plots as plots

    model, batch, loss_fn, out = _setup(args)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    if args.diagnostic == "hessian":
        op = HessianOperator(model, loss_fn, batch, mode=args.mode)
        eig = lanczos(op, args.k, which=args.which, tol=args.tol, max_iter=max(args.k, min(args.max_iter, op.n)),
                      seed=args.seed)
        payload: dict[str, Any] = {"n_parameters": op.n, "loss": op.loss, "eigen": eig.to_dict()}
        if args.trace_samples:
            payload["trace"] = hutchinson_trace(op, args.trace_samples, seed=args.seed).to_dict()
        fig = None
        if args.density_iter:
            dens = spectral_density(op, min(args.density_iter, op.n), args.density_vectors, seed=args.seed)
            payload["density"] = dens.to_dict()
            crit = dens.lla_criteria()
            payload["lla_criteria"] = {k: (v if v != float("inf") else None) for k, v in crit.items()}
            fig = plots.plot_spectral_density(dens, eigenvalues=eig.eigenvalues.tolist())
        payload["provenance"] = provenance(**settings)
        _write(out, "hessian", payload, fig)
        print(f"top eigenvalues ({args.which}): {[round(v, 6) for v in eig.eigenvalues.tolist()]}; "
              f"wrote {out / 'hessian.json'}" + (f" and {out / 'hessian.png'}" if fig is not None else ""))
        return 0
    if args.steps < 2 or not args.span > 0:
        raise ConfigError("--steps must be >= 2 and --span > 0")
    grid = [args.span * (2 * i / (args.steps - 1) - 1) for i in range(args.steps)]
    if args.directions == "hessian":
        dirs = hessian_directions(model, loss_fn, batch, args.dims, mode=args.mode, seed=args.seed)
    else:
        ignore = None if args.keep_biasbn else "biasbn"
        dirs = [random_direction(model, seed=args.seed + i, ignore=ignore) for i in range(args.dims)]
    if args.dims == 1:
        land = loss_line(model, loss_fn, batch, dirs[0], alphas=grid, mode=args.mode)
        fig = plots.plot_loss_line(land, title=f"1-D loss landscape ({args.directions} direction)")
    else:
        land = loss_plane(model, loss_fn, batch, dirs[0], dirs[1], alphas=grid, betas=grid, mode=args.mode)
        fig = plots.plot_loss_plane(land, title=f"2-D loss landscape ({args.directions} directions)")
    payload = {"landscape": land.to_dict(), "provenance": provenance(**settings)}
    _write(out, "landscape", payload, fig)
    print(f"centre loss {land.center_loss:.6g}; wrote {out / 'landscape.json'} and {out / 'landscape.png'}")
    return 0
