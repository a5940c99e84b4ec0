"""``lovasz demo``: does fine-tuning a converged cross-entropy model with a Lovász loss raise IoU?

For each seed *s*: a model trained from scratch with seed *s* and cross-entropy (binary: BCE) until its
validation score stops rising (:func:`~.train.plateau_gain`), then every fine-tuning variant started from
that checkpoint with seed *s*, for the same number of steps and on the same batches.  Each variant is
compared with continued cross-entropy of its own seed (paired differences, Student-t intervals, p-values
and Holm's adjustment for the number of comparisons), and the conclusions are printed in words.  The
protocol and the results are in ``docs/demo.md``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import data as datasets
from .data import count

# The default demo: 6 seeds, sized to stay within 20 minutes per task on 2 idle CPU cores (docs/demo.md, Time);
# --quick: a first look.
DEMO_DEFAULTS = dict(
    data="scaled-digits", seeds=6, pretrain_epochs=30, plateau=0.005, patience=3, lr_drops=1, finetune_epochs=2,
    train_size=1000, batch_size=8, width=16, lr=3e-3, finetune_lr=3e-4,
)  # fmt: skip
QUICK = dict(seeds=3, pretrain_epochs=5, patience=2, finetune_epochs=1, train_size=300)

# PaddleSeg's Cityscapes weighting 0.8·CE + 0.2·Lovász, divided by 0.8: AdamW's update does not change when
# the loss is multiplied by a constant (up to its eps), so the two train the same model.
LOVASZ_WEIGHT = 0.25
# BCE + Lovász hinge with equal weights: CE + Lovász, as in the DeepLabv3 result of the authors' repository.
HINGE_WEIGHT = 1.0
DEMO_VARIANTS = {
    "CE (continued)": dict(loss="ce"),
    "Lovász batch": dict(loss="lovasz", per_image=False),
    "Lovász per image": dict(loss="lovasz", per_image=True),
    f"CE + {LOVASZ_WEIGHT}·Lovász batch": dict(loss="ce+lovasz", per_image=False, lovasz_weight=LOVASZ_WEIGHT),
}
METRICS = [
    ("miou_dataset", "dataset mIoU"),
    ("miou_image", "per-image mIoU"),
    ("miou_class_image", "class-over-images mIoU"),
    ("miou_image_worst", "worst-10% images mIoU"),
]
# `lovasz demo --task binary`: object (every class > 0) vs background, a 1-channel model; `loss` of train_binary.
BINARY_VARIANTS = {
    "BCE (continued)": dict(loss="bce"),
    "Lovász hinge per image": dict(loss="hinge"),
    f"BCE + {HINGE_WEIGHT:g}·Lovász hinge per image": dict(loss="bce+hinge", lovasz_weight=HINGE_WEIGHT),
}
BINARY_METRICS = [
    ("iou_dataset", "dataset IoU (fg)"),
    ("iou_image", "per-image IoU (fg)"),
    ("iou_image_worst", "worst-10% images IoU (fg)"),
]


# ---------------------------------------------------------------------------------------------------------------
# Statistics: paired differences, Student-t intervals and p-values, Holm's adjustment.

# t_{0.975, df}: two-sided 95 % quantiles of Student's t for df = n - 1 = 1..9 (n = 2..10 seeds).
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622}


def t_975(df: int) -> float:
    """``t_{0.975, df}`` of Student's t: :data:`T_975` for ``df <= 9``; beyond, the Cornish–Fisher expansion in
    ``1/df`` around the normal quantile (within 1e-4 of the exact value for ``df >= 10``)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df in T_975:
        return T_975[df]
    z = 1.959963985
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(g / df ** (k + 1) for k, g in enumerate(terms))


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``, by its continued fraction (modified Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below the mean; use the symmetry above it
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * f / a


def t_pvalue(t: float, df: int) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom:
    ``I_{df/(df+t²)}(df/2, 1/2)``."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    return min(1.0, _betainc(df / 2, 0.5, df / (df + t * t)))


def paired_interval(diffs: list[float]) -> tuple[float, float | None, float | None]:
    """``(mean, low, high)``: the mean of ``diffs`` and its 95 % interval ``mean ± t_{0.975,n-1}·sd/√n``
    (``None`` bounds for a single value)."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None, None
    half = t_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def paired_pvalue(diffs: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test that the mean of ``diffs`` is 0 (``None`` for one value; 1 when
    every difference is 0, 0 when they are all equal and not 0)."""
    if len(diffs) < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return t_pvalue(mean / (sd / math.sqrt(len(diffs))), len(diffs) - 1)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order): the k-th smallest of m p-values is multiplied by
    ``m - k + 1``, made non-decreasing, capped at 1.  An adjusted p-value below 0.05 keeps the chance of
    one or more false findings among all m comparisons below 5 %."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _finding(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "no (1 seed: no interval)"
    if low > 0:
        return "yes, higher"
    if high < 0:
        return "yes, lower"
    return "no"


