"""The training loop: from scratch, fine-tuning a pruned model, resumable, DDP-ready.

Multi-GPU training uses the standard path: launch with ``torchrun
--nproc_per_node N -m edgeanchor train ...``; each process reads
``LOCAL_RANK``/``WORLD_SIZE``, joins ``torch.distributed`` and wraps the
model in ``DistributedDataParallel`` (NCCL on GPUs, gloo on CPUs). Rank 0
evaluates and writes checkpoints; the recorded losses are averaged over ranks.

Reproducibility: weights are initialised from ``seed``; each epoch's
shuffling derives from (seed, epoch, rank) and each sample's augmentation
from that and the sample's index, so two runs with the same settings give
the same weights, with any number of loader workers, and a run resumed at
any epoch equals the uninterrupted one. A DDP run with N processes and
batch B is reproducible too, but is not the same computation as one process
with batch N*B: BatchNorm statistics are per process (no SyncBatchNorm),
each rank draws its own augmentation, and DistributedSampler splits each
epoch's permutation across ranks. Its weights therefore differ slightly
from the single-process run (tested).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..datasets.coco import CocoDetection
from ..errors import CheckFailed
from ..evaluation.coco_map import coco_map
from ..evaluation.predict import make_loader, predict
from ..models.base import Detector
from ..models.registry import save_checkpoint
from .losses import detection_loss


@dataclass
class TrainConfig:
    """Plain training settings (the CLI fills these from flags)."""

    epochs: int
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_iters: int = 200
    device: str = "cpu"
    workers: int = 1
    seed: int = 0
    max_iters_per_epoch: int | None = None  # for smoke tests
    eval_batch_size: int = 32
    progress: bool = True
    extra_meta: dict = field(default_factory=dict)


class _TrainStep(nn.Module):
    """Backbone + head as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, det: Detector):
        super().__init__()
        self.det = det

    def forward(self, images):
        return self.det.head(self.det.backbone(images))


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (weights are initialised from torch's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch: its shuffling and augmentation derive from it alone, so a run
    resumed at any epoch sees exactly what the uninterrupted run saw."""
    return (seed * 1_000_003 + epoch * 7_919 + rank) % 2**63


def _lr_factor(it: int, total: int, warmup: int) -> float:
    if it < warmup:
        return (it + 1) / warmup
    progress = (it - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine to zero


def train(
    det: Detector,
    train_set: CocoDetection,
    cfg: TrainConfig,
    *,
    out: str,
    val_set: CocoDetection | None = None,
    resume_state: dict | None = None,
) -> dict:
    """Train ``det`` in place; write a checkpoint to ``out`` after every epoch.

    Args:
        det: the detector (random, pretrained or pruned).
        train_set: training data with ``train=True`` augmentation.
        cfg: settings.
        out: checkpoint path; rewritten atomically each epoch.
        val_set: evaluated with COCO mAP after each epoch when given.
        resume_state: ``train_state`` of a checkpoint written by this function.

    Returns:
        The training record: per-epoch losses, mAP and seconds.
    """
    from ..torch_device import resolve_device

    world, rank, local = _distributed()
    device = resolve_device(f"cuda:{local}" if cfg.device == "cuda" else cfg.device)
    det.to(device)
    step_module: nn.Module = _TrainStep(det)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(step_module,
                                                          device_ids=[local] if device.type == "cuda" else None)
    sampler: torch.utils.data.DistributedSampler | None = None
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(train_set, shuffle=True, seed=cfg.seed)
    batches = len(make_loader(train_set, cfg.batch_size, sampler=sampler))
    iters_per_epoch = batches if cfg.max_iters_per_epoch is None else min(batches, cfg.max_iters_per_epoch)
    total_iters = iters_per_epoch * cfg.epochs
    params = [p for p in det.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: _lr_factor(it, total_iters, cfg.warmup_iters))
    record: dict[str, Any] = {"epochs": [], "config": {k: v for k, v in cfg.__dict__.items() if k != "extra_meta"}}
    start_epoch = 0
    if resume_state:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        record = resume_state["record"]
        start_epoch = resume_state["epoch"] + 1
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        # A fresh loader per epoch, seeded from (seed, epoch, rank) alone: the shuffling, and each
        # sample's augmentation (drawn from the epoch seed and the sample index), do not depend on
        # earlier epochs or on the loader's workers, so runs and resumed runs are identical with any
        # number of loader workers.
        seed = epoch_seed(cfg.seed, epoch, rank)
        seed_everything(seed)
        train_set.set_augment_seed(seed)
        loader = make_loader(train_set, cfg.batch_size, shuffle=True, workers=cfg.workers, sampler=sampler,
                             generator=torch.Generator().manual_seed(seed), persistent_workers=False)
        t0 = time.perf_counter()
        losses = _train_epoch(step_module, det, loader, optimizer, scheduler, iters_per_epoch, epoch, cfg, device,
                              rank)
        entry = {"epoch": epoch, "seconds": round(time.perf_counter() - t0, 1), **losses}
        if val_set is not None and rank == 0:
            dets = predict(det, val_set, batch_size=cfg.eval_batch_size, device=str(device), progress=cfg.progress,
                           desc="val")
            entry["val"] = coco_map(val_set.ann_file, dets)
        record["epochs"].append(entry)
        if rank == 0:
            val = f", val mAP {entry['val']['mAP']:.4f} mAP50 {entry['val']['mAP50']:.4f}" if "val" in entry else ""
            tqdm.write(f"epoch {epoch}: loss {entry.get('loss', float('nan')):.4f}{val} ({entry['seconds']}s)",
                       file=sys.stderr)
        if rank == 0:
            last = epoch == cfg.epochs - 1
            state = None if last else {
                "epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "record": record, "loader_seeding": "epoch_seed(seed, epoch, rank) per epoch",
            }
            det.cpu()
            save_checkpoint(det, out, meta={"train": record, **cfg.extra_meta},
                            extra={"train_state": state} if state else None)
            det.to(device)
    det.cpu().eval()
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()  # rank 0 has written the last checkpoint
        torch.distributed.destroy_process_group()
    return record


def _train_epoch(step_module, det, loader, optimizer, scheduler, num_iters, epoch, cfg, device, rank) -> dict:
    step_module.train()
    sums: dict[str, float] = {}
    count = 0
    bar = tqdm(total=num_iters, desc=f"epoch {epoch}", disable=not cfg.progress or rank != 0, leave=False)
    for it, (images, targets) in enumerate(loader):
        if it >= num_iters:
            break
        images = images.to(device)
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        head_outputs = step_module(images)
        loss_dict = detection_loss(det, head_outputs, targets)
        loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            raise CheckFailed(
                f"training diverged: the loss became {loss.item()} at epoch {epoch} iteration {it}; lower `lr`"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(det.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        count += 1
        for k, v in loss_dict.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        bar.set_postfix({k: f"{v / count:.3f}" for k, v in sums.items()} | {"lr": f"{scheduler.get_last_lr()[0]:.1e}"})
        bar.update(1)
    bar.close()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every rank saw its own share of the data: the record holds the mean over all of them
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
        torch.distributed.all_reduce(totals)
        sums, count = dict(zip(keys, totals[:-1].tolist())), int(totals[-1].item())
    return {k: round(v / max(1, count), 5) for k, v in sums.items()}
