"""The measuring half of TrainingMonitor: parameter layout, device-side metric collection, the host transfer.

:class:`MonitorMeasure` is a base class holding no public API; :class:`~losslab.monitor.TrainingMonitor`
inherits it and adds the loop hooks, detectors, sinks and checkpoints.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from losslab._distributed import local_part, unwrap_parallel
from losslab.monitor._attention import AttentionHooks
from losslab.monitor._dist import MAX, MEAN, PARAM, SHARD, dist_info, reduce_vector
from losslab.monitor._metrics import (
    adam_tiny_v_count,
    grouped_sq_norms,
    layer_name,
    logit_stats,
    safe_ratio,
)
from losslab.stability.spikes import SpikeEvent

__all__ = ["MonitorMeasure", "local_sq_norms", "merge_sharded"]


def local_sq_norms(params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Squared gradient norms of ``params`` on this rank (0-d, float32; float64 when a gradient is float64):
    plain tensors, and DTensor pieces weighted by ``1 / replicas``. For the clipping path on which the gradients
    were not measured beforehand."""
    grads = [local_part(p.grad.detach()) for p in params if p.grad is not None and not p.grad.is_sparse]
    device = grads[0][0].device if grads else (local_part(params[0])[0].device if params else torch.device("cpu"))
    dtype = torch.float64 if any(g.dtype == torch.float64 for g, _ in grads) else torch.float32
    plain = torch.zeros((), dtype=dtype, device=device)
    shard = torch.zeros((), dtype=dtype, device=device)
    for g, weight in grads:
        sq = g.to(dtype).square().sum().to(device)
        if weight is None:
            plain = plain + sq
        else:
            shard = shard + weight * sq
    return plain, shard


def merge_sharded(raw: dict[str, float]) -> dict[str, float]:
    """Add each DTensor part (``name~``, summed over ranks) to its plain part (``name``) and drop it."""
    for key in [k for k in raw if "~" in k]:
        value = raw.pop(key)
        plain = key.replace("~", "")
        raw[plain] = raw.get(plain, 0.0) + value
    return raw


