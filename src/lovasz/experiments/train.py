"""Training and evaluation loops used by the ``lovasz`` command line (``train``, ``eval``, ``demo``)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..metrics import intersection_union, iou_scores
from ..modules import CrossEntropyLovaszLoss, LovaszSoftmaxLoss
from ..sampling import EquibatchSampler, class_presence
from . import data as datasets
from .distributed import DistContext
from .distributed import setup as setup_distributed
from .models import build_model

LOSSES = ("ce", "lovasz", "ce+lovasz")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    data: str = "digits"
    loss: str = "ce"  # ce | lovasz | ce+lovasz
    per_image: bool = False
    classes: str = "present"  # Lovász class selection: present | all
    lovasz_weight: float = 1.0  # λ in ce + λ·lovasz
    bins: int | str | None = 4096  # None: exact engine; "auto": the library's choice
    epochs: int = 5
    batch_size: int | None = 32  # None: a quarter of the training images, at most 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    equibatch: bool = False
    seed: int = 0
    init: str | None = None  # checkpoint to fine-tune from
    width: int = 16
    train_size: int = 1500
    image_size: int | None = None  # canvas side of the built-in data sets (None: the data set's own)
    threads: int | None = None
    # data read from disk (--data voc | cityscapes | folder)
    root: str | None = None
    num_classes: int | None = None  # folder layout only (voc: 21, cityscapes: 19)
    val_fraction: float = 0.1  # folder layout: share of the pairs held out for validation
    val_root: str | None = None  # folder layout: a second folder (images/, masks/) that is the validation split
    crop_size: int | str | None = 512  # training crops; None: whole (scaled) images; "auto": fit the images
    scale: tuple[float, float] = (0.5, 2.0)  # random scale range of the training augmentation
    workers: int = 0  # DataLoader worker processes
    # model and hardware
    model: str = "unet"  # unet | deeplabv3_resnet50 | fcn_resnet50 | smp:<Arch>:<encoder>
    weights: str | None = None  # local state dict to initialise the model from
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    # under torchrun: the Lovász term over the global batch (all ranks) or each rank's slice
    lovasz_sync: str = "global"  # global | local
    # learning-rate schedule: one-cycle over `epochs`, or constant after one epoch of linear warm-up
    schedule: str = "one-cycle"  # one-cycle | constant
    # stop early when the best validation score rose by less than `plateau` over the last `patience` epochs
    plateau: float | None = None
    patience: int = 3
    # with `plateau`: at the first `lr_drops` plateaus the learning rate is divided by 10 and training goes on
    lr_drops: int = 0
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


def make_loss(cfg: TrainConfig, process_group=None) -> nn.Module:
    """The training criterion of ``cfg.loss``: cross-entropy, Lovász-Softmax, or CE + λ·Lovász; with a
    ``process_group``, the Lovász term is that of the global batch (:mod:`lovasz.distributed`)."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    # On-disk data: void pixels (255) and the padding of crops and batches count nowhere.  The canvases have
    # no void label and keep exactly the losses they always had.
    ignore = {"ignore_index": datasets.IGNORE_INDEX} if cfg.data in datasets.FILE_LAYOUTS else {}
    if cfg.loss == "ce":
        return nn.CrossEntropyLoss(**ignore)
    group = {"process_group": process_group} if process_group is not None else {}
    if cfg.loss == "lovasz":
        return LovaszSoftmaxLoss(per_image=cfg.per_image, classes=cfg.classes, bins=cfg.bins, **ignore, **group)
    return CrossEntropyLovaszLoss(
        lovasz_weight=cfg.lovasz_weight, per_image=cfg.per_image, classes=cfg.classes, bins=cfg.bins, **ignore,
        **group,
    )  # fmt: skip


