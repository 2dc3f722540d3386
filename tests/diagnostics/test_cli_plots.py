"""`losslab diagnose` CLI (contract, outputs, one-line errors) and the diagnostics plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from losslab.cli import main
from losslab.diagnostics import (
    SharpnessRecord,
    layerwise_barriers,
    linear_interpolation,
    loss_line,
    loss_plane,
    random_direction,
    sample_size_loss_change,
    spectral_density,
)
from losslab.report import diagnostics_plots as plots
from tests.conftest import REPO, run_cli
from tests.diagnostics.helpers import mse, regression_batch, tiny_mlp, wishart

MODEL_FILE = '''
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))

def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)

def loss_fn(model, b):
    return ((model(b[0]) - b[1]) ** 2).mean()

def other_loss(model, b):
    return (model(b[0]) - b[1]).abs().mean()
'''


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(MODEL_FILE)
    ns: dict = {}
    exec(MODEL_FILE, ns)
    torch.save(ns["build_model"]().state_dict(), tmp_path / "ckpt.pt")
    return tmp_path


def _run(capsys, *args):
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hessian_command_writes_json_and_png_matching_the_library(workdir, capsys):
    out = workdir / "out"
    code, stdout, err = _run(capsys, "diagnose", "hessian", "--checkpoint", str(workdir / "ckpt.pt"),
                             "--loss-fn", str(workdir / "model.py"), "--k", "2", "--trace-samples", "5",
                             "--density-iter", "10", "--out", str(out))
    assert code == 0, err
    data = json.loads((out / "hessian.json").read_text())
    assert (out / "hessian.png").stat().st_size > 1000
    ns: dict = {}
    exec(MODEL_FILE, ns)
    model = ns["build_model"]()
    model.load_state_dict(torch.load(workdir / "ckpt.pt"))
    from losslab.diagnostics import HessianOperator

    ev = torch.linalg.eigvalsh(HessianOperator(model, ns["loss_fn"], ns["batch"]()).dense())
    np.testing.assert_allclose(data["eigen"]["eigenvalues"], ev.flip(0)[:2].numpy(), rtol=1e-4)
    assert data["trace"]["n_samples"] == 5 and data["provenance"]["settings"]["k"] == 2
    assert "top eigenvalues" in stdout


def test_landscape_command_and_named_loss(workdir, capsys):
    out = workdir / "land"
    code, _, err = _run(capsys, "diagnose", "landscape", "--checkpoint", str(workdir / "ckpt.pt"),
                        "--loss-fn", f"{workdir / 'model.py'}:other_loss", "--dims", "1", "--steps", "5",
                        "--out", str(out))
    assert code == 0, err
    data = json.loads((out / "landscape.json").read_text())
    assert len(data["landscape"]["losses"]) == 5 and data["landscape"]["betas"] is None
    assert (out / "landscape.png").stat().st_size > 1000
    code, _, err = _run(capsys, "diagnose", "landscape", "--checkpoint", str(workdir / "ckpt.pt"),
                        "--loss-fn", str(workdir / "model.py"), "--directions", "hessian", "--steps", "3",
                        "--out", str(out))
    assert code == 0, err
    assert np.asarray(json.loads((out / "landscape.json").read_text())["landscape"]["losses"]).shape == (3, 3)


def test_bad_inputs_give_one_line_and_exit_2(workdir, capsys):
    ck, mf = str(workdir / "ckpt.pt"), str(workdir / "model.py")
    (workdir / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save({"other": torch.zeros(3)}, workdir / "wrong.pt")
    (workdir / "nobatch.py").write_text("def build_model():\n    return None\ndef loss_fn(m, b):\n    return 0\n")
    (workdir / "broken.py").write_text("raise ValueError('boom')\n")
    cases = [
        (["--checkpoint", ck, "--loss-fn", str(workdir / "missing.py")], "does not exist"),
        (["--checkpoint", ck, "--loss-fn", str(workdir / "nobatch.py")], "defines no function 'batch'"),
        (["--checkpoint", ck, "--loss-fn", f"{mf}:nope"], "defines no function 'nope'"),
        (["--checkpoint", ck, "--loss-fn", str(workdir / "broken.py")], "importing"),
        (["--checkpoint", str(workdir / "garbage.pt"), "--loss-fn", mf], "cannot read checkpoint"),
        (["--checkpoint", str(workdir / "wrong.pt"), "--loss-fn", mf], "does not match build_model()"),
        (["--checkpoint", str(workdir / "nope.pt"), "--loss-fn", mf], "does not exist"),
        (["--checkpoint", ck, "--loss-fn", mf, "--k", "0"], "k must be"),
        (["--checkpoint", ck, "--loss-fn", mf, "--k", "100000"], "k must be"),
    ]
    for args, message in cases:
        code, _, err = _run(capsys, "diagnose", "hessian", *args, "--out", str(workdir / "o"))
        assert code == 2, (args, err)
        assert err.startswith("losslab: error:") and err.strip().count("\n") == 0, err
        assert message in err, (message, err)
    code, _, err = _run(capsys, "diagnose", "landscape", "--checkpoint", ck, "--loss-fn", mf, "--steps", "1")
    assert code == 2 and "--steps" in err
    code, _, err = _run(capsys, "diagnose")  # no diagnostic named: usage on stderr, exit 2
    assert code == 2 and "hessian" in err and "landscape" in err


@pytest.mark.slow
def test_entry_point_in_a_subprocess(workdir):
    out = run_cli("diagnose", "hessian", "--checkpoint", str(workdir / "ckpt.pt"), "--loss-fn",
                  str(workdir / "model.py"), "--k", "1", "--trace-samples", "0", "--density-iter", "0",
                  "--out", str(workdir / "sub"))
    assert out.returncode == 0, out.stderr
    assert (workdir / "sub" / "hessian.json").is_file() and not (workdir / "sub" / "hessian.png").exists()
    bad = run_cli("diagnose", "hessian", "--checkpoint", "nope.pt", "--loss-fn", str(workdir / "model.py"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_example_model_file_follows_the_contract():
    from losslab.cli._diagnose import load_user_module

    module, loss_fn, _ = load_user_module(str(REPO / "examples" / "diagnose_model.py"))
    model = module.build_model()
    assert torch.isfinite(loss_fn(model.eval(), module.batch()))


def test_plots_return_figures_with_the_data(tmp_path):
    from matplotlib.figure import Figure

    model, batch = tiny_mlp(), regression_batch()
    d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
    line = loss_line(model, mse, batch, d1, alphas=np.linspace(-1, 1, 7))
    plane = loss_plane(model, mse, batch, d1, d2, alphas=np.linspace(-1, 1, 5), betas=np.linspace(-1, 1, 4))
    other = tiny_mlp(seed=3)
    interp = linear_interpolation(model, mse, batch, model, other, alphas=np.linspace(0, 1, 5))
    layers = layerwise_barriers(model, mse, batch, model, other, alphas=np.linspace(0, 1, 3))
    change = sample_size_loss_change(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(1), batch, n_points=2)
    recs = [SharpnessRecord(i, 1.0, 2.0 + i, None, 4.0, (2.0 + i) / 4, "gd", 0.5, 10) for i in range(4)]
    figs = {
        "density": plots.plot_spectral_density(spectral_density(wishart(), 20), eigenvalues=[1.0]),
        "line": plots.plot_loss_line([line, line], labels=["a", "b"]),
        "plane": plots.plot_loss_plane(plane),
        "interp": plots.plot_interpolation(interp),
        "layers": plots.plot_layerwise_barriers(layers),
        "sharp": plots.plot_sharpness(recs),
        "change": plots.plot_sample_size_change(change),
    }
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        fig.savefig(tmp_path / f"{name}.png", dpi=60)
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_allclose(figs["line"].axes[0].lines[0].get_ydata(), line.losses)
    np.testing.assert_allclose(figs["sharp"].axes[0].lines[0].get_ydata(), [2, 3, 4, 5])
    np.testing.assert_allclose(figs["sharp"].axes[0].lines[1].get_ydata(), [4] * 4)
    assert [t.get_text() for t in figs["layers"].axes[0].get_xticklabels()] == list(layers)
