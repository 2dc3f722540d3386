"""SkipStepOnSpike as a torch.optim.Optimizer: shared groups/state, LR schedulers, plain step(), Lightning, formats."""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings

import pytest
import torch

from losslab import ConfigError
from losslab.stability import NonFiniteDetector, SkipStepOnSpike, ThresholdDetector, ZScoreDetector


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def _backward(model, i, scale=1.0):
    g = torch.Generator().manual_seed(1000 + i)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    loss = ((model(x) - y) ** 2).mean() * scale
    loss.backward()
    return loss


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_is_an_optimizer_sharing_the_inner_groups_state_and_defaults():
    model = _model()
    inner = torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)
    opt = SkipStepOnSpike(inner)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups
    assert opt.state is inner.state
    assert opt.defaults is inner.defaults
    opt.param_groups[0]["lr"] = 0.05  # writes through to the inner optimizer
    assert inner.param_groups[0]["lr"] == 0.05
    opt.add_param_group({"params": list(model[2].parameters()), "lr": 0.2})
    assert len(inner.param_groups) == 2 and inner.param_groups[1]["lr"] == 0.2
    assert inner.param_groups[1]["momentum"] == 0.9  # the inner optimizer's defaults filled in
    assert sum(len(g["params"]) for g in opt.param_groups) == 4  # no placeholder group left over
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    _backward(model, 0)
    opt.step(loss=1.0)
    assert calls == ["pre", "post"]
    assert len(inner.state) == 4 and opt.state is inner.state  # momentum buffers created by the inner step
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    # torch's load_state_dict rebinds the inner state and groups: the wrapper still sees the new objects
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt.state is inner.state and opt.param_groups is inner.param_groups and len(opt.state) == 4


@pytest.mark.parametrize("make_sched", [
    lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.5 ** t),
    lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4),
    lambda o: __import__("losslab.optim", fromlist=["x"]).schedule_scheduler(o, "linear:peak=0.1,steps=8"),
], ids=["LambdaLR", "CosineAnnealingLR", "schedule_scheduler"])
def test_lr_schedulers_on_the_wrapper_drive_the_inner_rates(make_sched):
    model, ref_model = _model(), _model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = SkipStepOnSpike(inner, loss_detector=ThresholdDetector(max_value=1e3), grad_norm_detector=None)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.1)
    sched, ref_sched = make_sched(opt), make_sched(ref)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for i in range(4):
            _backward(model, i)
            before = _params(model)
            opt.step(loss=1e6 if i == 2 else 1.0)  # step 3 is skipped: the schedule still advances
            assert opt.last_skipped == (i == 2) and _same(before, _params(model)) == (i == 2)
            opt.zero_grad()
            sched.step()
            ref.step()
            ref_sched.step()
            lrs.append(inner.param_groups[0]["lr"])
            assert lrs[-1] == pytest.approx(ref.param_groups[0]["lr"], abs=1e-12)
    assert len(set(lrs)) > 1 and lrs[-1] != pytest.approx(0.1)
    assert sched.get_last_lr() == [inner.param_groups[0]["lr"]]


def test_plain_step_without_a_loss_decides_from_the_gradient_norm_and_warns_once():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.AdamW(model.parameters(), lr=1e-2),
                          grad_norm_detector=ThresholdDetector(max_value=1e3))
    _backward(model, 0)
    before = _params(model)
    with pytest.warns(UserWarning, match="only the gradient norm is checked"):
        assert opt.step() is None  # what a Hugging Face Trainer / accelerate calls
    assert not opt.last_skipped and not _same(before, _params(model)) and opt.n_steps == 1
    opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        _backward(model, 1, scale=1e8)  # a gradient-norm spike, no loss given
        before = _params(model)
        state_before = copy.deepcopy(opt.optimizer.state_dict())
        opt.step()
        assert opt.last_skipped and opt.n_skipped == 1
        assert [e.metric for e in opt.last_events] == ["grad_norm"] and opt.events[-1].step == 2
        assert _same(before, _params(model))
        assert all(torch.equal(v, state_before["state"][i][k])
                   for i, s in opt.optimizer.state_dict()["state"].items() for k, v in s.items())
        opt.zero_grad()
        _backward(model, 2)
        opt.step()
    assert not opt.last_skipped
    # the loss detectors were not fed a made-up value on those steps
    assert opt.detectors["loss"].state_dict()["history"] == []


