"""Plots for the command line: training curves, per-class IoU bars, predictions beside ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(**kwargs):
    """A figure that draws with the Agg renderer, without pyplot: no global backend is changed."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def training_curves(runs: dict[str, list[dict]], path: Path, title: str, score_key: str, score_label: str) -> None:
    """``runs``: name → history rows (``epoch``, ``train_loss``, ``score_key``).  The first run is the
    pretraining; the others continue after it on the epoch axis.  Top row: each run's training loss on an
    axis of its own (the losses have different scales); bottom: the validation score of every run."""
    fig = _figure(figsize=(3.2 * max(len(runs), 2), 6.4))
    grid = fig.add_gridspec(2, len(runs))
    bottom = fig.add_subplot(grid[1, :])
    first = next(iter(runs.values()), [])
    for i, (name, rows) in enumerate(runs.items()):
        shift = first[-1]["epoch"] if i > 0 and first else 0
        epochs = [shift + r["epoch"] for r in rows]
        ax = fig.add_subplot(grid[0, i])
        ax.plot(epochs, [r["train_loss"] for r in rows], color=f"C{i}", marker=".")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.set_ylabel("training loss", fontsize=8)
        xs, ys = epochs, [r[score_key] for r in rows]
        if shift:  # a fine-tuning starts where the pretraining ended
            xs, ys = [shift, *xs], [first[-1][score_key], *ys]
        bottom.plot(xs, ys, color=f"C{i}", marker=".", label=name)
    bottom.set_xlabel("epoch")
    bottom.set_ylabel(score_label)
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def per_class_bars(per_class: dict[str, list[list[float]]], names: list[str], path: Path, title: str) -> None:
    """``per_class``: model → one per-class IoU list (test split) per seed.  Bars: the mean over seeds;
    error bars: the standard deviation over seeds (none for one seed)."""
    fig = _figure(figsize=(max(8, 1.3 * len(names) * max(1, len(per_class)) / 3), 4))
    ax = fig.subplots()
    k = len(per_class)
    width = 0.8 / max(k, 1)
    x = np.arange(len(names))
    for i, (name, seeds) in enumerate(per_class.items()):
        values = np.array(seeds, dtype=float)  # [seeds, classes]
        mean = np.nanmean(values, 0) if len(values) else np.zeros(len(names))
        sd = np.nanstd(values, 0, ddof=1) if len(values) > 1 else None
        ax.bar(x + (i - (k - 1) / 2) * width, np.nan_to_num(mean), width, yerr=sd, capsize=2, label=name)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("IoU (test)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}; bars: mean, lines: ± sd over seeds")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def class_colors(num_classes: int):
    """One colour per class (background black), shared by the masks and the colour key."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    base = matplotlib.colormaps["tab10"].colors
    colors = [(0.0, 0.0, 0.0), *[base[i % len(base)] for i in range(num_classes - 1)]]
    return ListedColormap(colors), colors


def predictions(images, masks, preds: dict[str, object], path: Path, names: list[str], count: int = 4) -> None:
    """Rows: images; columns: input, ground truth, then one prediction per variant; a colour key of the
    classes ``names`` below."""
    from matplotlib.patches import Patch

    cols = 2 + len(preds)
    n = len(names)
    fig = _figure(figsize=(2.2 * cols, 2.2 * count + 0.6))
    axes = fig.subplots(count, cols, squeeze=False)
    cmap, colors = class_colors(n)
    shown = dict(cmap=cmap, vmin=0, vmax=n - 1, interpolation="nearest")
    for r in range(count):
        axes[r, 0].imshow(images[r, 0].numpy(), cmap="gray")
        axes[r, 1].imshow(masks[r].numpy(), **shown)
        for c, (name, pred) in enumerate(preds.items()):
            axes[r, 2 + c].imshow(pred[r].numpy(), **shown)
            if r == 0:
                axes[r, 2 + c].set_title(name, fontsize=8)
    axes[0, 0].set_title("input", fontsize=8)
    axes[0, 1].set_title("ground truth", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    handles = [Patch(facecolor=colors[i], edgecolor="grey", label=names[i]) for i in range(n)]
    fig.legend(handles=handles, loc="lower center", ncol=min(n, 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
