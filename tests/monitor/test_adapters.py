"""Integration tests: the REAL Lightning Trainer and Hugging Face Trainer on a tiny model, on CPU."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from losslab.monitor import TrainingMonitor, read_log

pytestmark = pytest.mark.slow


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def test_lightning_trainer_feeds_the_monitor(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from losslab.monitor import LightningMonitorCallback

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
            self.seen_losses: list[float] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self.net(x)
            loss = nn.functional.mse_loss(out, y)
            self.seen_losses.append(float(loss.detach()))
            return {"loss": loss, "logits": out}

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    monitor = TrainingMonitor(sinks=[tmp_path / "log.csv"], every_n_steps=5)
    module = Tiny()
    trainer = pl.Trainer(max_steps=20, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1e-3,
                         callbacks=[LightningMonitorCallback(monitor)])
    trainer.fit(module, loader)
    monitor.close()
    log = read_log(tmp_path / "log.csv")
    assert log.steps.tolist() == list(range(1, 21))
    # the loss recorded at each optimizer step is the training_step loss of that batch
    assert log.columns["loss"] == pytest.approx(module.seen_losses, rel=1e-6)
    # before clipping (clip value 1e-3 is far below the norms): Lightning's hook runs before clipping
    assert (log.columns["grad_norm"] > 1e-2).all()
    assert math.isfinite(log.columns["update_ratio"][0]) and math.isnan(log.columns["update_ratio"][1])
    assert log.columns["lr"][0] == pytest.approx(1e-2)
    assert "logits/z_loss" in log.columns
    assert "net.0" in {k.split("/", 1)[1] for k in log.columns if k.startswith("grad_norm/")}


def test_lightning_checkpoint_carries_monitor_state(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from losslab.monitor import LightningMonitorCallback

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(6, 1)

        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-2)

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    kw = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path)
    mon1 = TrainingMonitor()
    trainer = pl.Trainer(max_steps=6, callbacks=[LightningMonitorCallback(mon1)], **kw)
    trainer.fit(Tiny(), loader)
    ckpt = trainer.checkpoint_callback.best_model_path or str(next(tmp_path.rglob("*.ckpt")))
    mon2 = TrainingMonitor()
    trainer2 = pl.Trainer(max_steps=10, callbacks=[LightningMonitorCallback(mon2)], **kw)
    trainer2.fit(Tiny(), loader, ckpt_path=ckpt)
    assert mon2.history["step"] == [7, 8, 9, 10]
    assert mon2.detectors["loss"][0].state_dict()["history"][:6] == mon1.detectors["loss"][0].state_dict()["history"]


def test_hf_trainer_feeds_the_monitor(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from losslab.monitor import HFMonitorCallback

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")

    class Config(transformers.PretrainedConfig):
        model_type = "losslab-tiny"

        def __init__(self, width: int = 8, **kw) -> None:
            self.width = width
            super().__init__(**kw)

    class TinyModel(transformers.PreTrainedModel):
        config_class = Config

        def __init__(self, config: Config) -> None:
            super().__init__(config)
            self.body = nn.Sequential(nn.Linear(6, config.width), nn.Tanh(), nn.Linear(config.width, 3))
            self.losses: list[float] = []
            self.post_init()

        def forward(self, x, labels=None):
            logits = self.body(x)
            loss = nn.functional.cross_entropy(logits, labels)
            if self.training:
                self.losses.append(float(loss.detach()))
            return {"loss": loss, "logits": logits}

    class DS(torch.utils.data.Dataset):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(1)
            self.x = torch.randn(48, 6, generator=g)
            self.y = torch.randint(0, 3, (48,), generator=g)

        def __len__(self) -> int:
            return 48

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    model = TinyModel(Config())
    monitor = TrainingMonitor(sinks=[tmp_path / "log.jsonl"], every_n_steps=3)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=12, per_device_train_batch_size=4,
                                          gradient_accumulation_steps=2, learning_rate=1e-2, report_to="none",
                                          save_strategy="no", logging_strategy="no", use_cpu=True,
                                          dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=0.0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DS(), callbacks=[HFMonitorCallback(monitor)])
    trainer.train()
    monitor.close()
    log = read_log(tmp_path / "log.jsonl")
    assert log.steps.tolist() == list(range(1, 13))
    expected = [(a + b) / 2 for a, b in zip(model.losses[0::2], model.losses[1::2])]
    assert log.columns["loss"] == pytest.approx(expected, rel=1e-5)
    assert (log.columns["grad_norm"] > 0).all()
    assert math.isfinite(log.columns["logits/lse_mean"][0]) and math.isfinite(log.columns["update_ratio"][3])
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_lightning_gradient_accumulation_logs_the_step_loss_not_loss_over_k():
    pl = pytest.importorskip("lightning.pytorch")
    from losslab.monitor import LightningMonitorCallback

    class Constant(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(1, 1, bias=False)
            nn.init.zeros_(self.lin.weight)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return ((self.lin(x) - y) ** 2).mean()  # lr = 0: every micro-batch loss is exactly 4

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 1), torch.full((8, 1), 2.0)),
                                         batch_size=1)
    monitor = TrainingMonitor(detectors={})
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, accumulate_grad_batches=4, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[LightningMonitorCallback(monitor)])
    trainer.fit(Constant(), loader)
    assert monitor.history["step"] == [1, 2]
    assert monitor.history["loss"] == pytest.approx([4.0, 4.0], rel=1e-6)


def test_hf_gradient_accumulation_with_loss_kwargs_matches_the_trainer_log(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from losslab.monitor import HFMonitorCallback

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")

    class Config(transformers.PretrainedConfig):
        model_type = "losslab-tiny-kwargs"

    class TokenModel(transformers.PreTrainedModel):
        """Sums the per-token losses and divides by num_items_in_batch when the Trainer passes it."""

        config_class = Config

        def __init__(self, config: Config) -> None:
            super().__init__(config)
            self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
            self.post_init()

        def forward(self, x, labels=None, **kwargs):
            logits = self.body(x)
            n = kwargs.get("num_items_in_batch")
            loss = nn.functional.cross_entropy(logits, labels, reduction="sum" if n is not None else "mean")
            return {"loss": loss / n if n is not None else loss, "logits": logits}

    class DS(torch.utils.data.Dataset):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(1)
            self.x = torch.randn(64, 6, generator=g)
            self.y = torch.randint(0, 3, (64,), generator=g)

        def __len__(self) -> int:
            return 64

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    model = TokenModel(Config())
    monitor = TrainingMonitor(detectors={})
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2,
                                          gradient_accumulation_steps=4, learning_rate=1e-2, report_to="none",
                                          save_strategy="no", logging_steps=1, use_cpu=True,
                                          dataloader_num_workers=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DS(), callbacks=[HFMonitorCallback(monitor)])
    assert trainer.model_accepts_loss_kwargs
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    assert len(logged) == 3
    assert monitor.history["loss"] == pytest.approx([float(v) for v in logged], rel=1e-5)