def test_plain_step_with_only_loss_detectors_takes_the_step_and_warns_once():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1), grad_norm_detector=None,
                          skip_non_finite=False)
    _backward(model, 0)
    before = _params(model)
    with pytest.warns(UserWarning, match="unchecked"):
        opt.step()
    assert not opt.last_skipped and not _same(before, _params(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
        # nothing configured that needs a loss: no warning at all
        bare = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1), loss_detector=None,
                               grad_norm_detector=None, skip_non_finite=False)
        bare.step()
    assert bare.n_steps == 1 and not bare.last_skipped


def test_plain_step_still_skips_non_finite_gradients_with_default_detectors():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1))
    _backward(model, 0)
    model[0].weight.grad[0, 0] = math.nan
    before = _params(model)
    with pytest.warns(UserWarning):
        opt.step()
    assert opt.last_skipped and opt.last_events[0].detector == "nonfinite"
    assert _same(before, _params(model))


def test_closure_loss_is_checked_and_the_closure_runs_once_on_a_skip():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1),
                          loss_detector=ThresholdDetector(max_value=1e3), grad_norm_detector=None)
    calls = []

    def closure(scale):
        def run():
            calls.append(scale)
            opt.zero_grad()
            return _backward(model, 0, scale=scale)
        return run
    before = _params(model)
    loss = opt.step(closure(1e6))
    assert opt.last_skipped and opt.last_events[0].metric == "loss" and float(loss.detach()) > 1e3
    assert _same(before, _params(model)) and calls == [1e6]
    opt.step(closure(1.0))
    assert not opt.last_skipped and not _same(before, _params(model)) and calls == [1e6, 1.0]


def _current_format_state(model):
    """A state dict written by hand in the format SkipStepOnSpike has always saved (SGD with momentum)."""
    ps = list(model.parameters())
    return {
        "optimizer": {
            "state": {i: {"momentum_buffer": torch.full_like(p, 0.25)} for i, p in enumerate(ps)},
            "param_groups": [{"lr": 0.03, "momentum": 0.9, "dampening": 0, "weight_decay": 0,
                              "nesterov": False, "maximize": False, "foreach": None,
                              "differentiable": False, "fused": None, "initial_lr": 0.1,
                              "params": list(range(len(ps)))}],
        },
        "detectors": {
            "loss": {"kind": "zscore", "version": 1,
                     "config": {"window": 8, "threshold": 3.0, "min_history": 4, "ddof": 0},
                     "history": [1.0, 1.1, 0.9, 1.0, 1.05], "n_events": 2},
            "loss_nonfinite": {"kind": "nonfinite", "version": 1, "config": {}, "n_events": 0},
            "grad_norm_nonfinite": {"kind": "nonfinite", "version": 1, "config": {}, "n_events": 1},
        },
        "n_steps": 7, "n_skipped": 3, "consecutive_skips": 1,
    }


def test_loads_a_state_dict_in_the_existing_format_and_round_trips_weights_only():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                          loss_detector=ZScoreDetector(window=8, threshold=3.0, min_history=4),
                          grad_norm_detector=None)
    saved = _current_format_state(model)
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    opt.load_state_dict(torch.load(buf, weights_only=True))
    assert (opt.n_steps, opt.n_skipped, opt.consecutive_skips) == (7, 3, 1)
    assert opt.param_groups[0]["lr"] == 0.03 and opt.param_groups[0]["initial_lr"] == 0.1
    p0 = next(model.parameters())
    assert torch.equal(opt.state[p0]["momentum_buffer"], torch.full_like(p0, 0.25))
    assert opt.detectors["loss"].state_dict()["history"] == [1.0, 1.1, 0.9, 1.0, 1.05]
    # what it saves now is the same format, and survives torch.load(weights_only=True)
    out = opt.state_dict()
    assert set(out) == set(saved) and set(out["detectors"]) == set(saved["detectors"])
    assert out["optimizer"]["param_groups"][0]["lr"] == 0.03
    buf = io.BytesIO()
    torch.save(out, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=True)
    assert again["n_skipped"] == 3 and again["detectors"]["loss"]["history"] == [1.0, 1.1, 0.9, 1.0, 1.05]
    # a scheduler resumed on the wrapper finds initial_lr in the shared groups
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** t, last_epoch=3)
    assert sched.base_lrs == [0.1]


