"""Rollback: a run made to diverge by an injected huge learning rate recovers; memory and disk; round trips."""

from __future__ import annotations

import math

import pytest
import torch

from losslab import ConfigError
from losslab.stability import (
    NonFiniteDetector,
    Rollback,
    RollbackEvent,
    TrainingDivergedError,
    ZScoreDetector,
)

TRUE_W = torch.tensor([[1.0, -2.0, 0.5]])


def _data(i):
    g = torch.Generator().manual_seed(i)
    x = torch.randn(16, 3, generator=g)
    return x, x @ TRUE_W.T


def _train(n_batches=120, poison=range(40, 44), rollback_kwargs=None, huge_lr=50.0):
    """Linear regression with SGD; batches in `poison` are trained with a huge LR (made to diverge)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rb = None if rollback_kwargs is None else Rollback(model, opt, **rollback_kwargs)
    losses, skipped = [], []
    for b in range(n_batches):
        if rb is not None and rb.should_skip(b):
            skipped.append(b)
            continue
        x, y = _data(b)
        with torch.no_grad():
            loss_before = float(((model(x) - y) ** 2).mean())
        opt.param_groups[0]["lr"] = huge_lr if b in poison else 0.05
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if rb is not None:
            rb.update(loss_before if math.isfinite(loss_before) else math.nan, batch=b)
    x, y = _data(10_000)
    with torch.no_grad():
        final = float(((model(x) - y) ** 2).mean())
    return final, rb, skipped, losses


def test_divergence_without_rollback_stays_broken():
    final, _, _, _ = _train()
    assert not (final < 1e-2)  # NaN or huge


@pytest.mark.parametrize("on_disk", [False, True])
def test_rollback_recovers_and_skips_batches(tmp_path, on_disk):
    kwargs = {"every": 10, "keep": 2, "skip_batches": 10,
              "detectors": [NonFiniteDetector(), ZScoreDetector(window=16, threshold=6.0, min_history=8)]}
    if on_disk:
        kwargs["directory"] = tmp_path / "snaps"
    final, rb, skipped, _ = _train(rollback_kwargs=kwargs)
    assert final < 1e-4, final
    assert rb.n_rollbacks >= 1
    ev = rb.events[0]
    assert isinstance(ev, RollbackEvent)
    assert 40 <= ev.batch <= 44 and ev.restored_step <= 40 and ev.restored_step % 10 == 0
    assert skipped[:10] == list(range(ev.batch + 1, ev.batch + 11))
    assert ev.reason.metric == "loss"
    if on_disk:
        files = sorted((tmp_path / "snaps").glob("*.pt"))
        assert len(files) == 2 and len(rb.snapshot_steps) == 2  # keep=2 files on disk, older ones deleted


def test_restore_is_exact():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
    rb = Rollback(model, opt, every=5, keep=1, skip_batches=0, extra={"scheduler": sched},
                  detectors=[NonFiniteDetector()])
    saved = None
    for b in range(12):
        x, y = _data(b)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        rb.update(loss, batch=b)
        if b == 9:  # snapshot at good step 10
            saved = ({k: v.clone() for k, v in model.state_dict().items()}, sched.last_epoch,
                     {k: v.clone() for k, v in opt.state_dict()["state"][0].items()})
    assert rb.snapshot_steps == [10]
    ev = rb.update(float("nan"), batch=12)
    assert ev is not None and ev.restored_step == 10 and rb.step == 10
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[0][k])
    assert sched.last_epoch == saved[1]
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, saved[2][k])


def test_repeated_divergence_walks_back_then_gives_up():
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rb = Rollback(model, opt, every=2, keep=3, skip_batches=1, detectors=[NonFiniteDetector()], max_rollbacks=10)
    for b in range(6):
        rb.update(1.0, batch=b)
    assert rb.snapshot_steps == [2, 4, 6]
    assert rb.update(math.nan, batch=6).restored_step == 6
    assert rb.update(math.nan, batch=7).restored_step == 4  # diverged again before a new snapshot
    assert rb.update(math.nan, batch=8).restored_step == 2
    with pytest.raises(TrainingDivergedError, match="no good snapshot"):
        rb.update(math.nan, batch=9)


def test_max_rollbacks():
    model = torch.nn.Linear(1, 1)
    rb = Rollback(model, torch.optim.SGD(model.parameters(), lr=0.1), every=1, keep=5, skip_batches=0,
                  detectors=[NonFiniteDetector()], max_rollbacks=2)
    for b in range(4):
        rb.update(1.0, batch=2 * b)
        if b < 2:
            rb.update(math.inf, batch=2 * b + 1)
    with pytest.raises(TrainingDivergedError, match="2 rollbacks"):
        rb.update(math.inf, batch=99)


def test_state_dict_round_trip(tmp_path):
    def build(directory):
        model = torch.nn.Linear(1, 1)
        return Rollback(model, torch.optim.SGD(model.parameters(), lr=0.1), every=3, keep=2, skip_batches=4,
                        detectors=[NonFiniteDetector(), ZScoreDetector(window=4, min_history=2)],
                        directory=directory)
    a = build(tmp_path / "a")
    for b, v in enumerate([1.0, 1.1, 0.9, 1.0, math.nan, 1.0, 1.05]):
        a.update(v, batch=b)
    state = a.state_dict()
    b_ = build(tmp_path / "a")
    b_.load_state_dict(state)
    assert b_.snapshot_steps == a.snapshot_steps and b_.skip_until == a.skip_until == 8
    for k in range(7, 12):
        assert a.should_skip(k) == b_.should_skip(k)
        assert (a.update(1.0 + 0.01 * k, batch=k) is None) == (b_.update(1.0 + 0.01 * k, batch=k) is None)
    assert a.step == b_.step
    # memory mode: the current state becomes the only snapshot
    m = build(None)
    m.load_state_dict(build(None).state_dict())
    assert m.snapshot_steps == [0]


def test_bad_input():
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs, name in [({"every": 0}, "every"), ({"keep": 0}, "keep"), ({"skip_batches": -1}, "skip_batches"),
                         ({"max_rollbacks": 0}, "max_rollbacks"), ({"extra": {"sched": 3}}, "sched")]:
        with pytest.raises(ConfigError, match=name):
            Rollback(model, opt, **kwargs)
    rb = Rollback(model, opt)
    with pytest.raises(ConfigError, match="skip_until"):
        rb.load_state_dict({"step": 3})
    assert rb.step == 0


def test_rollback_composes_with_skip_step():
    from losslab.stability import SkipStepOnSpike

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = SkipStepOnSpike(torch.optim.AdamW(model.parameters(), lr=1e-2), max_consecutive_skips=None)
    rb = Rollback(model, opt, every=2, keep=2, skip_batches=1, detectors=[NonFiniteDetector()])
    for b in range(5):
        x, y = _data(b)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        rb.update(loss, batch=b)
    n_steps = opt.n_steps
    ev = rb.update(math.nan, batch=5)
    assert ev.restored_step == 4 and opt.n_steps == 4 < n_steps  # the wrapper's counters were restored too


def _linear_rollback(directory, **kwargs):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, Rollback(model, opt, every=2, keep=2, directory=directory, detectors=[NonFiniteDetector()],
                                **kwargs)


def test_directory_self_round_trip_keeps_every_snapshot_file(tmp_path):
    _, _, rb = _linear_rollback(tmp_path)
    for b in range(4):
        rb.update(1.0, batch=b)
    files = sorted(p.name for p in tmp_path.iterdir())
    rb.load_state_dict(rb.state_dict())
    assert rb.snapshot_steps == [2, 4] and sorted(p.name for p in tmp_path.iterdir()) == files
    assert rb.update(math.nan, batch=5).restored_step == 4


def test_directory_resume_after_files_rotated_away(tmp_path):
    model, _, rb = _linear_rollback(tmp_path)
    for b in range(4):
        rb.update(1.0, batch=b)
    ckpt = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "rb": rb.state_dict()}
    for b in range(4, 10):  # the run goes on (the checkpoint's snapshot files are rotated away), then crashes
        rb.update(1.0, batch=b)
    later = {p.name for p in tmp_path.iterdir()}
    model2, _, rb2 = _linear_rollback(tmp_path)
    model2.load_state_dict(ckpt["model"])
    with pytest.warns(RuntimeWarning, match="2 snapshot file"):
        rb2.load_state_dict(ckpt["rb"])
    assert rb2.snapshot_steps == [4]  # a fresh snapshot of the resumed state
    assert later <= {p.name for p in tmp_path.iterdir()}  # the later files were not deleted, only reported
    with torch.no_grad():
        model2.weight.fill_(7.0)
    ev = rb2.update(math.nan, batch=4)
    assert ev.restored_step == 4 and torch.equal(model2.weight, ckpt["model"]["weight"])
    assert len(list(tmp_path.iterdir())) == 3  # rb2's own step-0 file was removed, not left behind


def _dropout_run(poison_batch=None, rng=True, n_batches=8, device="cpu"):
    """Dropout then Linear, trained on ones; returns the dropout masks drawn at each batch, in order."""
    torch.manual_seed(0)  # seeds the CUDA generators too
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(32, 1)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    masks = []
    model[0].register_forward_hook(lambda mod, inp, out: masks.append(out.detach() == 0))
    rb = Rollback(model, opt, every=3, keep=2, skip_batches=0, detectors=[NonFiniteDetector()], rng=rng)
    events = []
    for b in range(n_batches):
        loss = model(torch.ones(4, 32, device=device)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ev = rb.update(math.nan if b == poison_batch else loss, batch=b)
        if ev is not None:
            events.append(ev)
    return masks, events


def test_rollback_restores_the_random_state_so_dropout_masks_repeat():
    clean, _ = _dropout_run()
    masks, events = _dropout_run(poison_batch=4)
    # snapshot after batch 2 (step 3); batch 4 diverges -> back to step 3: batch 5 draws what batch 3 drew
    assert [e.restored_step for e in events] == [3]
    assert all(torch.equal(a, b) for a, b in zip(masks[:5], clean[:5]))
    assert torch.equal(masks[5], clean[3]) and torch.equal(masks[6], clean[4])
    fresh, _ = _dropout_run(poison_batch=4, rng=False)
    assert not torch.equal(fresh[5], clean[3])  # without rng=True the draws just continue
    assert torch.equal(fresh[5], clean[5])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rollback_restores_the_cuda_random_state():
    clean, _ = _dropout_run(device="cuda")
    masks, events = _dropout_run(poison_batch=4, device="cuda")
    assert masks[0].is_cuda and [e.restored_step for e in events] == [3]
    assert torch.equal(masks[5], clean[3]) and torch.equal(masks[6], clean[4])
    fresh, _ = _dropout_run(poison_batch=4, rng=False, device="cuda")
    assert not torch.equal(fresh[5], clean[3]) and torch.equal(fresh[5], clean[5])


def test_rollback_restores_python_numpy_and_generator_states():
    import random

    import numpy as np

    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(7)
    rb = Rollback(model, opt, every=1, keep=1, detectors=[NonFiniteDetector()], extra={"sampler_rng": gen})
    random.seed(1)
    np.random.seed(1)
    rb.update(1.0, batch=0)  # snapshot
    expected = (random.random(), float(np.random.rand()), torch.rand(1, generator=gen), torch.rand(1))
    rb.update(math.nan, batch=1)
    got = (random.random(), float(np.random.rand()), torch.rand(1, generator=gen), torch.rand(1))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])
    with pytest.raises(ConfigError, match="get_state"):
        Rollback(model, opt, extra={"thing": object()})


def test_rollback_restores_the_detector_history_of_the_snapshot():
    model = torch.nn.Linear(1, 1)
    zscore = ZScoreDetector(window=8, min_history=2)
    rb = Rollback(model, torch.optim.SGD(model.parameters(), lr=0.1), every=3, keep=1,
                  detectors=[NonFiniteDetector(), zscore])
    for b, v in enumerate([1.0, 1.1, 0.9]):
        rb.update(v, batch=b)
    at_snapshot = zscore.state_dict()
    assert at_snapshot["history"] == [1.0, 1.1, 0.9]
    for b, v in enumerate([1.05, 0.95], start=3):
        assert rb.update(v, batch=b) is None
    assert zscore.state_dict()["history"] == [1.0, 1.1, 0.9, 1.05, 0.95]
    assert rb.update(math.nan, batch=5).restored_step == 3
    assert zscore.state_dict() == at_snapshot
