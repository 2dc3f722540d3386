"""losslab.forecast.io: CSV / JSONL / TensorBoard curves, lr reconstruction rules, schedules, prediction CSV."""

from __future__ import annotations

import importlib.util
import json
import math
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab._errors import ConfigError, DataError
from losslab.forecast.io import load_curve, load_schedule, write_prediction_csv
from losslab.schedules import parse_schedule
from tests.conftest import REPO


def _csv(tmp_path: Path, text: str, name: str = "run.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------------------------- CSV
def test_csv_every_step_round_trip(tmp_path):
    p = _csv(tmp_path, "step,lr,loss\n1,0.1,3.0\n2,0.1,\n3,0.05,2.5\n4,0.025,nan\n")
    c = load_curve(p)
    assert c.name == "run"
    assert c.lr.tolist() == [0.1, 0.1, 0.05, 0.025]
    assert c.measured.tolist() == [1, 3]
    assert c.loss[0] == 3.0 and c.loss[2] == 2.5
    assert c.meta["format"] == "csv" and c.meta["rows"] == 4 and "lr_fill" not in c.meta


def test_csv_header_case_extra_columns_and_other_names(tmp_path):
    p = _csv(tmp_path, "Step, LR ,train_loss,val_loss\n1,1e-3,4.0,5.0\n2,1e-3,3.5,\n")
    c = load_curve(p, loss_tag="val_loss")
    assert c.measured.tolist() == [1] and c.loss[0] == 5.0
    c = load_curve(p, loss_tag="train_loss")
    assert c.loss.tolist() == [4.0, 3.5]


def test_zero_based_steps_are_shifted(tmp_path):
    c = load_curve(_csv(tmp_path, "step,lr,loss\n0,0.1,3\n1,0.1,2\n2,0.2,1\n"))
    assert c.lr.tolist() == [0.1, 0.1, 0.2] and c.loss.tolist() == [3, 2, 1]
    assert c.meta["zero_based"] is True


def test_warmup_rebuild_by_hand(tmp_path):
    # warmup of 3 steps, file starts at step 4: steps 1..3 get peak * k / 3
    c = load_curve(_csv(tmp_path, "step,lr,loss\n4,0.6,2.0\n5,0.6,1.9\n"), warmup_steps=3)
    np.testing.assert_allclose(c.lr, [0.2, 0.4, 0.6, 0.6, 0.6], rtol=0, atol=1e-15)
    assert np.isnan(c.loss[:3]).all() and c.loss[3] == 2.0
    assert c.meta["warmup_rebuilt"] == {"steps": 3, "peak": 0.6}


def test_warmup_file_starting_at_the_last_warmup_step(tmp_path):
    c = load_curve(_csv(tmp_path, "step,lr,loss\n2,0.5,2.0\n3,0.25,1.9\n"), warmup_steps=2)
    np.testing.assert_allclose(c.lr, [0.25, 0.5, 0.25])


def test_warmup_plus_linear_fill_by_hand(tmp_path):
    # warmup 2 (peak 1.0), rows at 4 (lr 1.0) and 8 (lr 0.2): steps 3 and 5..7 are interpolated
    c = load_curve(_csv(tmp_path, "step,lr,loss\n4,1.0,3\n8,0.2,2\n"), warmup_steps=2, lr_fill="linear")
    np.testing.assert_allclose(c.lr, [0.5, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2], atol=1e-15)
    assert c.meta["lr_fill"] == {"method": "linear", "filled_steps": 4}


def test_linear_fill_is_exact_on_linear_and_bounded_on_cosine(tmp_path):
    steps, gap = 2000, 50
    for spec, bound in [("linear:peak=1e-3,steps=2000", 1e-15),
                        # interpolation error <= gap^2 * max|lr''| / 8, with max|lr''| = peak * (pi/T)^2 / 2
                        ("cosine:peak=1e-3,steps=2000", gap**2 * 1e-3 * (math.pi / steps) ** 2 / 2 / 8)]:
        exact = parse_schedule(spec).lr(steps)
        rows = [1, *range(gap, steps + 1, gap)]
        text = "step,lr,loss\n" + "".join(f"{s},{float(exact[s - 1])!r},2.0\n" for s in rows)
        c = load_curve(_csv(tmp_path, text), lr_fill="linear")
        err = np.abs(c.lr - exact).max()
        assert err <= bound * 1.0001 + 1e-18, (spec, err, bound)
    assert err > bound / 10  # the cosine case really interpolates (the bound is close to tight)


def test_sparse_rows_with_schedule_spec(tmp_path):
    spec = "cosine:peak=1e-3,steps=100,final=0.1,warmup=10"
    exact = parse_schedule(spec).lr(100)
    text = "step,lr,loss\n" + "".join(f"{s},{float(exact[s - 1])!r},{3 - s / 100}\n" for s in range(10, 101, 10))
    c = load_curve(_csv(tmp_path, text), schedule=spec)
    np.testing.assert_array_equal(c.lr, exact)
    assert c.measured.tolist() == list(range(10, 101, 10))
    assert c.meta["lr_checked_rows"] == 10
    # without an lr column the spec gives every step's lr
    c = load_curve(_csv(tmp_path, "step,loss\n50,2.0\n100,1.8\n", "nolr.csv"), schedule=parse_schedule(spec))
    np.testing.assert_array_equal(c.lr, exact)


def test_schedule_spec_that_does_not_match_the_logged_lr(tmp_path):
    p = _csv(tmp_path, "step,lr,loss\n1,1e-3,3\n2,1e-3,2\n3,5e-4,1\n")
    with pytest.raises(DataError, match=r"run.csv: line 4: .*0.0005 at step 3 differs from 0.001.*fix the spec"):
        load_curve(p, schedule="constant:peak=1e-3")


# ------------------------------------------------------------------------------------------------------ bad inputs
BAD_CSV = [
    ("", "", r"the file is empty; expected a header"),
    ("step,lr,loss\n", "", r"header but no rows"),
    ("step,loss\n1,2.0\n", "line 1", r"no column 'lr'.*--lr-tag"),
    ("step,lr\n1,0.1\n", "line 1", r"no column 'loss'.*--loss-tag"),
    ("lr,loss\n0.1,2\n", "line 1", r"no column 'step'"),
    ("step,lr,loss\n1,0.1,2.0\n2,0.1,abc\n", "line 3", r"loss 'abc' is not a number"),
    ("step,lr,loss\n1,0.1,2.0\n2,fast,2.0\n", "line 3", r"learning rate 'fast' is not a number"),
    ("step,lr,loss\n1,0.1,2.0\n2.5,0.1,2.0\n", "line 3", r"not a whole number"),
    ("step,lr,loss\n1,0.1,2.0\n,0.1,2.0\n", "line 3", r"step is blank"),
    ("step,lr,loss\n1,0.1,2.0\n1,0.1,2.0\n", "line 3", r"step repeats 1 after step 1 \(line 2\).*remove duplicated"),
    ("step,lr,loss\n1,0.1,2.0\n2,0.1,2.0\n1,0.1,2.0\n", "line 4", r"goes back to 1 after step 2"),
    ("step,lr,loss\n1,0.1,2.0\n2,nan,2.0\n", "line 3", r"learning rate is 'nan'; it must be a finite"),
    ("step,lr,loss\n1,0.1,2.0\n2,-0.1,2.0\n", "line 3", r"'-0.1' is negative"),
    ("step,lr,loss\n1,0.1,2.0\n2,0.1,inf\n", "line 3", r"loss is infinite"),
    ("step,lr,loss\n1,0.1,2.0\n2,0.1,-1\n", "line 3", r"<= 0; the laws model log\(loss\)"),
    ("step,lr,loss\n1,0.1,2.0\n2,0.1\n", "line 3", r"2 fields but the header has 3"),
    ("step,lr,loss\n1,0.1,2.0\n-2,0.1,1.0\n", "line 3", r"step -2 is negative"),
    ("step,lr,loss\n1,0.1,2.0\n2,,2.0\n3,0.1,1.0\n", "line 3", r"step 2 is unknown \(line 3 has a blank lea.*--lr-fill linear"),
    ("step,lr,loss\n1,0.1,2.0\n5,0.1,1.0\n", "", r"step 2 is unknown \(steps jump from 1 \(line 2\) to 5 \(line 3\)\).*--schedule"),
    ("step,lr,loss\n3,0.1,2.0\n4,0.1,1.0\n", "line 2", r"starts at step 3.*steps 1..2 is unknown.*--warmup-steps N"),
    ("step,lr,loss\n1,0.1,\n2,0.1,\n", "", r"no row has a loss value"),
]


@pytest.mark.parametrize(("text", "where", "message"), BAD_CSV, ids=[m[:24] for _, _, m in BAD_CSV])
def test_bad_csv_raises_one_clear_error(tmp_path, text, where, message):
    p = _csv(tmp_path, text, "bad.csv")
    with pytest.raises(DataError) as info:
        load_curve(p)
    msg = str(info.value)
    assert str(p) in msg and "\n" not in msg
    assert where in msg
    assert __import__("re").search(message, msg), msg
    assert p.read_text() == text  # the input is left untouched


def test_warmup_errors(tmp_path):
    p = _csv(tmp_path, "step,lr,loss\n5,0.1,2\n6,0.1,1\n")
    with pytest.raises(DataError, match=r"line 2: the file starts at step 5, inside the warmup of 10 steps"):
        load_curve(p, warmup_steps=10)
    p = _csv(tmp_path, "step,lr,loss\n5,,2\n6,0.1,1\n", "nolr.csv")
    with pytest.raises(DataError, match=r"first row has no learning rate"):
        load_curve(p, warmup_steps=4, lr_fill="linear")
    p = _csv(tmp_path, "step,lr,loss\n5,0.1,2\n9,,1\n", "nolast.csv")
    with pytest.raises(DataError, match=r"last row has no learning rate"):
        load_curve(p, warmup_steps=4, lr_fill="linear")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lr_fill": "previous"}, r"lr_fill must be one of none, linear"),
    ({"warmup_steps": 0}, r"warmup_steps must be a positive integer"),
    ({"warmup_steps": 2.5}, r"warmup_steps must be a positive integer"),
    ({"schedule": "constant:peak=0.1", "warmup_steps": 3}, r"put the warmup inside the spec"),
    ({"schedule": "cosine:peak=0.1"}, r"needs steps="),
    ({"schedule": "cosin:peak=0.1,steps=3"}, r"unknown schedule kind 'cosin'"),
])
def test_bad_options_raise_config_error(tmp_path, kwargs, message):
    p = _csv(tmp_path, "step,lr,loss\n1,0.1,2\n2,0.1,1\n")
    with pytest.raises(ConfigError, match=message):
        load_curve(p, **kwargs)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match=r"nope.csv: no such file or directory"):
        load_curve(tmp_path / "nope.csv")
    p = _csv(tmp_path, "step,lr,loss\n1,0.1,2\n", "run.parquet")
    with pytest.raises(DataError, match=r"unknown file type '.parquet'; use .csv"):
        load_curve(p)


