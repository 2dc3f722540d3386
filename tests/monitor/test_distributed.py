"""The monitor under torch.distributed: 2 processes, gloo, CPU, launched with torchrun."""

from __future__ import annotations

import json

import pytest

from losslab.monitor import read_log
from tests.conftest import run_torchrun

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.xdist_group("torchrun")]


def test_ddp_reduction_and_rank0_only_writes(tmp_path):
    out = run_torchrun("-m", "tests.monitor._ddp_worker", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for res in ranks:
        ddp = res["ddp"]
        # loss: mean over ranks; grad norm: DDP-averaged gradients, equal to clip_grad_norm_ on every rank
        assert ddp["loss"] == pytest.approx(ddp["expected_loss"], rel=1e-6)
        assert ddp["grad_norm"] == pytest.approx(ddp["expected_grad_norm"], rel=1e-5)
        assert ddp["logit_max"][0] == pytest.approx(ddp["expected_logit_max"][0], rel=1e-6)
        assert ddp["logit_max"][1] is None  # not a sampled step (every_n_steps=2)
        sharded = res["sharded"]
        assert sharded["got"] == pytest.approx(sharded["expected"], rel=1e-5)
        assert sharded["got_per_param"] == pytest.approx(sharded["expected_per_param"], rel=1e-5)
        assert sharded["loss"] == pytest.approx(0.5)
        clip = res["clip_without_grads"]
        assert clip["got"] == pytest.approx(clip["expected"], rel=1e-5)
    assert ranks[0]["ddp"]["loss"] == ranks[1]["ddp"]["loss"]  # identical on every rank, detectors agree
    log = read_log(tmp_path / "ddp.csv")  # one file, written by rank 0 only, four whole rows
    assert log.steps.tolist() == [1, 2, 3, 4]
    assert log.columns["loss"].tolist() == pytest.approx(ranks[0]["ddp"]["expected_loss"], rel=1e-6)
    assert (tmp_path / "ddp.csv").read_text().count("\n") == 5
    for r, res in enumerate(ranks):  # inputs that differ between ranks: skipped reduction, no hang
        mismatch = res["mismatch"]
        assert mismatch["loss"] == [float(r + 1), None if r == 1 else 1.0, 1.5]  # local, local, mean of 1 and 2
        assert ["ranks measured different metrics" in " ".join(w) for w in mismatch["warned"]] == [True, True, False]
        assert sum("ranks measured different metrics" in m for m in mismatch["events"]) == 2
