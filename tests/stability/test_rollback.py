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
