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
