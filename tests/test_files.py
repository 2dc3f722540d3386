"""Output files are complete or absent, keep the usual permissions, and bad paths fail before any work."""

from __future__ import annotations

import os
import stat

import pytest

from losslab import ConfigError, DataError
from losslab._files import prepare_outputs, read_text_lines, replacing, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_new_files_get_the_mode_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


def test_bad_output_paths_and_text_that_is_not_utf8(tmp_path):
    with pytest.raises(ConfigError, match="it is a folder"):
        prepare_outputs(tmp_path)
    prepare_outputs(tmp_path / "new" / "deeper" / "f.json")
    assert (tmp_path / "new" / "deeper").is_dir()
    (tmp_path / "bad.csv").write_bytes(b"a,b\n1,2\n3,\xff\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3 is not UTF-8 text \(byte 0xff\)"):
        read_text_lines(tmp_path / "bad.csv")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfa,b\r\n1,2\r\n")
    assert read_text_lines(tmp_path / "bom.csv").read() == "a,b\r\n1,2\r\n"