# ----------------------------------------------------------------------------------------------------------- JSONL
def test_jsonl_matches_csv(tmp_path):
    rows = [{"step": 1, "lr": 0.1, "loss": 3.0}, {"step": 2, "lr": 0.1, "loss": None},
            {"step": 3, "lr": 0.05}, {"step": 4, "lr": 0.05, "loss": 2.0, "grad_norm": 1.0}]
    p = tmp_path / "run.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    c = load_curve(p)
    ref = load_curve(_csv(tmp_path, "step,lr,loss\n1,0.1,3.0\n2,0.1,\n3,0.05,\n4,0.05,2.0\n"))
    np.testing.assert_array_equal(c.lr, ref.lr)
    np.testing.assert_array_equal(c.loss, ref.loss)
    assert c.meta["format"] == "jsonl"


@pytest.mark.parametrize(("text", "message"), [
    ('{"step": 1, "lr": 0.1, "loss": 2}\n{"step": 2, "lr": 0.1, "loss": 2\n', r"line 2: not valid JSON"),
    ('{"step": 1, "lr": 0.1, "loss": 2}\n[1, 0.1, 2]\n', r"line 2: expected an object with a 'step' key"),
    ('{"step": 1, "lr": "0.1x", "loss": 2}\n', r"line 1: the learning rate '0.1x' is not a number"),
    ('{"step": 1, "lr": NaN, "loss": 2}\n', r"line 1: the learning rate is nan"),
    ('{"step": 1, "lr": true, "loss": 2}\n', r"line 1: the learning rate True is not a number"),
    ('{"step": 1, "loss": 2}\n', r"no line has the key 'lr'"),
    ("\n\n", r"the file is empty"),
])
def test_bad_jsonl(tmp_path, text, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(text)
    with pytest.raises(DataError, match=message):
        load_curve(p)


# ----------------------------------------------------------------------------------------------------- TensorBoard
@pytest.fixture
def tb_run(tmp_path):
    """A real event file written by torch's SummaryWriter: lr every step 0..9, loss every other step."""
    torch_tb = pytest.importorskip("torch.utils.tensorboard")
    logdir = tmp_path / "tb"
    writer = torch_tb.SummaryWriter(str(logdir))
    for step in range(10):
        writer.add_scalar("lr", 0.01 * (10 - step), step)
        if step % 2 == 0:
            writer.add_scalar("train/loss", 3.0 - 0.1 * step, step)
    writer.close()
    return logdir


def test_tensorboard_dir_and_file(tb_run):
    c = load_curve(tb_run, loss_tag="train/loss")
    assert c.meta["format"] == "tensorboard" and c.meta["zero_based"] is True
    np.testing.assert_allclose(c.lr, 0.01 * (10 - np.arange(10)), rtol=1e-6)  # float32 in the event file
    assert c.measured.tolist() == [1, 3, 5, 7, 9]
    np.testing.assert_allclose(c.loss[c.measured - 1], 3.0 - 0.1 * np.arange(0, 10, 2), rtol=1e-6)
    (event_file,) = tb_run.glob("events.out.tfevents.*")
    c2 = load_curve(event_file, loss_tag="train/loss", lr_tag="lr")
    np.testing.assert_array_equal(c2.loss, c.loss)


def test_tensorboard_missing_tag_lists_the_available_ones(tb_run):
    with pytest.raises(DataError, match=r"no scalar tag 'loss'; choose the loss tag with --loss-tag.*: lr, train/loss"):
        load_curve(tb_run)


def test_tensorboard_missing_gives_an_install_hint(tb_run, monkeypatch):
    import sys

    from losslab._errors import OptionalDependencyError

    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing.event_accumulator", None)
    with pytest.raises(OptionalDependencyError, match=r"pip install 'losslab\[tensorboard\]'"):
        load_curve(tb_run, loss_tag="train/loss")


# ------------------------------------------------------------------------------------------------------- schedules
def test_load_schedule_from_spec_and_file(tmp_path):
    spec = "wsd:peak=3e-4,steps=50,decay=0.2,cooldown=sqrt,warmup=5"
    ref = parse_schedule(spec).lr(50)
    np.testing.assert_array_equal(load_schedule(spec), ref)
    np.testing.assert_array_equal(load_schedule(spec, steps=60), parse_schedule(spec).lr(60))
    p = _csv(tmp_path, "step,lr\n" + "".join(f"{i},{float(v)!r}\n" for i, v in enumerate(ref, start=1)), "sched.csv")
    np.testing.assert_array_equal(load_schedule(p), ref)
    np.testing.assert_array_equal(load_schedule(str(p), steps=50), ref)
    assert load_schedule("linear:peak=1.0,steps=4").tolist() == [0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize(("arg", "kwargs", "error", "message"), [
    ("missing.csv", {}, DataError, r"missing.csv: no such file"),
    ("cosine:peak=1e-3", {}, ConfigError, r"needs steps="),
    ("constant:peak=1e-3", {}, ConfigError, r"has no length; add steps=N"),
    ("cosine:peak=1e-3,steps=10,decay=0.2", {}, ConfigError, r"has no parameter 'decay'"),
    ("banana", {}, ConfigError, r"unknown schedule kind 'banana'"),
    ("cosine:peak=1e-3,steps=10", {"steps": 0}, ConfigError, r"steps must be a positive integer"),
])
def test_load_schedule_errors(arg, kwargs, error, message):
    with pytest.raises(error, match=message):
        load_schedule(arg, **kwargs)


def test_schedule_file_with_wrong_length(tmp_path):
    p = _csv(tmp_path, "step,lr\n1,0.1\n2,0.1\n", "s.csv")
    with pytest.raises(ConfigError, match=r"has 2 steps but steps=3"):
        load_schedule(p, steps=3)


# ----------------------------------------------------------------------------------------------- prediction output
def test_write_prediction_csv_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    loss = 2 + rng.random(7)
    out = write_prediction_csv(tmp_path / "p.csv", loss, loss - 0.1, loss + 0.1)
    lines = out.read_text().splitlines()
    assert lines[0] == "step,loss,lower,upper" and len(lines) == 8
    data = np.loadtxt(out, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(data[:, 0], np.arange(1, 8))
    np.testing.assert_allclose(data[:, 1], loss, rtol=1e-9)
    np.testing.assert_allclose(data[:, 3] - data[:, 2], 0.2, rtol=1e-8)


@pytest.mark.parametrize(("arrays", "message"), [
    ((np.ones(3), np.ones(2), np.ones(3)), r"same length"),
    ((np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2))), r"1-D arrays"),
    ((np.array([1.0, np.nan]), np.ones(2), np.ones(2)), r"NaN or Inf"),
])
def test_write_prediction_csv_rejects_bad_arrays(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        write_prediction_csv(tmp_path / "p.csv", *arrays)
    assert not (tmp_path / "p.csv").exists()


# ---------------------------------------------------------------------------------------------------- bundled data
def _demo_specs() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("make_demo_curves", REPO / "examples" / "make_demo_curves.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.schedules(4000)


def test_bundled_demo_curves_load_and_match_their_schedules():
    pytest.importorskip("torch")  # the generator script imports torch
    folder = files("losslab") / "data" / "demo"
    specs = _demo_specs()
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".csv")) == sorted(f"{n}.csv" for n in specs)
    for name, spec in specs.items():
        path = Path(str(folder / f"{name}.csv"))
        assert path.stat().st_size < 150_000
        c = load_curve(path)
        assert len(c) == 4000 and c.measured.size >= 150
        load_curve(path, schedule=spec)  # the logged lr is the schedule's (checked to 1e-3)


# ------------------------------------------------------------------------------------------------------- real data
def test_multipowerlaw_files_warmup_and_fill_agree_with_the_spec(shared_data):
    path = shared_data / "multipowerlaw" / "csv_25" / "cosine_24000.csv"
    filled = load_curve(path, warmup_steps=2160, lr_fill="linear")
    exact = load_curve(path, schedule="cosine:peak=3e-4,steps=24000,final=0.1,warmup=2160")
    assert len(filled) == len(exact) == 23920
    assert np.abs(filled.lr - exact.lr).max() < 1e-4 * 3e-4
    np.testing.assert_array_equal(filled.loss, exact.loss)
    with pytest.raises(DataError, match=r"steps jump from 2160 \(line 2\) to 2288 \(line 3\)"):
        load_curve(path, warmup_steps=2160)
    # a step drop (wsdcon: 3e-4 -> 9e-5 at step 8000) needs the spec; linear fill smears it over one gap
    wsdcon = shared_data / "multipowerlaw" / "csv_25" / "wsdcon_9.csv"
    exact = load_curve(wsdcon, schedule="step:peak=3e-4,steps=16000,at=0.5,factor=0.3,warmup=2160")
    assert exact.lr[7998] == 3e-4 and exact.lr[7999] == pytest.approx(9e-5)
    filled = load_curve(wsdcon, warmup_steps=2160, lr_fill="linear")
    assert np.abs(filled.lr - exact.lr).max() > 1e-4


# ------------------------------------------------------------------------------------------------------ properties
_values = st.floats(min_value=1e-8, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.floats(min_value=0, max_value=10, allow_nan=False), st.none() | _values),
                     min_size=1, max_size=30).filter(lambda r: any(loss is not None for _, loss in r)),
       fmt=st.sampled_from(["csv", "jsonl"]))