def agreement(first: str | Path, second: str | Path) -> tuple[int, int, list[str]]:
    """Whether two finished demos (their output folders) reach the same findings: ``(agree, total, lines)``.
    A comparison agrees where both runs call it the same (``yes, higher``, ``yes, lower`` or no finding);
    ``lines`` are a Markdown table of the comparisons that differ."""
    runs = []
    for folder in (first, second):
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise datasets.DataError(f"{path} does not exist: --agreement takes the folders of two finished demos")
        runs.append(json.loads(path.read_text()))
    a, b = (r["paired_differences"] for r in runs)
    if runs[0]["task"] != runs[1]["task"] or sorted(a) != sorted(b):
        raise datasets.DataError(f"{first} and {second} are not runs of the same demo (task, variants)")
    labels = dict(METRICS + BINARY_METRICS)
    data = runs[0].get("args", {}).get("data")
    if data in datasets.BUILTIN:
        labels.update({f"iou_class_{c}": f"IoU of class {n}" for c, n in enumerate(datasets.class_names(data))})

    def finding(row: dict) -> str:
        return "no" if row["finding"].startswith("no") else row["finding"]

    total, agree = 0, 0
    lines = [f"| variant | metric | {first} | {second} |", "|---|---|---|---|"]
    for variant, metrics in a.items():
        for metric, row in metrics.items():
            other = b[variant].get(metric)
            if other is None:
                continue
            total += 1
            if finding(row) == finding(other):
                agree += 1
            else:
                lines.append(
                    f"| {variant} | {labels.get(metric, metric)} | {finding(row)} ({row['mean']:+.4f}) | "
                    f"{finding(other)} ({other['mean']:+.4f}) |"
                )
    return agree, total, lines if agree < total else []