def resolve_device(device: str = "auto", amp: str = "none") -> torch.device:
    """``device`` (auto | cpu | cuda; auto = cuda if available) as a ``torch.device``, after checking that it
    can run ``amp``.  ``ValueError`` (one line) for cuda without CUDA, fp16 off CUDA, bf16 on a GPU without
    bf16, or an unknown value."""
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {DEVICES}, got {device!r}")
    if amp not in AMP_MODES:
        raise ValueError(f"--amp must be one of {AMP_MODES}, got {amp!r}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError(f"--device cuda: CUDA is not available (torch {torch.__version__}); use --device cpu")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu")
    if amp == "fp16" and dev.type != "cuda":
        raise ValueError(
            "--amp fp16 needs a CUDA device (fp16 autocast with a gradient scaler); "
            f"this run is on the CPU{' (--device auto: no CUDA here)' if device == 'auto' else ''}: use --amp bf16"
        )
    if amp == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--amp bf16: this GPU does not support bfloat16; use --amp fp16")
    return dev


class Runtime:
    """Where and how the model runs: device, autocast dtype (``amp``) and memory format."""

    def __init__(self, device: torch.device, amp: str = "none", channels_last: bool = False) -> None:
        self.device = device
        self.dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.channels_last = channels_last

    @classmethod
    def of(cls, model: nn.Module, amp: str = "none", channels_last: bool = False) -> Runtime:
        return cls(next(model.parameters()).device, amp, channels_last)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, batch_size: int = 128, amp: str = "none", channels_last: bool = False
) -> torch.Tensor:
    """Class ids ``[N, H, W]`` (on the CPU) of ``images`` ``[N, C, H, W]``, run where the model is."""
    model.eval()
    rt = Runtime.of(model, amp, channels_last)
    preds = []
    for i in range(0, len(images), batch_size):
        with rt.autocast():
            preds.append(model(rt.inputs(images[i : i + batch_size])).argmax(1).cpu())
    return torch.cat(preds)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split,
    num_classes: int | None = None,
    *,
    batch_size: int = 8,
    workers: int = 0,
    amp: str = "none",
    channels_last: bool = False,
    ctx: DistContext | None = None,
) -> dict:
    """IoU scores (:func:`lovasz.metrics.iou_scores`) of ``model`` on ``split``: a built-in
    :class:`~.data.SegmentationSplit`, or an on-disk :class:`~.data.FileSegmentation` (read in batches of
    ``batch_size`` with :func:`~.data.pad_collate`; void and padding pixels count nowhere).

    With a :class:`~.distributed.DistContext` of several ranks, every rank predicts a contiguous shard of
    the images and the per-image intersection and union counts are gathered in order, so every rank gets
    the scores a single process computes on the whole split, for a ``world``-th of the work."""
    world, rank = (ctx.world, ctx.rank) if ctx is not None else (1, 0)
    n = len(split.images) if isinstance(split, datasets.SegmentationSplit) else len(split)
    lo, hi = n * rank // world, n * (rank + 1) // world  # this rank's shard
    inter, union = _intersection_union(model, split, num_classes, lo, hi, batch_size, workers, amp, channels_last)
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, (inter, union))
        inter, union = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return iou_scores(inter, union)


def _intersection_union(model, split, num_classes, lo, hi, batch_size, workers, amp, channels_last):
    """Per-image intersection and union counts ``[hi - lo, C]`` of images ``lo..hi`` of ``split``."""
    if isinstance(split, datasets.SegmentationSplit):
        pred = predict(model, split.images[lo:hi], amp=amp, channels_last=channels_last)
        return intersection_union(pred, split.masks[lo:hi], num_classes or datasets.NUM_CLASSES)
    num_classes = num_classes or split.num_classes
    model.eval()
    rt = Runtime.of(model, amp, channels_last)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(split, range(lo, hi)), batch_size=batch_size, num_workers=workers,
        collate_fn=datasets.pad_collate, pin_memory=rt.device.type == "cuda",
    )  # fmt: skip
    inters = [torch.zeros(0, num_classes, dtype=torch.int64)]  # an empty shard still has a shape
    unions = [torch.zeros(0, num_classes, dtype=torch.int64)]
    for images, masks in loader:
        with rt.autocast():
            pred = model(rt.inputs(images)).argmax(1)
        inter, union = intersection_union(pred, masks.to(pred.device), num_classes, datasets.IGNORE_INDEX)
        inters.append(inter.cpu())
        unions.append(union.cpu())
    return torch.cat(inters), torch.cat(unions)


