"""``make bench``: run every benchmark script in bench/ in turn and print its side-by-side table.

Usage: ``python bench/run_all.py [NAME ...]`` (names without ``.py``; default: all). Benchmarks that need
../shared/data skip themselves with a message when it is absent.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    if argv:
        wanted = set(argv)
        scripts = [p for p in scripts if p.stem in wanted]
    failures = []
    for script in scripts:
        print(f"=== {script.stem}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"=== {script.stem}: exit {code} after {time.perf_counter() - start:.0f} s\n", flush=True)
        if code:
            failures.append(script.stem)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
