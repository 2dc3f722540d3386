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
        if name != "losslab list":  # cli/_list.py keeps its own description
            assert "``" not in parser.format_help(), name
        todo.extend((f"{name} {sub}", p) for sub, p in _subparsers(parser))
    assert {"losslab scaling", "losslab monitor", "losslab diagnose", "losslab stability"} <= set(seen)