def test_plain_optimizer_state_dict_gives_a_helpful_error():
    model = _model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = SkipStepOnSpike(inner)
    with pytest.raises(ConfigError, match=r"opt\.optimizer\.load_state_dict"):
        opt.load_state_dict(inner.state_dict())


def test_state_dict_hooks_registered_on_the_wrapper_run():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    seen = []
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append(sd.get("extra")))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("post"))
    sd = opt.state_dict()
    assert sd["extra"] == 1
    opt.load_state_dict(sd)
    assert seen == [1, "post"]


def test_deepcopy_and_pickle_keep_a_working_independent_wrapper():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1),
                          loss_detector=ThresholdDetector(max_value=1e3))
    torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)  # patches opt.step on the instance
    _backward(model, 0)
    opt.step(loss=1e6)
    for twin in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert isinstance(twin, SkipStepOnSpike) and twin.n_skipped == 1 and len(twin.events) == 1
        assert twin.param_groups is twin.optimizer.param_groups and twin.optimizer is not opt.optimizer
        assert twin.state is twin.optimizer.state
        assert isinstance(twin.detectors["loss_nonfinite"], NonFiniteDetector)
        before = _params(model)
        twin.step(loss=1.0)
        assert not twin.last_skipped and opt.n_steps == 1 and _same(before, _params(model))


def test_lightning_fit_with_wrapper_and_scheduler_skips_the_spike_batch(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(3, 1)
            self.lrs: list[float] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.lrs.append(self.optimizers().param_groups[0]["lr"])  # through LightningOptimizer
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = SkipStepOnSpike(torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9),
                                  loss_detector=ThresholdDetector(max_value=1e4), grad_norm_detector=None)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** t)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class Watch(pl.Callback):
        def __init__(self) -> None:
            self.changed: list[bool] = []
            self.momentum_same: list[bool] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.before = _params(module)
            self.state_before = copy.deepcopy(trainer.optimizers[0].optimizer.state_dict()["state"])

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.changed.append(not _same(self.before, _params(module)))
            after = trainer.optimizers[0].optimizer.state_dict()["state"]
            self.momentum_same.append(after.keys() == self.state_before.keys() and all(
                torch.equal(after[i]["momentum_buffer"], s["momentum_buffer"]) for i, s in self.state_before.items()))

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, generator=g), torch.randn(24, 1, generator=g)
    y[12:16] = 1e6  # batch 3 (batch size 4) has a huge target: a loss spike
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    watch = Watch()
    module = Tiny()
    kw = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path)
    trainer = pl.Trainer(max_steps=6, callbacks=[watch], enable_checkpointing=False, **kw)
    trainer.fit(module, loader)

    opt = trainer.optimizers[0]
    assert isinstance(opt, SkipStepOnSpike)
    assert watch.changed == [True, True, True, False, True, True]
    assert watch.momentum_same[3] and not watch.momentum_same[4]
    assert opt.n_steps == 6 and opt.n_skipped == 1
    assert [(e.step, e.metric) for e in opt.events] == [(4, "loss")]
    assert module.lrs == pytest.approx([0.05 * 0.5 ** t for t in range(6)])
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** 6)

    # a Lightning checkpoint holds the wrapper's state dict and resuming restores it
    ckpt = tmp_path / "skip.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = Tiny()
    trainer2 = pl.Trainer(max_steps=8, enable_checkpointing=False, **kw)
    trainer2.fit(resumed, loader, ckpt_path=ckpt)
    opt2 = trainer2.optimizers[0]
    assert opt2.n_steps == 8 and opt2.n_skipped == 1
    assert opt2.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** 8)
