"""WeightAverage (WAKD's uniform average) against the authors' loop in float64 and torch's AveragedModel."""

from __future__ import annotations

import copy
import doctest
import io
import math
import os
import tempfile

import pytest
import torch
from torch import nn

import losslab.losses as L
import losslab.optim.averaging as averaging_module
from losslab import ConfigError, DataError, NotFittedError
from losslab.optim import WeightAverage


def small_net(dtype=torch.float64, seed=0, bn=True):
    g = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)] if bn else [nn.Linear(3, 2)]
    net = nn.Sequential(*layers).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net


def train_step(net, opt, g):
    """One noisy SGD step on random data (moves parameters and, in train mode, BatchNorm buffers)."""
    x = torch.randn(6, 3, generator=g, dtype=torch.float64).to(next(net.parameters()).dtype)
    loss = (net(x) ** 2).float().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def authors_average(iterates, begin):
    """The authors' loop in float64: copy at ind == begin; afterwards n += 1; avg = avg + (p - avg) / n."""
    avg, n = None, 0
    for ind, params in enumerate(iterates, start=1):
        if ind == begin:
            avg, n = [p.clone() for p in params], 1
        elif ind > begin:
            n += 1
            avg = [a + (p - a) / n for a, p in zip(avg, params)]
    return avg


def test_hand_computed_running_mean():
    w = nn.Linear(2, 1, bias=False).double()
    avg = WeightAverage(w, start=2)
    rows = [[9.0, 9.0], [1.0, 4.0], [3.0, -2.0], [2.0, 7.0], [4.0, 1.0]]
    expected = [None, [1.0, 4.0], [2.0, 1.0], [2.0, 3.0], [2.5, 2.5]]  # means of rows 2..k by hand
    for k, (row, exp) in enumerate(zip(rows, expected), start=1):
        w.weight.data.copy_(torch.tensor([row], dtype=torch.float64))
        assert avg.update(w) is (k >= 2)
        if exp is None:
            assert not avg.started
        else:
            assert avg.averaged_model().weight.detach().tolist() == [exp]
            assert avg.count == k - 1
    every = WeightAverage(w, start=1, every=2)  # steps 1, 3, 5: rows 0, 2, 4
    for row in rows:
        w.weight.data.copy_(torch.tensor([row], dtype=torch.float64))
        every.update(w)
    assert every.count == 3 and every.averaged_model().weight.detach().tolist() == [[16 / 3, 8 / 3]]