def _mean_std(values: list[float], sign: str = "") -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:{sign}.4f}"
    return f"{statistics.mean(values):{sign}.4f} ± {statistics.stdev(values):.4f}"


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def demo_table(
    results: dict[str, list[dict]], metrics: list[tuple[str, str]], baseline: str, caption: str
) -> tuple[str, dict]:
    """The demo's markdown tables: every row's mean ± sd over seeds, then each variant's paired difference to
    ``baseline``: mean, 95 % interval, "finding" only where the interval excludes 0, the paired t-test's
    p-value and its Holm adjustment over all the table's comparisons.  ``results``: row name → one scores
    dict per seed, in seed order; the variants are the rows after ``baseline``.  Returns the text and
    ``{variant: {metric: {mean, low, high, finding, p, p_holm}}}``."""
    names = list(results)
    n = len(results[baseline])
    variants = names[names.index(baseline) + 1 :]
    header = "| model | " + " | ".join(label for _, label in metrics) + " |"
    lines = [caption, "", header, "|---|" + "---:|" * len(metrics)]
    for name, runs in results.items():
        lines.append(f"| {name} | " + " | ".join(_mean_std([r[key] for r in runs]) for key, _ in metrics) + " |")
    differences: dict[str, dict] = {}
    for name in variants:
        differences[name] = {}
        for key, _ in metrics:
            diffs = [a[key] - b[key] for a, b in zip(results[name], results[baseline], strict=True)]
            mean, low, high = paired_interval(diffs)
            differences[name][key] = {
                "mean": mean, "low": low, "high": high, "finding": _finding(low, high), "p": paired_pvalue(diffs),
            }  # fmt: skip
    cells = [d for per_metric in differences.values() for d in per_metric.values()]
    if n > 1:
        for d, adjusted in zip(cells, holm([d["p"] for d in cells]), strict=True):
            d["p_holm"] = adjusted
    m = len(cells)
    df = f"t with {n - 1} degree{'s' if n > 2 else ''} of freedom" if n > 1 else "one seed: no interval"
    lines += [
        "",
        f"Paired by seed (same pretrained model, same batches): variant − {baseline}, mean over {n} seeds and "
        f"95 % interval (mean ± t·sd/√n, Student {df}). A difference is a finding only where its interval "
        f"excludes 0. There are {m} comparisons: with no real difference anywhere, about {0.05 * m:.1f} of them "
        "would be findings by chance. p: the paired t-test's p-value; Holm: adjusted for all "
        f"{m} comparisons (below 0.05: a finding that survives the number of comparisons).",
        "",
        f"| variant − {baseline} | metric | mean | 95 % interval | finding | p | Holm |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for name in variants:
        for key, label in metrics:
            d = differences[name][key]
            interval = "—" if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
            lines.append(
                f"| {name} | {label} | {d['mean']:+.4f} | {interval} | {d['finding']} | {_p(d['p'])} "
                f"| {_p(d.get('p_holm'))} |"
            )
    return "\n".join(lines), differences


def per_class_table(results: dict[str, list[dict]], names: list[str]) -> str:
    """Test IoU per class, mean ± sd over seeds, one row per model."""
    lines = [
        "Test IoU per class (over the whole test split), mean ± sd over seeds:",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name, runs in results.items():
        values = [_mean_std([r["per_class_iou"][c] for r in runs]) for c in range(len(names))]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def conclusions(differences: dict, metrics: list[tuple[str, str]], baseline: str, seeds: int) -> list[str]:
    """The tables' conclusions in words (markdown bullets): per variant, what is a finding (interval excludes
    0), whether it survives Holm's adjustment, and what is not a finding."""
    labels = dict(metrics)
    m = sum(len(v) for v in differences.values())
    if seeds < 2:
        return [f"* One seed: no intervals, so no findings; run with --seeds 5 (or more) to compare {baseline}."]
    out = [
        f"* {m} comparisons ({len(differences)} variants × {len(metrics)} metrics, {seeds} seeds, 95 % intervals): "
        f"if no loss made any difference, about {0.05 * m:.1f} of them would look like findings by chance. "
        "A finding that also survives Holm's adjustment (adjusted p < 0.05) is unlikely to be chance even "
        "counting every comparison."
    ]
    for name, per_metric in differences.items():
        up = [k for k, d in per_metric.items() if d["finding"] == "yes, higher"]
        down = [k for k, d in per_metric.items() if d["finding"] == "yes, lower"]
        none = [k for k in per_metric if k not in up and k not in down]

        def describe(keys: list[str], per_metric: dict = per_metric) -> str:
            parts = []
            for k in keys:
                d = per_metric[k]
                held = d.get("p_holm") is not None and d["p_holm"] < 0.05
                parts.append(
                    f"{labels[k]} {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
                    + (" (survives Holm)" if held else " (not after Holm)")
                )
            return "; ".join(parts)

        if not up and not down:
            spread = max(abs(per_metric[k]["mean"]) for k in per_metric)
            out.append(
                f"* **{name}** vs {baseline}: no finding; every interval includes 0 (mean differences within "
                f"±{spread:.4f})."
            )
            continue
        text = f"* **{name}** vs {baseline}:"
        if up:
            text += f" higher on {describe(up)}."
        if down:
            text += f" lower on {describe(down)}."
        if none:
            text += f" No finding on {', '.join(labels[k] for k in none)}."
        out.append(text)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The binary task: a 1-channel model, object (every class > 0) vs background.


def _binary_loss(name: str, bins: int | None, weight: float = 1.0):
    """Criterion ``(logits [B, H, W], foreground [B, H, W] bool) → loss`` of a binary variant: ``bce``,
    ``hinge`` (Lovász hinge per image) or ``bce+hinge`` (BCE + ``weight`` · hinge)."""
    import torch.nn.functional as F

    import lovasz

    def bce(logits, fg):
        return F.binary_cross_entropy_with_logits(logits, fg.float())

    def hinge(logits, fg):
        return lovasz.lovasz_hinge(logits, fg, per_image=True, bins=bins)

    if name == "bce":
        return bce
    if name == "hinge":
        return hinge
    if name == "bce+hinge":
        return lambda logits, fg: bce(logits, fg) + weight * hinge(logits, fg)
    raise ValueError(f"binary loss must be bce, hinge or bce+hinge, got {name!r}")


def predict_binary(model, images, batch_size: int = 128):
    """Foreground masks ``[N, H, W]`` int64 (logit > 0, i.e. probability > 0.5) of a 1-channel model."""
    import torch

    from .train import Runtime

    model.eval()
    rt = Runtime.of(model)
    with torch.no_grad():
        return torch.cat(
            [
                (model(rt.inputs(images[i : i + batch_size]))[:, 0] > 0).long().cpu()
                for i in range(0, len(images), batch_size)
            ]
        )


def evaluate_binary(model, split) -> dict:
    """Foreground IoU of a 1-channel model on a built-in split (every class > 0 is foreground): dataset IoU
    (``iou_dataset``), mean per-image IoU (``iou_image``), mean of the worst 10 % of images
    (``iou_image_worst``), and ``per_class_iou`` (background, foreground)."""
    from ..metrics import intersection_union, iou_scores

    inter, union = intersection_union(predict_binary(model, split.images), (split.masks > 0).long(), 2)
    fg = iou_scores(inter[:, 1:], union[:, 1:])
    return {
        "iou_dataset": fg["miou_dataset"],
        "iou_image": fg["miou_image"],
        "iou_image_worst": fg["miou_image_worst"],
        "per_class_iou": iou_scores(inter, union)["per_class_iou"],
    }


def train_binary(cfg, out_dir: str | Path, splits, progress: bool = True, log=print) -> dict:
    """Object vs background on the built-in canvases: :func:`~.train.train` with a 1-channel U-Net and
    ``cfg.loss`` one of ``bce`` (``binary_cross_entropy_with_logits``), ``hinge`` (``lovasz_hinge``, per
    image) or ``bce+hinge`` (their sum, the hinge weighted by ``cfg.lovasz_weight``).  The same seeding as
    ``train`` (the initialisation, then the batch order from ``cfg.seed``), optimizer, schedule
    (``cfg.schedule``) and stopping rule (``cfg.plateau``, on the validation dataset IoU).  Writes
    ``model.pt`` (readable by :func:`~.train.load_model`) and ``results.json``; returns the results."""
    import torch

    from .models import build_model
    from .train import (
        Runtime,
        _progress,
        atomic_save,
        atomic_write_text,
        load_model,
        make_schedule,
        plateau_step,
        resolve_device,
        stopping_summary,
    )

    device = resolve_device(cfg.device, cfg.amp)
    rt = Runtime(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_split, val_split, test_split = splits["train"], splits["val"], splits["test"]
    torch.manual_seed(cfg.seed)
    model = build_model("unet", 1, 1, cfg.width, log=log)
    if cfg.init:
        model.load_state_dict(load_model(cfg.init)[0].state_dict())
    model = rt.prepare(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(train_split) // cfg.batch_size)
    sched = make_schedule(opt, cfg, steps)
    loss_fn = _binary_loss(cfg.loss, cfg.bins, cfg.lovasz_weight)
    g = torch.Generator().manual_seed(cfg.seed)
    cfg.history = []
    scores: list[float] = []
    val: dict = {}
    t_start = time.time()
    for epoch in range(cfg.epochs):
        if plateau_step(opt, sched, cfg, scores):
            break
        model.train()
        perm = torch.randperm(len(train_split), generator=g)
        losses = []
        for i in _progress(range(steps), steps, f"epoch {epoch + 1}/{cfg.epochs}", progress):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            fg = (train_split.masks[idx] > 0).to(device)
            loss = loss_fn(model(rt.inputs(train_split.images[idx]))[:, 0], fg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
        val = evaluate_binary(model, val_split)
        scores.append(val["iou_dataset"])
        row = {
            "epoch": epoch + 1,
            "train_loss": sum(torch.stack(losses).float().tolist()) / len(losses),
            "val_iou_dataset": val["iou_dataset"],
            "val_iou_image": val["iou_image"],
            "seconds": time.time() - t_start,
        }
        cfg.history.append(row)
        log(
            f"  epoch {epoch + 1:2d}  loss {row['train_loss']:.4f}  val IoU (fg) {val['iou_dataset']:.4f}"
            f"  per-image {val['iou_image']:.4f}  ({row['seconds']:.0f} s into the run)"
        )
    config = {**asdict(cfg), "task": "binary"}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    architecture = {"model": "unet", "in_channels": 1, "num_classes": 1, "width": cfg.width}
    atomic_save({"model": state, "config": config, "architecture": architecture, "metrics": val}, out / "model.pt")
    results = {
        "config": config,
        "val": val,
        "test": evaluate_binary(model, test_split),
        "stopping": stopping_summary(cfg, "val_iou_dataset"),
    }
    atomic_write_text(json.dumps(results, indent=2), out / "results.json")
    return results


# ---------------------------------------------------------------------------------------------------------------
# The demo itself.


def plain(value):
    """Tuples as lists (how a value comes back from JSON), other values unchanged."""
    return list(value) if isinstance(value, tuple) else value


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("á", "a")).strip("-")


_NOT_COMPARED = ("history", "threads", "workers", "device")


def _run_or_skip(run, cfg, out: Path, splits, progress: bool) -> dict:
    """A demo run: skipped when ``out`` holds its finished results (same options), resumed when ``out`` holds
    its checkpoint of an unfinished run, trained otherwise."""
    import torch

    from .train import train

    wanted = {k: plain(v) for k, v in asdict(cfg).items() if k not in _NOT_COMPARED}

    def differences(saved: dict) -> list[str]:
        return [f"{k} {saved.get(k)!r} ≠ {v!r}" for k, v in wanted.items() if plain(saved.get(k)) != v]

    results = out / "results.json"
    if results.is_file():
        done = json.loads(results.read_text())
        diff = differences(done["config"])
        if diff:
            raise datasets.DataError(
                f"{out} holds a run with other options ({', '.join(diff[:3])}): choose another --out for the demo"
            )
        print(f"  finished before: {out} (skipped)")
        return {**done, "skipped": True}
    resume = False
    if run is train and (out / "model.pt").is_file():
        ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
        resume = "train_state" in ckpt and not differences(ckpt["config"])
    log = functools.partial(print, flush=True)  # the log of a run in the background is read as it goes
    start = time.time()
    res = run(cfg, out, splits, progress, log, resume=resume) if resume else run(cfg, out, splits, progress, log)
    # the run's own time and machine load, kept with its results: a later demo that skips it still reports them
    res["run"] = {
        "seconds": time.time() - start,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    results.write_text(json.dumps(res, indent=2))
    return res


class _Clock:
    """Elapsed time and an estimate of the whole demo from the training steps done so far: the pretraining
    of a seed not yet run is counted at the mean epochs of the seeds done (before the first: the cap)."""

    def __init__(self, seeds: int, cap: int, finetune_epochs: int, variants: int, steps_per_epoch: int):
        self.start = time.time()
        self.seeds, self.cap, self.ft, self.variants, self.spe = seeds, cap, finetune_epochs, variants, steps_per_epoch
        self.pretrain_epochs: list[int] = []
        self.steps = 0

    def done(self, epochs: int, pretraining: bool) -> None:
        self.steps += epochs * self.spe
        if pretraining:
            self.pretrain_epochs.append(epochs)

    def line(self) -> str:
        elapsed = time.time() - self.start
        if not self.steps:
            return f"{elapsed / 60:.1f} min elapsed"
        per_pretraining = statistics.fmean(self.pretrain_epochs) if self.pretrain_epochs else self.cap
        total_steps = self.seeds * (per_pretraining + self.variants * self.ft) * self.spe
        total = elapsed / self.steps * max(total_steps, self.steps)
        left = max(0.0, total - elapsed)
        return f"{elapsed / 60:.1f} min elapsed, about {left / 60:.1f} min left (of {total / 60:.1f})"


def run_demo(args) -> None:
    """``lovasz demo`` with the parsed ``args`` (see ``lovasz demo --help``)."""
    import torch

    from . import plots
    from .train import TrainConfig, load_model, predict, resolve_device, train

    if args.agreement:
        agree, total, lines = agreement(*args.agreement)
        print(f"the findings of {args.agreement[0]} and {args.agreement[1]} agree in {agree} of {total} comparisons")
        if Path(args.agreement[0]).resolve() == Path(args.agreement[1]).resolve():
            print("(the two folders are the same run)")
        print("\n" + "\n".join(lines) if lines else "no comparison differs")
        return
    binary = args.task == "binary"
    variants = BINARY_VARIANTS if binary else DEMO_VARIANTS
    metrics = list(BINARY_METRICS if binary else METRICS)
    baseline = next(iter(variants))
    pretrained = "BCE pretrained" if binary else "CE pretrained"
    pretraining = "BCE pretraining" if binary else "CE pretraining"
    score_key = "val_iou_dataset" if binary else "val_miou_dataset"
    run = train_binary if binary else train
    quick = "-quick" if args.quick else ""
    out = Path(args.out or (f"runs/demo-binary{quick}" if binary else f"runs/demo{quick}"))
    names = ["background", "foreground"] if binary else datasets.class_names(args.data)
    named = {} if binary else datasets.named_classes(args.data)
    for c in named:
        metrics.append((f"iou_class_{c}", f"IoU of class {names[c]}"))
    base = TrainConfig(
        data=args.data, bins=args.bins, width=args.width, train_size=args.train_size, batch_size=args.batch_size,
        threads=args.threads,
    )  # fmt: skip
    splits = datasets.load(args.data, sizes=(args.train_size, *datasets.EVAL_SIZES), size=base.image_size)
    device = resolve_device(base.device)
    where = f"{device.type}, {count(torch.get_num_threads(), 'thread')}" if device.type == "cpu" else str(device)
    task = "object vs background (1 output channel)" if binary else count(len(names), "class")
    rule = (
        f"until the best validation {'IoU' if binary else 'mIoU'} rose by less than {args.plateau} over "
        f"{count(args.patience, 'epoch')}"
        + (f", after dividing the learning rate by 10 at {count(args.lr_drops, 'plateau')}" if args.lr_drops else "")
        + f" (at most {args.pretrain_epochs})"
    )
    steps_per_epoch = max(1, args.train_size // args.batch_size)
    print(
        f"lovasz demo --task {args.task}{' --quick' if args.quick else ''} on {args.data} canvases, {task} "
        f"(train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])}); for each of "
        f"{count(args.seeds, 'seed')}: {pretraining} from scratch (lr {args.lr}) {rule}, then from it "
        f"{count(args.finetune_epochs * steps_per_epoch, 'step')} ({count(args.finetune_epochs, 'epoch')}, lr "
        f"{args.finetune_lr}, batches of {args.batch_size}) with each of: {', '.join(variants)}; Lovász "
        f"bins={args.bins}; {where}\n",
        flush=True,
    )
    clock = _Clock(args.seeds, args.pretrain_epochs, args.finetune_epochs, len(variants), steps_per_epoch)
    results: dict[str, list[dict]] = {pretrained: [], **{k: [] for k in variants}}
    stopping: list[dict] = []
    timing: list[dict | None] = []  # per run: its seconds and the load average at its end
    histories: dict[str, list] = {}
    models = {}
    progress = not args.no_progress
    runs_total = args.seeds * (1 + len(variants))
    k = 0
    for seed in range(args.seeds):
        k += 1
        print(f"[{k}/{runs_total}] seed {seed}: {pretraining} from scratch ({clock.line()})", flush=True)
        pre_dir = out / f"seed{seed}" / "pretrain"
        pre_cfg = replace(
            base, seed=seed, epochs=args.pretrain_epochs, lr=args.lr, schedule="constant", plateau=args.plateau,
            patience=args.patience, lr_drops=args.lr_drops, loss="bce" if binary else "ce",
        )  # fmt: skip
        pre = _run_or_skip(run, pre_cfg, pre_dir, splits, progress)
        timing.append(pre.get("run"))
        results[pretrained].append(_with_named(pre["test"], named))
        stop = pre.get("stopping") or {"epochs": len(pre["config"]["history"]), "stopped": "cap", "gains": []}
        stopping.append(stop)
        clock.done(0 if pre.get("skipped") else stop["epochs"], pretraining=True)
        last = [g for g in stop["gains"] if g is not None][-3:]
        drops = stop.get("lr_drops") or []
        print(
            f"  seed {seed}: pretraining used {count(stop['epochs'], 'epoch')} ({stop['stopped']}"
            + (f"; learning rate divided by 10 after epoch {', '.join(map(str, drops))}" if drops else "")
            + "); last gains of "
            f"the best validation score over {count(args.patience, 'epoch')}: "
            + (", ".join(f"{g:+.4f}" for g in last) or "—"),
            flush=True,
        )
        if seed == 0:
            histories[pretraining] = pre["config"]["history"]
        for name, change in variants.items():
            k += 1
            print(f"[{k}/{runs_total}] seed {seed}: fine-tuning, {name} ({clock.line()})", flush=True)
            cfg = replace(
                base, seed=seed, epochs=args.finetune_epochs, lr=args.finetune_lr, init=str(pre_dir / "model.pt"),
                **change,
            )  # fmt: skip
            res = _run_or_skip(run, cfg, out / f"seed{seed}" / _slug(name), splits, progress)
            results[name].append(_with_named(res["test"], named))
            timing.append(res.get("run"))
            clock.done(0 if res.get("skipped") else args.finetune_epochs, pretraining=False)
            if seed == 0:
                histories[name] = res["config"]["history"]
                models[name] = load_model(out / f"seed{seed}" / _slug(name) / "model.pt")[0]
    elapsed = time.time() - clock.start

    what = "foreground vs background" if binary else f"mIoU over the {count(len(names), 'class')}"
    used = ", ".join(str(s["epochs"]) for s in stopping)
    seconds = sum(t["seconds"] for t in timing if t)
    loads = [t["load_average"] for t in timing if t and t.get("load_average") is not None]
    load = ""
    if loads and device.type == "cpu":
        load = f"; mean 1-min load average {statistics.fmean(loads):.1f} on {count(os.cpu_count() or 1, 'CPU')}"
    caption = (
        f"`lovasz demo --task {args.task}{' --quick' if args.quick else ''}"
        f"{f' --threads {args.threads}' if args.threads else ''}`: test split of `{args.data}` "
        f"({len(splits['test'])} canvases), {what}; {count(args.seeds, 'seed')}, each pretrained from scratch "
        f"{rule}, epochs used: {used}; then fine-tuned from its own checkpoint for "
        f"{count(args.finetune_epochs * steps_per_epoch, 'step')}; {args.train_size} training canvases, batches of "
        f"{args.batch_size}, width {args.width}; rows: mean ± sd over seeds; {seconds / 60:.1f} min ({where}{load})."
    )
    table, differences = demo_table(results, metrics, baseline, caption)
    text = table
    if not binary:
        text += "\n\n" + per_class_table(results, names)
    words = conclusions(differences, metrics, baseline, args.seeds)
    if args.quick:
        words.append(
            f"* --quick: {count(args.seeds, 'seed')} on {args.train_size} canvases, a check that everything runs; "
            "not a result to rely on (the defaults are)."
        )
    text += "\n\nConclusions:\n\n" + "\n".join(words)
    print("\n" + text, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    summary = {
        "task": args.task,
        "elapsed_s": elapsed,
        "runs_s": seconds,
        "where": where,
        "load_average": loads,
        "args": vars(args),
        "pretraining": [{"seed": s, **stop} for s, stop in enumerate(stopping)],
        "test": results,
        "paired_differences": differences,
        "conclusions": words,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plots.training_curves(
        histories, out / "curves.png", f"{pretraining}, then fine-tuning (seed 0, {args.data})", score_key,
        "validation IoU (fg)" if binary else "validation mIoU",
    )  # fmt: skip
    per_class = {name: [r["per_class_iou"] for r in runs] for name, runs in results.items()}
    plots.per_class_bars(
        per_class, names, out / "per_class_iou.png", f"test IoU per class ({args.data}, {count(args.seeds, 'seed')})"
    )
    test = splits["test"]
    if binary:
        preds = {name: predict_binary(m, test.images[:4]) for name, m in models.items()}
        plots.predictions(test.images[:4], (test.masks[:4] > 0).long(), preds, out / "predictions.png", names)
    else:
        preds = {name: predict(m, test.images[:4]) for name, m in models.items()}
        plots.predictions(test.images[:4], test.masks[:4], preds, out / "predictions.png", names)
    print(f"\nwrote {out}/table.md, results.json, curves.png, per_class_iou.png, predictions.png, seed*/")


def _with_named(scores: dict, named: dict[int, str]) -> dict:
    """``scores`` plus ``iou_class_<c>`` (the test IoU of class ``c``) for the named classes."""
    return {**scores, **{f"iou_class_{c}": scores["per_class_iou"][c] for c in named}}
