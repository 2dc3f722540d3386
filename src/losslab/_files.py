"""Output files that are either complete or absent: checked before the work, written through a temporary file."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from losslab._errors import ConfigError, DataError

__all__ = ["prepare_outputs", "prepare_plot", "read_text_lines", "replacing", "save_figure", "write_text"]

def prepare_outputs(*paths: str | Path | None) -> None:
    """Check every output path before any work: refuse folders, create missing parent folders.

    >>> prepare_outputs(None)
    """
    for raw in paths:
        if raw is None:
            continue
        path = Path(raw).expanduser()
        if path.is_dir():
            raise ConfigError(f"cannot write {str(raw)!r}: it is a folder; give a file name such as {str(path / 'out')!r}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot write {str(raw)!r}: its folder cannot be created ({exc.strerror}); pick another "
                              "path") from exc
        if not os.access(path.parent, os.W_OK):
            raise ConfigError(f"cannot write {str(raw)!r}: the folder {str(path.parent)!r} is not writable; pick "
                              "another path")


def read_text_lines(path: str | Path) -> io.StringIO:
    """The UTF-8 text of ``path`` (a leading BOM dropped) as a file-like object that keeps line endings as written.

    A byte that is not UTF-8 raises :class:`DataError` naming the line, instead of ``UnicodeDecodeError``.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); re-save the file as "
                        "UTF-8") from None
    return io.StringIO(text, newline="")


def prepare_plot(path: str | Path | None) -> None:
    """:func:`prepare_outputs` for a figure, whose file name must also end in a format matplotlib writes."""
    if path is None:
        return
    prepare_outputs(path)
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in formats:
        raise ConfigError(f"cannot save the plot {str(path)!r}: {fmt or '(no suffix)'!r} is not an image format; use a "
                          ".png, .pdf or .svg file name")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one step, on error it is removed."""
    target = Path(path).expanduser()
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}{target.suffix}"
        try:  # created like open() would (mode 0o666 less the umask), and never over an existing file
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 random names taken
        raise FileExistsError(f"no free temporary name next to {target}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a reader never sees a partial file (UTF-8)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """``fig.savefig`` through a temporary file (the format follows the suffix of ``path``, PNG by default)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt)
    except ValueError as exc:  # matplotlib: unknown format
        raise ConfigError(f"cannot save the plot {str(path)!r}: {exc}; use a .png, .pdf or .svg file name") from exc
    return Path(path)