class MonitorMeasure:
    """Collect one step's metrics on the device and bring them to the host in one transfer."""

    # set by TrainingMonitor.__init__
    model: nn.Module | None
    optimizer: torch.optim.Optimizer | None
    per_layer: str
    grads_synchronized: bool
    process_group: Any
    step_count: int
    _params: list[nn.Parameter] | None
    _layers: list[str]
    _group_of: list[int]
    _shown: list[bool]
    _index_cache: dict[tuple[Any, ...], Tensor]
    _snap_buf: list[Tensor] | None
    _pre: dict[str, Any] | None
    _attn: AttentionHooks

    def is_sampled(self, step: int) -> bool:  # overridden by TrainingMonitor
        raise NotImplementedError

    def _problem(self, where: str, exc: BaseException | str) -> None:  # overridden
        raise NotImplementedError

    def _record(self, step: int, row: dict[str, float | None]) -> list[SpikeEvent]:  # overridden
        raise NotImplementedError

    def _resolve(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None
                 ) -> tuple[nn.Module | None, torch.optim.Optimizer | None]:
        if model is not None:
            self.model = model
        if optimizer is not None:
            self.optimizer = optimizer
        return self.model, self.optimizer

    def _layout(self, model: nn.Module) -> None:
        """Fix the layer layout at the first step, over ALL parameters of the model (frozen ones included).

        A parameter without ``.grad`` simply counts as absent on a step, so parameters unfrozen later (gradual
        unfreezing) are measured and clipped from the step they get gradients. ``_shown`` marks the layers whose
        per-layer columns are written: those trainable at the first step and any that has had a gradient since
        (a frozen backbone adds no empty columns).
        """
        if self._params is not None:
            return
        named = list(unwrap_parallel(model).named_parameters())
        self._params = [p for _, p in named]
        layers: dict[str, int] = {}
        self._group_of = []
        shown: dict[int, bool] = {}
        for n, p in named:
            key = "all" if self.per_layer == "none" else layer_name(n, self.per_layer)
            g = layers.setdefault(key, len(layers))
            self._group_of.append(g)
            shown[g] = shown.get(g, False) or p.requires_grad or p.grad is not None
        self._layers = list(layers)
        self._shown = [shown[g] for g in range(len(self._layers))]

    def _index(self, groups: Sequence[int], device: torch.device) -> Tensor:
        key = (tuple(groups), str(device))
        idx = self._index_cache.get(key)
        if idx is None:
            if len(self._index_cache) > 8:
                self._index_cache.clear()
            idx = torch.tensor(list(groups), dtype=torch.long, device=device)
            self._index_cache[key] = idx
        return idx

    def _snapshot(self) -> tuple[list[int], list[Tensor], list[float | None]]:
        """Copy the trainable parameters (``requires_grad`` now) into a buffer kept between sampled steps (no
        fresh allocation each time unless that set changes); returns their positions in the layout, the copies
        (local pieces of DTensors) and the DTensor weights (``None`` for plain tensors)."""
        assert self._params is not None
        chosen = [i for i, p in enumerate(self._params) if p.requires_grad]
        parts = [local_part(self._params[i].detach()) for i in chosen]
        current = [t for t, _ in parts]
        buf = self._snap_buf
        if buf is None or len(buf) != len(current) or any(b.shape != c.shape or b.dtype != c.dtype or
                                                          b.device != c.device for b, c in zip(buf, current)):
            buf = self._snap_buf = [c.clone() for c in current]
        elif buf:
            torch._foreach_copy_(buf, current)
        return chosen, buf, [w for _, w in parts]

    def _sq_norms(self, tensors: list[Tensor], groups: list[int], weights: list[float | None]
                  ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """Squared norms per layer of plain tensors and, apart, of DTensor pieces (weighted by 1 / replicas).

        Returns ``(plain, sharded, plain_per_tensor, sharded_per_tensor)``; the sharded parts are ``None``
        when no tensor is a DTensor piece."""
        n = len(self._layers)
        if all(w is None for w in weights):
            per_group, per_tensor = grouped_sq_norms(tensors, self._index(groups, tensors[0].device), n)
            return per_group, None, per_tensor, None
        plain = [i for i, w in enumerate(weights) if w is None]
        shard = [i for i, w in enumerate(weights) if w is not None]
        device = tensors[shard[0]].device
        p_group, p_tensor = grouped_sq_norms([tensors[i] for i in plain], self._index([groups[i] for i in plain],
                                                                                      device), n)
        s_group, s_tensor = grouped_sq_norms([tensors[i] for i in shard], self._index([groups[i] for i in shard],
                                                                                      device), n,
                                             weights=[float(weights[i]) for i in shard])  # type: ignore[arg-type]
        return p_group, s_group, p_tensor, s_tensor

    def _grad_piece(self) -> dict[str, Any] | None:
        """Squared gradient norms per layer (plain and DTensor parts), non-finite counts and present layers."""
        assert self._params is not None
        grads, groups, weights, plain_at = [], [], [], []
        present = [False] * len(self._layers)
        for i, (p, g) in enumerate(zip(self._params, self._group_of)):
            if p.grad is None or p.grad.is_sparse:
                continue
            local, weight = local_part(p.grad.detach())
            grads.append(local)
            groups.append(g)
            weights.append(weight)
            if weight is None:
                plain_at.append(i)  # the parameter index of each plain gradient, in order
            present[g] = True
            self._shown[g] = True
        if not grads:
            return None
        per_group, sharded, per_tensor, sharded_tensor = self._sq_norms(grads, groups, weights)
        # NaN/inf entries make the norm NaN/inf; norms are accumulated in float32 (float64), so float16 gradients
        # cannot overflow; a float32 tensor counts only if its norm exceeds 1.8e19 (its square, float32's max)
        bad = ~torch.isfinite(per_tensor)
        piece: dict[str, Any] = {"plain": per_group, "present": present}
        if not self.grads_synchronized and dist_info(self.process_group)[1] > 1:
            # shards of one parameter on several ranks (ZeRO, FSDP-1 flat parameters): one flag per parameter,
            # maxed over the ranks, so a tensor counts once however many of its shards hold a NaN
            flags = torch.zeros(len(self._params), dtype=per_group.dtype, device=per_group.device)
            flags[torch.tensor(plain_at, dtype=torch.long).to(flags.device)] = bad.to(flags.dtype)
            piece["nonfinite_flags"] = flags
        else:
            piece["nonfinite"] = bad.sum().to(per_group.dtype).reshape(1)
        if sharded is not None and sharded_tensor is not None:
            piece["sharded"] = sharded
            # one flag per DTensor, maxed over the ranks: a tensor counts once, in one piece or in all of them
            piece["sharded_nonfinite"] = (~torch.isfinite(sharded_tensor)).to(sharded.dtype)
        return piece

    def _step(self, loss: Any, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
              logits: Tensor | None, step: int | None, metrics: Mapping[str, float] | None) -> list[SpikeEvent]:
        model, optimizer = self._resolve(model, optimizer)
        current = self.step_count + 1 if step is None else int(step)
        sampled = self.is_sampled(current)
        pre = self._pre if self._pre is not None and self._pre["step"] == current else None
        self._pre = None
        names: list[str] = []
        pieces: list[Tensor] = []
        kinds: list[int] = []

        def add(keys: list[str], values: Tensor, kind: int) -> None:
            names.extend(keys)
            pieces.append(values.detach().reshape(-1))
            kinds.extend([kind] * len(keys))

        if loss is not None:
            try:
                t = loss.detach().float().mean() if isinstance(loss, Tensor) else torch.tensor(float(loss))
                add(["loss"], t, MEAN)
            except Exception as exc:
                self._problem("loss", exc)
        present: list[bool] = []
        snapped: list[bool] = []
        if model is not None:
            try:
                self._layout(model)
                grads = pre["grads"] if pre is not None else self._grad_piece()
                if grads is not None:
                    present = grads["present"]
                    add([f"gsq/{name}" for name in self._layers], grads["plain"], PARAM)
                    if "nonfinite_flags" in grads:
                        flags = grads["nonfinite_flags"]
                        add([f"nonfinite_param/{i}" for i in range(len(flags))], flags, MAX)
                    else:
                        add(["nonfinite_grads"], grads["nonfinite"], PARAM)
                    if "sharded" in grads:
                        add([f"gsq~/{name}" for name in self._layers], grads["sharded"], SHARD)
                        flags = grads["sharded_nonfinite"]
                        add([f"nonfinite_dtensor/{i}" for i in range(len(flags))], flags, MAX)
                if pre is not None and pre["snapshot"] is not None:
                    assert self._params is not None
                    chosen, snap, weights = pre["snapshot"]
                    if snap:
                        groups = [self._group_of[i] for i in chosen]
                        psq, psq_s, _, _ = self._sq_norms(snap, groups, weights)
                        torch._foreach_sub_(snap, [local_part(self._params[i].detach())[0] for i in chosen])
                        usq, usq_s, _, _ = self._sq_norms(snap, groups, weights)  # snap now holds -update
                        add([f"usq/{name}" for name in self._layers], usq, PARAM)
                        add([f"psq/{name}" for name in self._layers], psq, PARAM)
                        if usq_s is not None and psq_s is not None:
                            add([f"usq~/{name}" for name in self._layers], usq_s, SHARD)
                            add([f"psq~/{name}" for name in self._layers], psq_s, SHARD)
                        snapped = [False] * len(self._layers)
                        for g in groups:
                            snapped[g] = True
            except Exception as exc:
                self._problem("gradient norms", exc)
        if optimizer is not None and sampled:
            try:
                counted = adam_tiny_v_count(optimizer)
                if counted is not None:
                    count, total = counted
                    add(["adam/tiny", "adam/numel"], torch.stack([count, torch.full_like(count, float(total))]),
                        PARAM)
            except Exception as exc:
                self._problem("adam health", exc)
        if logits is not None and sampled:
            try:
                stats = logit_stats(logits)
                add(["logits/max_abs"], stats["logits/max_abs"], MAX)
                add(["logits/lse_mean", "logits/z_loss"],
                    torch.stack([stats["logits/lse_mean"], stats["logits/z_loss"]]), MEAN)
            except Exception as exc:
                self._problem("logit statistics", exc)
        for msg in self._attn.errors:
            self._problem("attention hook", msg)
        self._attn.errors.clear()
        attn = self._attn.pop()
        if attn:
            add([f"attn/{n}" for n in attn], torch.stack([v.reshape(()) for v in attn.values()]), MAX)

        raw = merge_sharded(self._to_host(names, pieces, kinds))
        row = self._finish(raw, present, snapped, optimizer, metrics)
        self._attn.active = self.is_sampled(current + 1)
        self.step_count = current
        return self._record(current, row)

    def _to_host(self, names: list[str], pieces: list[Tensor], kinds: list[int]) -> dict[str, float]:
        _rank, world = dist_info(self.process_group)
        if not pieces and world <= 1:
            return {}
        # gather on the accelerator when there is one: a host-side loss (a Python float) is copied up, which
        # needs no synchronisation, whereas copying device values down would cost one each
        device = next((p.device for p in pieces if p.device.type != "cpu"), pieces[0].device if pieces else None)
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in pieces) else torch.float32
        vec = (torch.cat([p.to(device=device, dtype=dtype) for p in pieces]) if pieces
               else torch.zeros(0, dtype=dtype))
        if world > 1:
            try:
                import torch.distributed as dist

                if vec.device.type == "cpu" and dist.get_backend(self.process_group) == "nccl":
                    vec = vec.to(torch.device("cuda", torch.cuda.current_device()))  # NCCL needs CUDA tensors
                if self._same_layout_on_all_ranks(names, kinds, vec.device) and pieces:
                    kind_t = torch.tensor(kinds, device=vec.device)
                    vec = reduce_vector(vec, kind_t, self.grads_synchronized, self.process_group)
            except Exception as exc:
                self._problem("distributed reduction", exc)
        values = vec.tolist()  # the one host synchronisation of the step
        return dict(zip(names, values))

    def _same_layout_on_all_ranks(self, names: list[str], kinds: list[int], device: torch.device) -> bool:
        """All-gather a fixed-size header (length and checksum of the metric names) and compare it across ranks.

        Every rank takes part every step, whatever it measured, so a rank that passed other inputs (logits or
        the loss on some ranks only) cannot make the reduction's ``all_gather`` abort or hang: on a mismatch
        every rank warns and keeps its own values for the step.
        """
        import torch.distributed as dist

        checksum = zlib.crc32("\n".join(f"{n}:{k}" for n, k in zip(names, kinds)).encode("utf-8"))
        header = torch.tensor([len(names), checksum], dtype=torch.int64, device=device)
        world = dist.get_world_size(self.process_group)
        headers = [torch.empty_like(header) for _ in range(world)]
        dist.all_gather(headers, header, group=self.process_group)
        table = torch.stack(headers).cpu().tolist()
        if all(h == table[0] for h in table):
            return True
        self._problem("distributed reduction",
                      f"the ranks measured different metrics this step (metric counts by rank: "
                      f"{[h[0] for h in table]}), so their values were not reduced and each rank keeps its own; "
                      f"pass the same arguments (loss=, logits=) on every rank")
        return False

    def _finish(self, raw: dict[str, float], present: list[bool], snapped: list[bool],
                optimizer: torch.optim.Optimizer | None, metrics: Mapping[str, float] | None
                ) -> dict[str, float | None]:
        row: dict[str, float | None] = {}
        if "loss" in raw:
            row["loss"] = raw["loss"]
        layers = self._layers
        if layers and f"gsq/{layers[0]}" in raw:
            row["grad_norm"] = math.sqrt(math.fsum(raw[f"gsq/{n}"] for n in layers))  # NaN/Inf propagate
            if self.per_layer != "none":
                for n, ok, shown in zip(layers, present, self._shown):
                    if shown:
                        row[f"grad_norm/{n}"] = math.sqrt(raw[f"gsq/{n}"]) if ok else None
            row["nonfinite_grads"] = raw.get("nonfinite_grads", 0.0) + math.fsum(
                v for k, v in raw.items() if k.startswith(("nonfinite_dtensor/", "nonfinite_param/")))
        if layers and f"usq/{layers[0]}" in raw:
            row["update_ratio"] = safe_ratio(math.fsum(raw[f"usq/{n}"] for n in layers),
                                             math.fsum(raw[f"psq/{n}"] for n in layers))
            if self.per_layer != "none":
                for n, ok, shown in zip(layers, snapped, self._shown):
                    if shown:
                        row[f"update_ratio/{n}"] = safe_ratio(raw[f"usq/{n}"], raw[f"psq/{n}"]) if ok else None
        if optimizer is not None and optimizer.param_groups:
            try:
                row["lr"] = float(optimizer.param_groups[0]["lr"])
            except Exception as exc:
                self._problem("learning rate", exc)
        if "adam/tiny" in raw:
            row["adam/tiny_v_frac"] = raw["adam/tiny"] / raw["adam/numel"] if raw["adam/numel"] else None
        for key in ("logits/max_abs", "logits/lse_mean", "logits/z_loss"):
            if key in raw:
                row[key] = raw[key]
        attn = {k[5:]: v for k, v in raw.items() if k.startswith("attn/")}
        if attn:
            row["attn/max_logit"] = max(attn.values())
            for n, v in attn.items():
                row[f"attn/max_logit/{n}"] = v
        for key, value in (metrics or {}).items():
            try:
                row[str(key)] = float(value)
            except Exception as exc:
                self._problem(f"metric {key!r}", exc)
        return row
