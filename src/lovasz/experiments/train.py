"""Training and evaluation loops used by the ``lovasz`` command line (``train``, ``eval``, ``demo``)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..metrics import intersection_union, iou_scores
from ..modules import CrossEntropyLovaszLoss, LovaszSoftmaxLoss
from ..sampling import EquibatchSampler, class_presence
from . import data as datasets
from .models import SmallUNet

LOSSES = ("ce", "lovasz", "ce+lovasz")


@dataclass
class TrainConfig:
    data: str = "digits"
    loss: str = "ce"  # ce | lovasz | ce+lovasz
    per_image: bool = False
    classes: str = "present"  # Lovász class selection: present | all
    lovasz_weight: float = 1.0  # λ in ce + λ·lovasz
    bins: int | None = 4096  # None: exact engine
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    equibatch: bool = False
    seed: int = 0
    init: str | None = None  # checkpoint to fine-tune from
    width: int = 16
    train_size: int = 1500
    image_size: int = 64
    threads: int | None = None
    history: list = field(default_factory=list)


def _progress(it, total: int, desc: str, enabled: bool):
    if not enabled:
        yield from it
        return
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        yield from it
        return
    yield from tqdm(it, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def make_loss(cfg: TrainConfig) -> nn.Module:
    """The training criterion of ``cfg.loss``: cross-entropy, Lovász-Softmax, or CE + λ·Lovász."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    if cfg.loss == "ce":
        return nn.CrossEntropyLoss()
    if cfg.loss == "lovasz":
        return LovaszSoftmaxLoss(per_image=cfg.per_image, classes=cfg.classes, bins=cfg.bins)
    return CrossEntropyLovaszLoss(
        lovasz_weight=cfg.lovasz_weight, per_image=cfg.per_image, classes=cfg.classes, bins=cfg.bins
    )


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def evaluate(model: nn.Module, split: datasets.SegmentationSplit) -> dict:
    pred = predict(model, split.images)
    inter, union = intersection_union(pred, split.masks, datasets.NUM_CLASSES)
    return iou_scores(inter, union)


def save_checkpoint(path: Path, model: nn.Module, cfg: TrainConfig, metrics: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": asdict(cfg), "metrics": metrics}, path)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ckpt["config"]
    model = SmallUNet(1, datasets.NUM_CLASSES, cfg["width"])
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def train(cfg: TrainConfig, out_dir: str | Path, splits=None, progress: bool = True, log=print) -> dict:
    """Train one model; writes ``model.pt`` (the final model: no selection, so no metric is favoured) and
    ``results.json`` to ``out_dir``.

    Returns the results dict: config, per-epoch history, and validation/test metrics of the final model."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if splits is None:
        splits = datasets.load(cfg.data, sizes=(cfg.train_size, *datasets.EVAL_SIZES), size=cfg.image_size)
    train_split, val_split = splits["train"], splits["val"]
    torch.manual_seed(cfg.seed)
    model = SmallUNet(1, datasets.NUM_CLASSES, cfg.width)
    if cfg.init:
        init_model, _ = load_model(cfg.init)
        model.load_state_dict(init_model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_split) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.0 if cfg.init else 0.2
    )
    loss_fn = make_loss(cfg)
    sampler = None
    if cfg.equibatch:
        sampler = EquibatchSampler(
            class_presence(train_split.masks, datasets.NUM_CLASSES), cfg.batch_size, steps_per_epoch, seed=cfg.seed
        )
    g = torch.Generator().manual_seed(cfg.seed)
    cfg.history = []
    val: dict = {}
    t_start = time.time()
    for epoch in range(cfg.epochs):
        model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
            batches = list(sampler)
        else:
            perm = torch.randperm(len(train_split), generator=g)
            batches = [perm[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(steps_per_epoch)]
        losses = []
        for idx in _progress(batches, len(batches), f"epoch {epoch + 1}/{cfg.epochs}", progress):
            idx = torch.as_tensor(idx)
            logits = model(train_split.images[idx])
            loss = loss_fn(logits, train_split.masks[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        val = evaluate(model, val_split)
        row = {
            "epoch": epoch + 1,
            "train_loss": sum(losses) / len(losses),
            "val_miou_dataset": val["miou_dataset"],
            "val_miou_image": val["miou_image"],
            "seconds": time.time() - t_start,
        }
        cfg.history.append(row)
        log(
            f"  epoch {epoch + 1:2d}  loss {row['train_loss']:.4f}  val mIoU {val['miou_dataset']:.4f}"
            f"  per-image {val['miou_image']:.4f}  ({row['seconds']:.0f} s)"
        )
    save_checkpoint(out / "model.pt", model, cfg, val)
    results = {"config": asdict(cfg), "val": val, "test": evaluate(model, splits["test"])}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results
