"""Child process for the kill test: trains a tiny model forever, logging every step to CSV and JSONL."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from losslab.monitor import TrainingMonitor


def main(out: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = TrainingMonitor(model, opt, sinks=[out / "log.csv", out / "log.jsonl"], every_n_steps=3,
                              per_layer="param")
    step = 0
    while True:
        step += 1
        x = torch.randn(32, 8)
        loss = model(x).pow(2).mean()
        loss.backward()
        with monitor.stepping(loss=loss, logits=model(x).detach(),
                              metrics={"late_metric": 1.0} if step >= 50 else None):
            opt.step()
        opt.zero_grad()
        if step == 20:
            (out / "ready").write_text("20")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
