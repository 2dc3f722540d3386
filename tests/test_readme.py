"""The README's Python quick start runs as written, on a tiny model and the bundled demo curves."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

torch = pytest.importorskip("torch")


def python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 5


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = REPO / "src" / "losslab" / "data" / "demo"
    for name in ("constant.csv", "cosine.csv"):
        shutil.copy(demo / name, tmp_path / name)
    Path("run").mkdir()
    torch.manual_seed(0)
    vocab, hidden_size = 11, 8
    model = torch.nn.Sequential(torch.nn.Linear(hidden_size, 16), torch.nn.Tanh(), torch.nn.Linear(16, vocab))
    x = torch.randn(32, hidden_size)
    y = torch.randint(0, vocab, (32,))
    namespace = {
        "torch": torch,
        "model": model,
        "logits": model(x).detach().requires_grad_(),
        "target": y,
        "hidden": torch.randn(32, hidden_size, requires_grad=True),
        "lm_head": torch.nn.Linear(hidden_size, vocab, bias=False),
        "loader": [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)],
        "loss_fn": lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
        "batch": (x, y),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "teacher_logits": model(x).detach() + 0.1 * torch.randn(32, vocab),
        "class_counts": [500, 300, 200, 120, 80, 50, 30, 20, 12, 8, 5],
        "scores": torch.randn(4, 6),
        "relevance": torch.randint(0, 4, (4, 6)).float(),
        "mask": torch.ones(4, 6, dtype=torch.bool),
        "forecasts": torch.randn(8, 24, 3),
        "observed": torch.randn(8, 24),
        "router_logits": torch.randn(64, 8, requires_grad=True),
        "embeddings": torch.randn(200, 16),
        "per_row_loss": torch.rand(200),
    }
    for block in python_blocks():
        exec(compile(block, "README.md", "exec"), namespace)
