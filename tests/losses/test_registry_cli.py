"""Registry helpers, unknown-name suggestions and ``losslab list losses``."""

from __future__ import annotations

import json

import pytest

import losslab.losses as L
from losslab import UnknownNameError
from tests.conftest import run_cli


def test_names_get_info_and_aliases():
    names = L.names()
    assert names == sorted(names) and len(names) == len(L.registry)
    assert L.get("ce") is L.cross_entropy and L.get("Cross-Entropy") is L.cross_entropy
    assert L.info("gce").name == "generalized_cross_entropy"
    assert L.info("linear_cross_entropy").input_kind == "hidden_states"
    assert L.info("sface").input_kind == "embeddings"


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownNameError, match=r"did you mean.*cross_entropy"):
        L.get("cross_entropi")


def test_cli_lists_every_loss():
    out = run_cli("list", "losses", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == L.names()
    assert all("arXiv:" in r["reference"] or "doi:" in r["reference"] for r in rows)


def test_user_guide_lists_every_loss():
    from tests.conftest import REPO

    text = (REPO / "docs" / "losses.md").read_text()
    missing = [n for n in L.names() if f"`{n}`" not in text]
    assert not missing, f"docs/losses.md does not list {missing}"
