import json


def test_version_and_help(cli):
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("losslab ")
    assert cli().returncode == 2


def test_list_schedules_json(cli):
    out = cli("list", "schedules", "--json")
    assert out.returncode == 0, out.stderr
    names = [row["name"] for row in json.loads(out.stdout)]
    assert names == ["constant", "cosine", "cyclic", "linear", "step", "wsd"]


def test_unknown_catalogue_is_one_line_exit_2(cli):
    out = cli("list", "lossez")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown catalogue 'lossez'" in out.stderr



def test_closed_pipe_is_quiet(tmp_path, cli):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    demo = REPO / "src" / "losslab" / "data" / "demo"
    fit = tmp_path / "fit.json"
    out = cli("forecast", "fit", str(demo / "constant.csv"), str(demo / "cosine.csv"), "--law", "tissue", "-o", str(fit))
    assert out.returncode == 0, out.stderr
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), LOSSLAB_QUIET="1")
    # about 2 MB of JSON, far more than a pipe buffers, so the command is still writing when the reader leaves
    cmd = [sys.executable, "-m", "losslab", "forecast", "predict", str(fit), "--json",
           "--schedule", "cosine:peak=1e-3,steps=50000,final=0.1,warmup=100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == b'{"step": ['
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert b"Broken pipe" not in err and b"Traceback" not in err


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_help_texts_have_no_rst_markup():
    """Every command's --help reads as plain text: no reStructuredText ``literal`` quotes from docstrings."""
    from losslab.cli import build_parser

    todo = [("losslab", build_parser())]
    seen = []
    while todo:
        name, parser = todo.pop()
        seen.append(name)
        assert "``" not in parser.format_help(), name
        todo.extend((f"{name} {sub}", p) for sub, p in _subparsers(parser))
    assert {"losslab scaling", "losslab monitor", "losslab diagnose", "losslab stability"} <= set(seen)