def test_round_trip_is_exact(tmp_path_factory, rows, fmt):
    path = tmp_path_factory.mktemp("rt") / f"run.{fmt}"
    if fmt == "csv":
        path.write_text("step,lr,loss\n" + "".join(
            f"{i},{lr!r},{'' if loss is None else repr(loss)}\n" for i, (lr, loss) in enumerate(rows, start=1)))
    else:
        path.write_text("".join(json.dumps({"step": i, "lr": lr, "loss": loss}) + "\n"
                                for i, (lr, loss) in enumerate(rows, start=1)))
    c = load_curve(path)
    assert c.lr.tolist() == [lr for lr, _ in rows]
    assert [None if math.isnan(v) else v for v in c.loss.tolist()] == [loss for _, loss in rows]


def test_messages_of_a_zero_based_file_use_the_files_step_numbers(tmp_path):
    p = _csv(tmp_path, "step,lr,loss\n0,0.1,3\n1,0.1,2\n3,0.1,1\n")
    with pytest.raises(DataError, match=r"learning rate of step 2 is unknown \(steps jump from 1 \(line 3\) to 3 "):
        load_curve(p)
    c = load_curve(p, lr_fill="linear")  # filled: the file's step 3 is curve step 4
    assert c.measured.tolist() == [1, 2, 4] and c.meta["lr_fill"]["filled_steps"] == 1
    with pytest.raises(DataError, match=r"line 4: .* at step 3 \(step 4 counted from 1\) differs"):
        load_curve(_csv(tmp_path, "step,lr,loss\n0,0.1,3\n1,0.1,2\n3,0.2,1\n", "b.csv"), schedule="constant:peak=0.1")