def _architecture(cfg: TrainConfig) -> dict:
    """What :func:`load_model` needs to rebuild the model: plain Python values only."""
    return {
        "model": cfg.model,
        "in_channels": 1 if cfg.data in datasets.BUILTIN else 3,
        "num_classes": datasets.num_classes_of(cfg.data, cfg.num_classes),
        "width": cfg.width,
    }


def save_checkpoint(path: Path, model: nn.Module, cfg: TrainConfig, metrics: dict, train_state=None) -> None:
    """``{"model": state dict, "config": dict, "architecture": dict, "metrics": dict}`` (and ``train_state``,
    what ``--resume`` needs): tensors and plain Python values only, so :func:`load_model` reads it with
    ``torch.load(weights_only=True)``; written atomically (:func:`atomic_save`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {"model": state, "config": asdict(cfg), "architecture": _architecture(cfg), "metrics": metrics}
    if train_state is not None:
        ckpt["train_state"] = train_state
    atomic_save(ckpt, path)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """The model of a ``lovasz train`` checkpoint (on the CPU) and the checkpoint dict; loaded with
    ``weights_only=True`` (no code from the file runs)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    arch = architecture_of(ckpt)
    model = build_model(arch["model"], arch["in_channels"], arch["num_classes"], arch["width"])
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    """Training stopped by Ctrl-C (``KeyboardInterrupt``); ``epochs`` epochs are saved in ``path``."""

    def __init__(self, epochs: int, path: Path) -> None:
        super().__init__(f"interrupted after {datasets.count(epochs, 'saved epoch')} ({path})")
        self.epochs = epochs
        self.path = path


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and ``os.replace``: the file is the old one or the
    new one, never half written (an interruption leaves no partial checkpoint)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def one_cycle(opt, lr: float, total_steps: int, warmup: bool) -> torch.optim.lr_scheduler.OneCycleLR:
    """The one-cycle schedule: 20 % warm-up (none when fine-tuning).  ``OneCycleLR`` divides by
    ``pct_start · total_steps − 1``; where that is 0 (e.g. 5 steps in all) the warm-up is dropped."""
    pct = 0.2 if warmup else 0.0
    if abs(pct * total_steps - 1) < 1e-9:
        pct = 0.0
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=pct)


SCHEDULES = ("one-cycle", "constant")


