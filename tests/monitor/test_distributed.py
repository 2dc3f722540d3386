"""The monitor under torch.distributed: 2 processes, gloo, CPU, launched with torchrun."""

from __future__ import annotations

import json
import math

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
        assert res["sharded_nonfinite"] == [1.0, 2.0, 1.0]  # per parameter, not per shard
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


def test_fsdp2_dtensor_parameters_are_reduced_by_their_placements(tmp_path):
    out = run_torchrun("-m", "tests.monitor._fsdp_worker", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for case in ("fsdp", "fsdp_flag_false", "fsdp_clip", "hsdp", "mixed_clip"):
            got, want = res[case], res[case]["expected"]
            assert got["warnings"] == [], case
            # the full model's norms from the ranks' shards (FSDP) or replicas (HSDP), whatever grads_synchronized
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5), case
            for i in range(3):
                assert got["per_param"][i] == pytest.approx(want["per_param"][i], rel=1e-5), case
                assert got["update_ratio"][i] == pytest.approx(want["update_ratio"][i], rel=1e-4), case
            assert got["tiny_v"] == pytest.approx(want["tiny_v"], abs=1e-12), case
            assert got["nonfinite"] == [0.0, 0.0, 0.0]
            assert got["params_match"], case  # monitoring (and clipping) leaves the same training as unsharded
        for case in ("fsdp_clip", "mixed_clip"):
            clip = res[case]
            assert clip["expected"]["returned"] == pytest.approx(clip["expected"]["grad_norm"], rel=1e-5), case
            assert min(clip["expected"]["grad_norm"]) > 0.05  # the clip was active on every step
        assert "Partial placement" in res["partial"]
        clip = res["hsdp_clip_unmeasured"]  # the clipping path that did not measure beforehand (1/replicas)
        assert clip["warned"] and not clip["sampled"]
        assert clip["returned"] == pytest.approx(clip["expected"], rel=1e-5) and clip["expected"] > 0.05
        assert clip["grads_match"]
        nan = res["nan_in_shards"]  # whole-model count, not one per shard; recorded, no crash, no hang
        assert nan["nonfinite"] == [2.0]
        assert math.isnan(nan["grad_norm"][0])
        assert nan["events"] == ["nonfinite_grads"] and nan["warnings"] == []