@pytest.mark.parametrize("begin", [1, 4, 9])
def test_matches_the_authors_loop_bit_for_bit_in_float64(begin):
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(1)
    avg = WeightAverage(net, start=begin)
    iterates = []
    for _ in range(12):
        train_step(net, opt, g)
        avg.update(net)
        iterates.append([p.detach().clone() for p in net.parameters()])
    ref = authors_average(iterates, begin)
    for ours, theirs in zip(avg.averaged_model().parameters(), ref):
        assert torch.equal(ours, theirs)
    assert avg.count == 12 - begin + 1


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch_averaged_model(every, dtype):
    net = small_net(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(2)
    ours = WeightAverage(net, start=4, every=every, copy_buffers=True)
    peer = torch.optim.swa_utils.AveragedModel(net)  # default: equal-weight SWA average, buffers copied
    for step in range(1, 20):
        train_step(net, opt, g)  # BatchNorm in train mode: its running statistics move
        ours.update(net)
        if step >= 4 and (step - 4) % every == 0:
            peer.update_parameters(net)
    assert ours.count == int(peer.n_averaged)
    tol = 1e-13 if dtype == torch.float64 else 1e-6  # torch uses lerp; the authors' formula rounds differently
    mine = ours.averaged_model()
    for a, b in zip(mine.parameters(), peer.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)
    for a, b in zip(mine.buffers(), peer.module.buffers()):
        assert torch.equal(a, b)


def test_buffers_are_those_of_the_begin_step_by_default():
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(3)
    frozen, live = WeightAverage(net, start=3), WeightAverage(net, start=3, copy_buffers=True)
    for step in range(1, 8):
        train_step(net, opt, g)
        frozen.update(net)
        live.update(net)
        if step == 3:
            at_begin = [b.clone() for b in net.buffers()]
    assert not torch.equal(net[1].running_mean, at_begin[0])  # the statistics did move
    for b, ref in zip(frozen.averaged_model().buffers(), at_begin):
        assert torch.equal(b, ref)
    for b, ref in zip(live.averaged_model().buffers(), net.buffers()):
        assert torch.equal(b, ref)


@pytest.mark.parametrize(("start", "total", "begin"), [(0.1, 50, 5), (0.25, 10, 3), (0.0, 7, 1), (1.0, 7, 7),
                                                       (0.1, 50000, 5000), (6, None, 6)])
def test_begin_as_a_fraction_of_total_steps(start, total, begin):
    w = nn.Linear(1, 1, bias=False).double()
    avg = WeightAverage(w, start=start, total_steps=total)
    assert avg.begin == begin
    if total is not None and total <= 50:
        values = [float(v * v) for v in range(1, total + 1)]
        for v in values:
            w.weight.data.fill_(v)
            avg.update(w)
        assert avg.averaged_model().weight.item() == pytest.approx(sum(values[begin - 1:]) / (total - begin + 1),
                                                                   rel=1e-14)


def test_update_before_begin_only_counts():
    net = small_net()
    before = copy.deepcopy(net.state_dict())
    avg = WeightAverage(net, start=5)
    for k in range(1, 5):
        assert avg.update(net) is False
        assert avg.step == k and avg.count == 0 and not avg.started
    state = avg.state_dict()
    assert state["average"] is None and state["buffers"] is None
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(NotFittedError, match="begins at step 5"):
        avg.averaged_model()
    with pytest.raises(NotFittedError):
        avg.record_validation(0.5)
    assert avg.update(net) is True and avg.started and avg.count == 1


def run(net, avg, steps, g, opt, scores):
    for _ in range(steps):
        train_step(net, opt, g)
        avg.update(net)
        if avg.started and avg.step % 3 == 0:
            avg.record_validation(scores[avg.step])


@pytest.mark.parametrize("split", [2, 7, 11])  # before the begin step, just after it, later
def test_state_dict_round_trip_continues_bit_identically(split):
    scores = {k: math.sin(k) for k in range(40)}
    g_a = torch.Generator().manual_seed(5)
    net_a = small_net(torch.float32)
    opt_a = torch.optim.SGD(net_a.parameters(), lr=0.2, momentum=0.9)
    avg_a = WeightAverage(net_a, start=6, every=2)
    run(net_a, avg_a, 20, g_a, opt_a, scores)

    g_b = torch.Generator().manual_seed(5)
    net_b = small_net(torch.float32)
    opt_b = torch.optim.SGD(net_b.parameters(), lr=0.2, momentum=0.9)
    avg_b = WeightAverage(net_b, start=6, every=2)
    run(net_b, avg_b, split, g_b, opt_b, scores)
    buf = io.BytesIO()
    torch.save({"net": net_b.state_dict(), "opt": opt_b.state_dict(), "avg": avg_b.state_dict(),
                "rng": g_b.get_state()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    net_c = small_net(torch.float32, seed=9)
    net_c.load_state_dict(ckpt["net"])
    opt_c = torch.optim.SGD(net_c.parameters(), lr=0.2, momentum=0.9)
    opt_c.load_state_dict(ckpt["opt"])
    avg_c = WeightAverage(net_c, start=1)  # the checkpoint's begin and every replace these
    avg_c.load_state_dict(ckpt["avg"])
    g_c = torch.Generator().set_state(ckpt["rng"])
    run(net_c, avg_c, 20 - split, g_c, opt_c, scores)

    assert (avg_c.begin, avg_c.every, avg_c.step, avg_c.count) == (avg_a.begin, avg_a.every, avg_a.step, avg_a.count)
    assert avg_c.best_score == avg_a.best_score and avg_c.best_step == avg_a.best_step
    for best in (False, True):
        for x, y in zip(avg_a.averaged_model(best=best).state_dict().values(),
                        avg_c.averaged_model(best=best).state_dict().values()):
            assert torch.equal(x, y)
    sa, sc = avg_a.state_dict(), avg_c.state_dict()
    for name in sa["average"]:
        assert torch.equal(sa["average"][name], sc["average"][name])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_average_in_float32(dtype):
    w = nn.Linear(64, 1, bias=False).to(dtype)
    g = torch.Generator().manual_seed(6)
    avg = WeightAverage(w, start=1)
    avg64 = WeightAverage(w, start=1, dtype=torch.float64)
    iterates = []
    for _ in range(200):
        w.weight.data.copy_(1.0 + 0.01 * torch.randn(1, 64, generator=g))
        iterates.append(w.weight.detach().double())
        avg.update(w)
        avg64.update(w)
    exact = torch.stack(iterates).mean(0)
    acc = avg.state_dict()["average"]["weight"]
    assert acc.dtype == torch.float32 and avg64.state_dict()["average"]["weight"].dtype == torch.float64
    assert (acc.double() - exact).abs().max() < 1e-6  # a 16-bit accumulator would be off by ~1e-3
    out = avg.averaged_model().weight
    assert out.dtype == dtype and torch.equal(out, acc.to(dtype))
    naive = iterates[0].to(dtype)
    for n, it in enumerate(iterates[1:], start=2):
        naive = naive + (it.to(dtype) - naive) / n
    assert (naive.double() - exact).abs().max() > 10 * (acc.double() - exact).abs().max()


class PlainWrapper:
    """A non-Module object holding the network in ``.module`` (as DDP-style engines do)."""

    def __init__(self, module):
        self.module = module


def test_wrapped_models_are_looked_through():
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(7)
    plain, wrapped = WeightAverage(net, start=2), WeightAverage(PlainWrapper(net), start=2)
    for _ in range(6):
        train_step(net, opt, g)
        plain.update(net)
        wrapped.update(PlainWrapper(net))
    assert list(wrapped.state_dict()["average"]) == [n for n, _ in net.named_parameters()]
    for a, b in zip(plain.averaged_model().parameters(), wrapped.averaged_model().parameters()):
        assert torch.equal(a, b)
    with wrapped.apply_to(PlainWrapper(net)) as inner:
        assert inner is net


def test_ddp_wrapped_model_in_one_process():
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised in this process")
    fd, path = tempfile.mkstemp()
    os.close(fd)
    os.remove(path)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    try:
        net = small_net(bn=False)
        ddp = nn.parallel.DistributedDataParallel(net)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.3)
        g = torch.Generator().manual_seed(8)
        avg, ref = WeightAverage(ddp, start=2), WeightAverage(copy.deepcopy(net), start=2)
        for _ in range(5):
            train_step(ddp, opt, g)
            avg.update(ddp)
            ref.update(copy.deepcopy(net))
        assert list(avg.state_dict()["average"]) == ["0.weight", "0.bias"]
        for a, b in zip(avg.averaged_model().parameters(), ref.averaged_model().parameters()):
            assert torch.equal(a, b)
    finally:
        dist.destroy_process_group()


def test_apply_to_restores_exactly_and_copy_to_writes():
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(10)
    avg = WeightAverage(net, start=2)
    for _ in range(6):
        train_step(net, opt, g)
        avg.update(net)
    live = copy.deepcopy(net.state_dict())
    target = avg.averaged_model().state_dict()
    with avg.apply_to(net) as inside:
        for k, v in inside.state_dict().items():
            assert torch.equal(v, target[k])
    for k, v in net.state_dict().items():
        assert torch.equal(v, live[k])
    with pytest.raises(RuntimeError, match="boom"), avg.apply_to(net):
        raise RuntimeError("boom")
    for k, v in net.state_dict().items():
        assert torch.equal(v, live[k])
    avg.copy_to(net)
    for k, v in net.state_dict().items():
        assert torch.equal(v, target[k])


@pytest.mark.parametrize("higher", [True, False])
def test_eoa_snapshot_keeps_the_best_score(higher):
    w = nn.Linear(1, 1, bias=False).double()
    avg = WeightAverage(w, start=1)
    scores = [0.5, 0.7, 0.6, 0.7, 0.65] if higher else [0.5, 0.3, 0.4, 0.3, 0.35]
    averages = []
    for k, s in enumerate(scores, start=1):
        w.weight.data.fill_(float(k * k))
        avg.update(w)
        averages.append(avg.averaged_model().weight.item())
        assert avg.record_validation(s, higher_is_better=higher) is (k in (1, 2))
    assert avg.best_step == 2 and avg.best_score == scores[1]  # the tie at step 4 keeps the earlier one
    assert avg.averaged_model(best=True).weight.item() == averages[1] == 2.5
    assert avg.averaged_model().weight.item() == averages[-1]
    with avg.apply_to(w, best=True):
        assert w.weight.item() == 2.5
    assert w.weight.item() == 25.0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"start": -1}, "start >= 1"), ({"start": 0}, "start >= 1"), ({"start": float("nan"), "total_steps": 9}, "fraction"),
    ({"start": -0.1, "total_steps": 9}, "fraction"), ({"start": 1.5, "total_steps": 9}, "pass an int"),
    ({"start": float("inf")}, "fraction"), ({"start": "0.1"}, "int step"), ({"start": True}, "int step"),
    ({"start": 0.1}, "total_steps"), ({"start": 20, "total_steps": 10}, "never"),
    ({"start": 1, "every": 0}, "every"), ({"start": 1, "every": 1.5}, "every"),
    ({"start": 1, "total_steps": 0}, "total_steps"), ({"start": 1, "copy_buffers": "yes"}, "copy_buffers"),
    ({"start": 1, "dtype": torch.float16}, "dtype"), ({"start": 1, "device": "nowhere"}, "device")])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        WeightAverage(small_net(), **kwargs)


