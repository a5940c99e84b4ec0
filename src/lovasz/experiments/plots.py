"""Plots for the command line: training curves, per-class IoU bars, predictions beside ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(**kwargs):
    """A figure that draws with the Agg renderer, without pyplot: no global backend is changed."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


CURVES = (("val_miou_dataset", "validation dataset mIoU"), ("val_miou_image", "validation per-image mIoU"))


def training_curves(
    runs: dict[str, list[dict]], path: Path, title: str, curves: tuple[tuple[str, str], ...] = CURVES
) -> None:
    """``runs``: name → history rows (``epoch``, ``train_loss`` and the keys of ``curves``: pairs of a row key
    and its panel title).  A run whose name ends with "pretraining" comes first; the later ones continue
    after it on the epoch axis."""
    fig = _figure(figsize=(5 * (1 + len(curves)), 4))
    axes = fig.subplots(1, 1 + len(curves))
    offset = 0
    for name, rows in runs.items():
        # Fine-tuning curves continue after the pretraining curve, when one is given first.
        epochs = [offset + r["epoch"] for r in rows]
        if name.endswith("pretraining"):
            offset = rows[-1]["epoch"] if rows else 0
        axes[0].plot(epochs, [r["train_loss"] for r in rows], label=name)
        for ax, (key, _) in zip(axes[1:], curves, strict=True):
            ax.plot(epochs, [r[key] for r in rows], label=name)
    for ax, label in zip(axes, ["training loss", *(label for _, label in curves)], strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def per_class_bars(per_class: dict[str, list[float]], names: list[str], path: Path, title: str) -> None:
    """``per_class``: variant → per-class IoU (test split)."""
    fig = _figure(figsize=(12, 4))
    ax = fig.subplots()
    k = len(per_class)
    width = 0.8 / max(k, 1)
    x = np.arange(len(names))
    for i, (name, values) in enumerate(per_class.items()):
        ax.bar(x + (i - (k - 1) / 2) * width, np.nan_to_num(values), width, label=name)
    ax.set_xticks(x, names, rotation=30)
    ax.set_ylabel("IoU (test)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def predictions(images, masks, preds: dict[str, object], path: Path, num_classes: int, count: int = 4) -> None:
    """Rows: images; columns: input, ground truth, then one prediction per variant."""
    import matplotlib

    cols = 2 + len(preds)
    fig = _figure(figsize=(2.2 * cols, 2.2 * count))
    axes = fig.subplots(count, cols, squeeze=False)
    cmap = matplotlib.colormaps["tab20"].resampled(num_classes)
    for r in range(count):
        axes[r, 0].imshow(images[r, 0].numpy(), cmap="gray")
        axes[r, 1].imshow(masks[r].numpy(), cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest")
        for c, (name, pred) in enumerate(preds.items()):
            axes[r, 2 + c].imshow(pred[r].numpy(), cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest")
            if r == 0:
                axes[r, 2 + c].set_title(name, fontsize=8)
    axes[0, 0].set_title("input", fontsize=8)
    axes[0, 1].set_title("ground truth", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
