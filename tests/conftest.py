"""Shared fixtures: paths to the repository, to ../shared/data, and a CLI runner in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# property tests draw the same examples on every run: a failure is reproducible and CI cannot flake
settings.register_profile("losslab", derandomize=True, print_blob=True)
settings.load_profile("losslab")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip the test with a clear message when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m losslab ARGS`` from this checkout's src/ in a child process."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), LOSSLAB_QUIET="1", MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, "-m", "losslab", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node NPROC ARGS`` (gloo workers in tests/) on a free port, from this checkout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(port),
           *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: small matrices gain nothing from threads, and on a busy runner threaded ops
    slow down many times over. The previous thread count is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli():
    return run_cli