def test_bad_models_raise():
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        WeightAverage(object(), start=1)
    with pytest.raises(ConfigError, match="no parameters"):
        WeightAverage(nn.ReLU(), start=1)


def test_bad_updates_raise_and_change_nothing():
    net = small_net()
    avg = WeightAverage(net, start=1)
    avg.update(net)
    before = avg.state_dict()
    for other in (small_net(bn=False), nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))):
        with pytest.raises(DataError, match="differ"):
            avg.update(other.double())
    bad = copy.deepcopy(net)
    bad[0].weight.data[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        avg.update(bad)
    after = avg.state_dict()
    assert (after["step"], after["count"]) == (before["step"], before["count"]) == (1, 1)
    for k in before["average"]:
        assert torch.equal(after["average"][k], before["average"][k])
    with pytest.raises(DataError, match="differ"):
        avg.copy_to(small_net(bn=False))
    for score in (float("nan"), float("inf"), "0.5", torch.tensor(0.5), None):
        with pytest.raises(DataError, match="score"):
            avg.record_validation(score)
    with pytest.raises(NotFittedError, match="record_validation"):
        avg.averaged_model(best=True)
    avg.record_validation(1.0)
    with pytest.raises(ConfigError, match="higher_is_better"):
        avg.record_validation(0.5, higher_is_better=False)
    assert avg.best_score == 1.0


def test_bad_checkpoints_raise_and_change_nothing():
    net = small_net()
    avg = WeightAverage(net, start=1)
    avg.update(net)
    good = avg.state_dict()
    other = WeightAverage(small_net(bn=False), start=1)
    other.update(small_net(bn=False))
    wrong_shape = copy.deepcopy(good)
    wrong_shape["average"]["0.weight"] = torch.zeros(2, 2, dtype=torch.float64)
    bad_counts = dict(good, count=3)
    int_average = copy.deepcopy(good)
    int_average["average"]["0.bias"] = torch.zeros(4, dtype=torch.int64)
    target = WeightAverage(net, start=2)
    for bad, match in [({"step": 1}, "keys"), (other.state_dict(), "another network"), (wrong_shape, "shape"),
                       (bad_counts, "inconsistent"), (dict(good, begin=0), "begin"), (int_average, "floating"),
                       (dict(good, best={"score": 1.0}), "best"), ([1, 2], "keys")]:
        with pytest.raises(DataError, match=match):
            target.load_state_dict(bad)
        assert (target.begin, target.step, target.count, target.started) == (2, 0, 0, False)


def kd_run(seed, steps=300, lr=1.0, temperature=4.0):
    """A fixed teacher MLP, a linear student distilled with SGD under a noisy learning rate, batch 8."""
    g = torch.Generator().manual_seed(seed)
    teacher, student = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 10)), nn.Linear(20, 10)
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        for p in student.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    opt = torch.optim.SGD(student.parameters(), lr=lr)
    avg = WeightAverage(student, start=0.1, total_steps=steps)  # the authors' 10 %
    for _ in range(steps):
        x = torch.randn(8, 20, generator=g)
        opt.param_groups[0]["lr"] = lr * float(torch.empty(()).uniform_(0.0, 2.0, generator=g))
        loss = L.kd(student(x), teacher(x).detach(), temperature=temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        avg.update(student)
    out = {}
    with torch.no_grad():
        averaged = avg.averaged_model()
        for name, shift in (("iid", 0.0), ("shifted", 1.0)):  # held-out inputs; "shifted": mean moved by 1
            x = torch.randn(2000, 20, generator=g) + shift
            t = teacher(x)
            out[name] = (float(L.kd(student(x), t, temperature=temperature)),
                         float(L.kd(averaged(x), t, temperature=temperature)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kd_with_averaging_beats_the_last_iterate_on_held_out_data(seed):
    result = kd_run(seed)
    last, averaged = result["iid"]
    assert averaged < 0.9 * last
    last, averaged = result["shifted"]
    assert averaged < last


def test_docstring_example_runs():
    result = doctest.testmod(averaging_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_finite_parameters_whose_sum_overflows_are_averaged():
    # the NaN/Inf check sums each tensor first: 3e38 + 3e38 overflows float32 although both entries are finite
    net = nn.Linear(2, 1, bias=False)
    avg = WeightAverage(net, start=1)
    with torch.no_grad():
        net.weight.fill_(3e38)
    assert avg.update(net)
    with torch.no_grad():
        net.weight.fill_(1e38)
        net.weight[0, 1] = float("inf")
    with pytest.raises(DataError, match="NaN/Inf"):
        avg.update(net)
    assert avg.count == 1 and torch.equal(avg.averaged_model().weight.detach(), torch.full((1, 2), 3e38))


def test_state_dicts_do_not_alias_the_running_average():
    """A saved state_dict stays as saved while training goes on, and a loaded one is copied, not adopted."""
    net = small_net(torch.float64, bn=True)
    net.train()
    g = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    avg = WeightAverage(net, start=1, copy_buffers=True)
    for _ in range(2):
        train_step(net, opt, g)
        avg.update(net)
    state = avg.state_dict()
    frozen = copy.deepcopy(state)

    def unchanged():
        for part in ("average", "buffers"):
            for name, t in state[part].items():
                assert torch.equal(t, frozen[part][name]), (part, name)

    train_step(net, opt, g)
    avg.update(net)  # changes the live average and buffers in place
    unchanged()
    other = WeightAverage(net, start=1, copy_buffers=True)
    other.load_state_dict(state)
    train_step(net, opt, g)
    other.update(net)
    unchanged()