def make_schedule(opt, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``cfg.schedule``: ``one-cycle`` (:func:`one_cycle` over ``cfg.epochs``, warm-up unless fine-tuning from
    ``cfg.init``) or ``constant`` (the learning rate rises linearly over the first epoch, then stays at
    ``cfg.lr``, divided by 10 at each plateau that does not stop training (:func:`plateau_step`): a
    schedule that does not depend on when training stops, for :func:`plateau_gain`)."""
    if cfg.schedule == "one-cycle":
        return one_cycle(opt, cfg.lr, cfg.epochs * steps_per_epoch, warmup=not cfg.init)
    if cfg.schedule == "constant":
        scale = [1.0]  # LR_DROP ** (plateaus so far): set by plateau_step
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / steps_per_epoch) * scale[0])
        sched.lr_scale = scale  # type: ignore[attr-defined]
        return sched
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")


def plateau_gain(scores: list[float], patience: int) -> float | None:
    """How much the last ``patience`` epochs raised the best score: ``max(scores) − max(scores[:-patience])``
    (``None`` while there are ``patience`` scores or fewer).  Training with ``plateau = g`` stops after the
    first epoch where this is below ``g``."""
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if len(scores) <= patience:
        return None
    return max(scores) - max(scores[:-patience])


LR_DROP = 0.1  # the factor of the learning rate at each plateau before the last (``cfg.lr_drops``)


def plateau_stages(cfg: TrainConfig, scores: list[float]) -> tuple[list[int], bool]:
    """The plateau rule on the validation ``scores`` so far (one per epoch): ``(drops, stop)``, the epochs after
    which the learning rate was divided by 10 and whether training stops now.  After each epoch that ends
    at least ``cfg.patience`` epochs after the last drop, a gain (:func:`plateau_gain`) below ``cfg.plateau``
    is a plateau: one of the first ``cfg.lr_drops`` drops the learning rate, the next one stops training."""
    drops: list[int] = []
    if cfg.plateau is None:
        return drops, False
    for e in range(1, len(scores) + 1):
        if e - (drops[-1] if drops else 0) < cfg.patience:
            continue
        gain = plateau_gain(scores[:e], cfg.patience)
        if gain is None or gain >= cfg.plateau:
            continue
        if len(drops) == cfg.lr_drops:
            return drops, True
        drops.append(e)
    return drops, False


def plateau_step(opt, sched, cfg: TrainConfig, scores: list[float]) -> bool:
    """The plateau rule before an epoch, on the validation ``scores`` so far (:func:`plateau_stages`): whether
    training stops; otherwise the ``constant`` schedule is scaled by ``LR_DROP`` per plateau so far, from
    the next step on (other schedules are left as they are)."""
    drops, stop = plateau_stages(cfg, scores)
    holder = getattr(sched, "lr_scale", None)
    scale = LR_DROP ** len(drops)
    if stop or holder is None or holder[0] == scale:
        return stop
    holder[0] = scale
    for group, fn, base in zip(opt.param_groups, sched.lr_lambdas, sched.base_lrs, strict=True):
        group["lr"] = base * fn(sched.last_epoch)
    return False


def stopping_summary(cfg: TrainConfig, key: str) -> dict:
    """``{"epochs": used, "cap": cfg.epochs, "stopped": "plateau" | "cap", "rule": ..., "lr_drops": [...],
    "gains": [...]}``: ``lr_drops`` the epochs after which the learning rate was divided by 10, ``gains``
    :func:`plateau_gain` after each epoch (``None`` before there are enough epochs)."""
    scores = [row[key] for row in cfg.history]
    gains = [plateau_gain(scores[: e + 1], cfg.patience) for e in range(len(scores))]
    drops, stop = plateau_stages(cfg, scores)
    rule = None
    if cfg.plateau is not None:
        rule = f"a plateau: the best {key} rose by less than {cfg.plateau} over the last {cfg.patience} epochs"
        if cfg.lr_drops:
            rule += f"; the first {cfg.lr_drops} divide the learning rate by 10, the next stops training"
    return {
        "epochs": len(scores),
        "cap": cfg.epochs,
        "stopped": "plateau" if stop else "cap",
        "rule": rule,
        "lr_drops": drops,
        "scores": scores,
        "gains": gains,
    }


_ARCH_FLAGS = {"model": "--model", "in_channels": "--data", "num_classes": "--num-classes / --data", "width": "--width"}
_ARCH_WHAT = {"model": "model", "in_channels": "input channels", "num_classes": "classes", "width": "width"}


def architecture_of(ckpt: dict) -> dict:
    """The architecture a checkpoint was trained with (old checkpoints: the U-Net on the canvases)."""
    arch = ckpt.get("architecture") or {"model": "unet", "in_channels": 1, "num_classes": datasets.NUM_CLASSES}
    return {"width": ckpt.get("config", {}).get("width", 16), **arch}


def architecture_mismatch(theirs: dict, ours: dict) -> list[str]:
    """``["classes: 5 in the checkpoint, 3 in this run (--num-classes / --data)", ...]``; empty if they agree
    (the width counts for the U-Net only)."""
    out = []
    for key, what in _ARCH_WHAT.items():
        if key == "width" and ours["model"] != "unet":
            continue
        if theirs.get(key) != ours.get(key):
            out.append(f"{what}: {theirs.get(key)} in the checkpoint, {ours.get(key)} in this run ({_ARCH_FLAGS[key]})")
    return out


def check_init(path: str | Path, arch: dict) -> None:
    """``DataError`` naming both values when checkpoint ``path`` cannot initialise a model of ``arch``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    problems = architecture_mismatch(architecture_of(ckpt), arch)
    if problems:
        raise datasets.DataError(f"--init {path} does not fit this run: " + "; ".join(problems))


def _merge_problems(checks) -> list:
    """Run every check (callables); raise one ``DataError`` with all their problems, else return the results."""
    results, problems = [], []
    for check in checks:
        try:
            results.append(check())
        except datasets.DataError as exc:
            problems += [p for p in exc.problems or [str(exc)] if p not in problems]  # train and val: once
            results.append(None)
    if len(problems) == 1:
        raise datasets.DataError(problems[0])
    if problems:
        raise datasets.DataError(f"{len(problems)} problems in the data (listed above); nothing was trained", problems)
    return results


def _pow2_floor(n: int, multiple: int = 32) -> int:
    return max(multiple, n // multiple * multiple)


def _fit_to_data(cfg: TrainConfig, n_train: int, n_val: int, sizes, warn) -> None:
    """Fill in ``batch_size`` (None: a quarter of the training images, at most 32) and ``crop_size``
    (``"auto"``: the median training image's shorter side, rounded down to a multiple of 32, at most 512);
    warn where given values do not fit the data, naming better ones."""
    auto_batch = max(1, min(32, n_train // 4))
    if cfg.batch_size is None:
        cfg.batch_size = auto_batch
    elif cfg.batch_size > auto_batch and n_train // cfg.batch_size < 4:
        steps = max(1, n_train // cfg.batch_size)
        warn(
            f"--batch-size {cfg.batch_size} with {n_train} training images: {steps} optimizer "
            f"step{'s' if steps > 1 else ''} per epoch; --batch-size {auto_batch} gives {n_train // auto_batch}"
        )
    if sizes is not None:
        side = int(np.median([min(h, w) for h, w in sizes])) if sizes else 512  # a few small images: no matter
        largest = max(max(h, w) for h, w in sizes) if sizes else 512
        fit = min(512, _pow2_floor(side))
        if cfg.crop_size == "auto":
            cfg.crop_size = fit
        elif cfg.crop_size is not None and cfg.crop_size > largest * max(cfg.scale):
            warn(
                f"--crop-size {cfg.crop_size} is larger than every training image (at most {largest} pixels a side, "
                f"scaled by at most {max(cfg.scale)}): the crops are mostly void padding; --crop-size {fit} fits"
            )
    elif cfg.crop_size == "auto":
        cfg.crop_size = 512
    if n_val < 5:
        warn(
            f"only {n_val} validation image{'s' if n_val != 1 else ''}: its scores say little; hold out more with "
            "--val-fraction, or give a validation folder with --val-root"
        )


def _class_warnings(cfg: TrainConfig, summaries: dict, warn) -> None:
    for what, summary in summaries.items():
        absent = summary.absent
        if not absent:
            continue
        n = len(summary.class_pixels)
        ids = ", ".join(map(str, absent[:12])) + (f" and {len(absent) - 12} more" if len(absent) > 12 else "")
        hint = ""
        present = [c for c in range(n) if c not in absent]
        if cfg.data == "folder" and present and max(present) < n - 1 and what == "training masks":
            hint = f"; the masks hold ids up to {max(present)}: is --num-classes {n} right?"
        warn(
            f"class{'es' if len(absent) > 1 else ''} {ids} of {n} never occur{'s' if len(absent) == 1 else ''} "
            f"in the {what}: {'their' if len(absent) > 1 else 'its'} IoU is nan there{hint}"
        )


def prepare_data(cfg: TrainConfig, splits=None, progress: bool = True, warn=_warn, check: bool = True):
    """``(train, val, test)`` of ``cfg``: built-in :class:`~.data.SegmentationSplit` s, or on-disk data sets
    (no labelled test split: ``test`` is ``val``), every on-disk file checked first
    (:func:`~.data.check_dataset`: all problems in one :class:`~.data.DataError`).  Fills in ``cfg``'s
    automatic ``batch_size`` / ``crop_size`` and warns about values that do not fit the data."""
    if cfg.data in datasets.FILE_LAYOUTS:
        common = dict(num_classes=cfg.num_classes, seed=cfg.seed, val_fraction=cfg.val_fraction, val_root=cfg.val_root)
        train_set, val_set = _merge_problems(
            [lambda s=s: datasets.build_dataset(cfg.data, cfg.root, s, **common) for s in ("train", "val")]
        )
        summaries = None
        if check:
            summaries = _merge_problems(
                [lambda: datasets.check_datasets({"training data": train_set, "validation data": val_set}, progress)]
            )[0]
        _fit_to_data(cfg, len(train_set), len(val_set), summaries[0].sizes if summaries else None, warn)
        if summaries:
            _class_warnings(cfg, {"training masks": summaries[0], "validation masks": summaries[1]}, warn)
        train_set.augment = datasets.Augment(crop_size=cfg.crop_size, scale=tuple(cfg.scale))
        return train_set, val_set, val_set
    if splits is None:
        splits = datasets.load(cfg.data, sizes=(cfg.train_size, *datasets.EVAL_SIZES), size=cfg.image_size)
    _fit_to_data(cfg, len(splits["train"]), len(splits["val"]), None, warn)
    return splits["train"], splits["val"], splits["test"]


_FOLDER_NEEDS = {
    "--root DIR (the folder of images/ and masks/)": "root",
    "--num-classes N (the number of class ids in the masks, 255 = void)": "num_classes",
}


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    splits=None,
    progress: bool = True,
    log=print,
    *,
    resume: bool = False,
    warn=_warn,
    check_data: bool = True,
) -> dict:
    """Train one model; writes ``model.pt`` (a checkpoint after every epoch, written atomically: the model,
    the optimizer, schedule and random states, the epoch and best validation score, so that ``resume``
    continues exactly where it stopped) and, at the end, ``results.json`` to ``out_dir``.  The final model is
    the last epoch's (no selection, so no metric is favoured).

    Returns the results dict: config, per-epoch history, and validation/test metrics of the final model.
    On-disk data sets (``voc``, ``cityscapes``, ``folder``) have no labelled test split: their ``test``
    scores are the validation split's (``results["test_split"] == "val"``).  Every on-disk file is checked
    before the first step (``check_data``); an ``--init`` checkpoint of another architecture is refused.
    Ctrl-C raises :class:`Interrupted` (the epochs done are saved).

    Under ``torchrun`` (:mod:`.distributed`) every rank trains on its slice of each global batch in
    ``DistributedDataParallel``; every rank evaluates a shard of the validation and test images and the
    per-image counts are gathered (:func:`evaluate`: the scores of one process on the whole split); rank 0
    logs and writes the files; every rank returns the results."""
    device = resolve_device(cfg.device, cfg.amp)
    ctx, device = setup_distributed(device)
    if not ctx.main:
        progress = False
        log = warn = _quiet
    rt = Runtime(device, cfg.amp, cfg.channels_last)
    on_disk = cfg.data in datasets.FILE_LAYOUTS
    if cfg.data == "folder":
        missing = [what for what, value in _FOLDER_NEEDS.items() if getattr(cfg, value) is None]
        if missing:
            raise datasets.DataError(f"--data folder needs {' and '.join(missing)}")
    arch = _architecture(cfg)
    out = Path(out_dir)
    path = out / "model.pt"
    saved = None
    if resume:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    elif cfg.init:
        check_init(cfg.init, arch)
    if not ctx.main:
        ctx.barrier()  # rank 0 builds (and caches) the data first
    train_split, val_split, test_split = prepare_data(cfg, splits, progress, warn, check_data)
    if ctx.main:
        ctx.barrier()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, arch["in_channels"], arch["num_classes"], cfg.width, cfg.weights, log=log)
    if saved is not None:
        model.load_state_dict(saved["model"])
    elif cfg.init:
        init_model, _ = load_model(cfg.init)
        model.load_state_dict(init_model.state_dict())
    model = rt.prepare(model)
    if ctx.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    steps_per_epoch = max(1, len(train_split) // cfg.batch_size)
    sampler = None
    if cfg.equibatch:
        presence = train_split.class_presence() if on_disk else class_presence(train_split.masks, arch["num_classes"])
        drop_last = len(train_split) >= cfg.batch_size  # full batches only, as without --equibatch
        sampler = EquibatchSampler(presence, cfg.batch_size, seed=cfg.seed, drop_last=drop_last)
        steps_per_epoch = len(sampler)
    sched = make_schedule(opt, cfg, steps_per_epoch)
    loss_fn = make_loss(cfg, ctx.group if cfg.lovasz_sync == "global" else None)
    g = torch.Generator().manual_seed(cfg.seed)
    eval_kw = dict(amp=cfg.amp, channels_last=cfg.channels_last)
    if on_disk:
        eval_kw.update(batch_size=cfg.batch_size, workers=cfg.workers)
        log(
            f"  {cfg.data}: {len(train_split)} training images (crops {cfg.crop_size}, scale {tuple(cfg.scale)}, "
            f"batches of {cfg.batch_size}), {datasets.count(len(val_split), 'validation image')}; "
            f"{cfg.model} on {device}"
            + (f", {cfg.amp} autocast" if cfg.amp != "none" else "")
            + (", channels_last" if cfg.channels_last else "")
        )
    cfg.history = []
    val: dict = {}
    best = {"epoch": 0, "val_miou_dataset": None}
    first = 0
    if saved is not None:
        state = saved["train_state"]
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        g.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])
        cfg.history = list(saved["config"]["history"])
        val, best, first = saved["metrics"], dict(state["best"]), state["epoch"]
        log(f"  resuming {path} after epoch {first} of {cfg.epochs}")
    t_start = time.time() - (cfg.history[-1]["seconds"] if cfg.history else 0.0)
    done = first
    try:
        scores = [row["val_miou_dataset"] for row in cfg.history]  # on every rank: the stopping rule
        for epoch in range(first, cfg.epochs):
            if plateau_step(opt, sched, cfg, scores):
                break
            model.train()
            if sampler is not None:
                sampler.set_epoch(epoch)
                batches = list(sampler)
            else:
                perm = torch.randperm(len(train_split), generator=g)
                batches = [perm[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(steps_per_epoch)]
            if ctx.world > 1:  # the same global batches on every rank (same seed); each takes its slice
                batches = [ctx.shard(b) for b in batches]
            if on_disk:
                train_split.set_epoch(epoch)
                loader = torch.utils.data.DataLoader(
                    train_split, batch_sampler=[torch.as_tensor(b).tolist() for b in batches],
                    num_workers=cfg.workers, collate_fn=datasets.pad_collate, pin_memory=device.type == "cuda",
                )  # fmt: skip
            else:
                loader = (
                    (train_split.images[idx], train_split.masks[idx]) for idx in (torch.as_tensor(b) for b in batches)
                )
            losses = []
            for images, masks in _progress(loader, len(batches), f"epoch {epoch + 1}/{cfg.epochs}", progress):
                masks = masks.to(device, non_blocking=True)
                with rt.autocast():
                    logits = model(rt.inputs(images))
                    loss = loss_fn(logits, masks)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                sched.step()
                losses.append(loss.detach())
            train_loss = ctx.mean(sum(torch.stack(losses).float().tolist()) / len(losses))
            val = evaluate(_unwrap(model), val_split, arch["num_classes"], ctx=ctx, **eval_kw)  # sharded over ranks
            scores.append(val["miou_dataset"])
            if not ctx.main:
                continue
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_miou_dataset": val["miou_dataset"],
                "val_miou_image": val["miou_image"],
                "seconds": time.time() - t_start,
            }
            cfg.history.append(row)
            if best["val_miou_dataset"] is None or not val["miou_dataset"] <= best["val_miou_dataset"]:
                best = {"epoch": epoch + 1, "val_miou_dataset": val["miou_dataset"]}
            state = {
                "epoch": epoch + 1,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "batch_rng": g.get_state(),
                "torch_rng": torch.get_rng_state(),
                "best": best,
            }
            save_checkpoint(path, _unwrap(model), cfg, val, train_state=state)
            done = epoch + 1
            log(
                f"  epoch {epoch + 1:2d}  loss {row['train_loss']:.4f}  val mIoU {val['miou_dataset']:.4f}"
                f"  per-image {val['miou_image']:.4f}  ({row['seconds']:.0f} s into the run)"
            )
    except KeyboardInterrupt:
        if ctx.main and path.is_file():  # Ctrl-C may land between a save and the count: the file tells
            with contextlib.suppress(Exception):
                done = max(done, torch.load(path, map_location="cpu", weights_only=True)["train_state"]["epoch"])
        raise Interrupted(done, path) from None
    model = _unwrap(model)
    results = None
    # every rank takes part
    test = val if on_disk else evaluate(model, test_split, arch["num_classes"], ctx=ctx, **eval_kw)
    if ctx.main:
        if on_disk:
            log(f"  {cfg.data} has no labelled test split: the test scores are those of the val split")
            results = {"config": asdict(cfg), "val": val, "test": val, "test_split": "val", "best": best}
        else:
            results = {"config": asdict(cfg), "val": val, "test": test, "best": best}
        results["stopping"] = stopping_summary(cfg, "val_miou_dataset")
        atomic_write_text(json.dumps(results, indent=2), out / "results.json")
    ctx.barrier()
    if ctx.world > 1:
        results = ctx.broadcast(results)
    ctx.close()
    return results


@torch.no_grad()
def predict_files(
    model: nn.Module, files, out_dir: Path, in_channels: int, progress: bool = True, names=None, problems=None
) -> list[Path]:
    """Predicted masks of image files, one at a time (any size: padded to a multiple of 32 for the model,
    cropped back), written to ``out_dir`` as palette PNGs named after the input (``<stem>.png``, or
    ``names[i]``).  A 1-channel (binary) model's mask is its logit > 0.  An unreadable file raises a
    :class:`~.data.DataError`, or with a ``problems`` list is skipped and its problem appended there."""
    model.eval()
    rt = Runtime.of(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    black = -torch.tensor(datasets.RGB_MEAN) / torch.tensor(datasets.RGB_STD)
    written = []
    for k, path in enumerate(_progress(files, len(files), "predicting", progress)):
        try:
            x = datasets.read_input(path, in_channels)
        except datasets.DataError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
            continue
        h, w = x.shape[-2:]
        padded = torch.zeros(in_channels, -(-h // 32) * 32, -(-w // 32) * 32)
        if in_channels == 3:
            padded += black.view(3, 1, 1)
        padded[:, :h, :w] = x
        logits = model(rt.inputs(padded[None]))[0, :, :h, :w]
        pred = logits.argmax(0) if logits.shape[0] > 1 else (logits[0] > 0).long()
        target = out_dir / (names[k] if names is not None else f"{Path(path).stem}.png")
        datasets.save_mask(pred, target)
        written.append(target)
    return written


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0."""