def test_loss_from_ignores_early_losses_but_keeps_their_lr(tmp_path):
    p = _csv(tmp_path, "step,lr,loss\n1,0.1,9.0\n2,0.1,8.0\n3,0.1,2.0\n4,0.1,1.9\n")
    c = load_curve(p, loss_from=3)
    assert c.measured.tolist() == [3, 4] and c.lr.tolist() == [0.1] * 4 and c.meta["loss_from"] == 3
    with pytest.raises(ConfigError, match=r"loss_from must be a step >= 1"):
        load_curve(p, loss_from=0)
    with pytest.raises(DataError, match=r"no row has a loss value at or after step 9 \(--loss-from\)"):
        load_curve(p, loss_from=9)


def test_files_with_several_runs_need_run(tmp_path):
    text = "run,step,lr,loss\na,1,0.1,3\na,2,0.1,2\nb,1,0.2,4\nb,2,0.2,3.5\nb,3,0.1,3\n"
    p = _csv(tmp_path, text, "many.csv")
    with pytest.raises(DataError, match=r"many.csv: the file holds 2 runs \(column 'run': a, b\); pick one with --run"):
        load_curve(p)
    b = load_curve(p, run="b")
    assert b.lr.tolist() == [0.2, 0.2, 0.1] and b.loss.tolist() == [4, 3.5, 3] and b.name == "many:b"
    assert b.meta["run"] == "b"
    with pytest.raises(DataError, match=r"no rows of run 'c'; the file holds runs: a, b"):
        load_curve(p, run="c")
    with pytest.raises(DataError, match=r"selects rows by a 'run' column, but the file has none"):
        load_curve(_csv(tmp_path, "step,lr,loss\n1,0.1,2\n", "one.csv"), run="a")
    jl = tmp_path / "many.jsonl"
    jl.write_text("".join(json.dumps({"run": r, "step": s, "lr": lr, "loss": v}) + "\n"
                          for r, s, lr, v in [("a", 1, 0.1, 3), ("b", 1, 0.2, 4), ("b", 2, 0.2, 3.5), ("b", 3, 0.1, 3)]))
    np.testing.assert_array_equal(load_curve(jl, run="b").loss, b.loss)
    with pytest.raises(DataError, match=r"holds 2 runs"):
        load_curve(jl)
