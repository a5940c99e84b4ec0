"""SegmentationIoU as torchmetrics and Lightning users use it: tensors out, MetricCollection, log_dict, plot."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from lovasz.metrics import SUMMARIES, SegmentationIoU, intersection_union, iou_scores

NAMES = ["background", "cat", "dog"]


def _batch(seed, b=2, c=3, size=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, size, size, generator=g), torch.randint(0, c, (b, size, size), generator=g)


def test_compute_returns_tensors_and_named_per_class_entries():
    metric = SegmentationIoU(num_classes=3, ignore_index=255, class_names=NAMES)
    logits, target = _batch(0)
    target[0, 0] = 255
    metric.update(logits, target)
    values = metric.compute()
    for key in SUMMARIES:
        assert isinstance(values[key], torch.Tensor) and values[key].shape == () and values[key].dtype == torch.float32
    assert values["per_class_iou"].shape == (3,) and values["per_class_iou"].dtype == torch.float32
    assert values["confusion_matrix"].shape == (3, 3) and values["confusion_matrix"].dtype == torch.int64
    for c, name in enumerate(NAMES):
        assert values[f"iou_{name}"].shape == ()
        assert values[f"iou_{name}"] == values["per_class_iou"][c]
    inter, union = intersection_union(logits.argmax(1), target, 3, ignore_index=255)
    want = iou_scores(inter, union)
    for key in SUMMARIES:
        assert values[key].item() == pytest.approx(want[key], rel=1e-6)
    assert values["per_class_iou"].tolist() == pytest.approx(want["per_class_iou"], rel=1e-6)
    assert int(values["confusion_matrix"].sum()) == int((target != 255).sum())
    # without class_names there are no iou_<name> entries
    plain = SegmentationIoU(num_classes=3)
    plain.update(logits, target.clamp(max=2))
    assert not any(k.startswith("iou_") for k in plain.compute())


def test_empty_metric_gives_nan_not_an_error():
    metric = SegmentationIoU(num_classes=2)
    with pytest.warns(UserWarning, match="compute"):  # torchmetrics: compute before update
        values = metric.compute()
    assert all(math.isnan(values[key].item()) for key in SUMMARIES)
    assert values["confusion_matrix"].sum() == 0


def test_scalars_are_what_log_dict_accepts():
    metric = SegmentationIoU(num_classes=3, class_names=NAMES)
    metric.update(*_batch(1))
    values = metric.compute()
    scalars = metric.scalars(values, prefix="val_")
    assert set(scalars) == {f"val_{k}" for k in SUMMARIES} | {f"val_iou_{n}" for n in NAMES}
    assert all(v.shape == () for v in scalars.values())
    assert metric.scalars().keys() == metric.scalars(values).keys()


def test_metric_collection_and_forward():
    from torchmetrics import MetricCollection

    collection = MetricCollection({"iou": SegmentationIoU(num_classes=3, class_names=NAMES)}, prefix="val_")
    single = SegmentationIoU(num_classes=3, class_names=NAMES)
    for seed in range(3):
        batch_values = collection(*_batch(seed))  # forward: this batch's values, and accumulates
        assert batch_values["val_miou_dataset"].shape == ()
        single.update(*_batch(seed))
    got, want = collection.compute(), single.compute()
    assert set(got) == {f"val_{k}" for k in want}
    for key, value in want.items():
        assert torch.equal(got[f"val_{key}"].nan_to_num(-1), value.nan_to_num(-1)), key
    assert set(single.scalars(got)) == {f"val_{k}" for k in single.scalars()}
    # two IoU metrics in one collection: torchmetrics prefixes the clashing keys with the metric names
    pair = MetricCollection({"a": SegmentationIoU(num_classes=3), "b": SegmentationIoU(num_classes=3, ignore_index=0)})
    pair.update(*_batch(0))
    assert {"a_miou_dataset", "b_miou_dataset"} <= set(pair.compute())
    collection.reset()
    collection.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    assert collection.compute()["val_miou_dataset"] == 1.0


def test_argument_validation():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_classes"):
            SegmentationIoU(num_classes=bad)
    for bad in (2.0, True, "3", None):
        with pytest.raises(TypeError, match="num_classes"):
            SegmentationIoU(num_classes=bad)
    for bad in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="worst_fraction"):
            SegmentationIoU(num_classes=3, worst_fraction=bad)
    with pytest.raises(TypeError, match="worst_fraction"):
        SegmentationIoU(num_classes=3, worst_fraction="0.1")
    SegmentationIoU(num_classes=3, worst_fraction=1)  # the whole data set is fine
    for bad in (2.5, "255", True):
        with pytest.raises(TypeError, match="ignore_index"):
            SegmentationIoU(num_classes=3, ignore_index=bad)
    with pytest.raises(ValueError, match="class_names"):
        SegmentationIoU(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        SegmentationIoU(num_classes=2, class_names=["a", "a"])
    with pytest.raises(TypeError, match="class_names"):
        SegmentationIoU(num_classes=3, class_names="abc")
    with pytest.raises(TypeError, match="class_names"):
        SegmentationIoU(num_classes=2, class_names=[0, 1])
    metric = SegmentationIoU(num_classes=3)
    with pytest.raises(ValueError, match="channels"):
        metric.update(torch.randn(2, 4, 5, 5), torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="worst_fraction"):
        iou_scores(torch.zeros(1, 2), torch.ones(1, 2), worst_fraction=0)


def test_plot_follows_torchmetrics_conventions():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = SegmentationIoU(num_classes=3, class_names=NAMES)
    metric.update(*_batch(0))
    fig, ax = metric.plot()
    assert fig is not None and [t.get_text() for t in ax.get_legend().get_texts()] == list(SUMMARIES)
    fig, ax = metric.plot(kind="per_class")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == NAMES
    history = []
    for seed in range(3):
        metric.update(*_batch(seed))
        history.append(metric.compute())
    fig, ax = metric.plot(history)  # a curve per summary
    assert len(ax.get_lines()) >= len(SUMMARIES)
    _, existing = plt.subplots()
    fig, ax = metric.plot(kind="confusion_matrix", ax=existing)
    assert ax is existing
    with pytest.raises(ValueError, match="kind"):
        metric.plot(kind="bars")
    with pytest.raises(ValueError, match="one result"):
        metric.plot(history, kind="confusion_matrix")
    plt.close("all")


# ---------------------------------------------------------------- a real Lightning run


class _Segments(torch.utils.data.Dataset):
    """Tiny 1-channel images whose class is readable from the pixel value."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n, 8, 8), generator=g)
        self.labels[:, 0, 0] = 255
        self.images = self.labels.clamp(max=2).float().unsqueeze(1) + 0.8 * torch.randn(n, 1, 8, 8, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def test_lightning_trainer_logs_the_epoch_values(tmp_path):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger
    from torchmetrics import MetricCollection

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(1, 3, 3, padding=1)
            self.val_iou = SegmentationIoU(num_classes=3, ignore_index=255, class_names=NAMES)
            self.val_collection = MetricCollection(
                {"iou": SegmentationIoU(num_classes=3, ignore_index=255)}, prefix="coll_"
            )

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self(x), y, ignore_index=255)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            self.val_iou.update(logits, y)
            self.val_collection.update(logits, y)

        def on_validation_epoch_end(self):
            self.log_dict(self.val_iou.scalars(prefix="val_"))
            self.log_dict(self.val_iou.scalars(self.val_collection.compute()))
            self.val_iou.reset()
            self.val_collection.reset()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    train = torch.utils.data.DataLoader(_Segments(32, 0), batch_size=8, shuffle=True)
    val = torch.utils.data.DataLoader(_Segments(12, 1), batch_size=5)  # batches of 5, 5, 2
    module = Module()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=CSVLogger(tmp_path), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, train, val)

    # what was logged is the metric over the whole validation set, for the trained model
    data = val.dataset
    with torch.no_grad():
        pred = module(data.images).argmax(1)
    want = iou_scores(*intersection_union(pred, data.labels, 3, ignore_index=255))
    logged = trainer.callback_metrics
    for key in SUMMARIES:
        assert logged[f"val_{key}"].item() == pytest.approx(want[key], rel=1e-5), key
        assert logged[f"coll_{key}"].item() == pytest.approx(want[key], rel=1e-5), key
    for c, name in enumerate(NAMES):
        assert logged[f"val_iou_{name}"].item() == pytest.approx(want["per_class_iou"][c], rel=1e-5)
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(row.get("val_miou_dataset") for row in rows)

    # trainer.validate reuses the hook: the metric was reset, so the values are the same again
    again = trainer.validate(module, val, verbose=False)[0]
    assert again["val_miou_dataset"] == pytest.approx(want["miou_dataset"], rel=1e-5)
