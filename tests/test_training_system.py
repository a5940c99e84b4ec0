"""Data generation, the model, and the command line (small, fast settings)."""

from __future__ import annotations

import json

import pytest
import torch

from lovasz.experiments import data
from lovasz.experiments.cli import main
from lovasz.experiments.models import SmallUNet


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOVASZ_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", ["digits", "fashion"])
def test_canvases_are_deterministic_and_well_formed(name):
    if not data.available(name):
        pytest.skip(f"{name} data not installed")
    a = data.load(name, sizes=(20, 5, 5), size=40, seed=1)
    b = data.load(name, sizes=(20, 5, 5), size=40, seed=1, cache=False)
    c = data.load(name, sizes=(20, 5, 5), size=40, seed=2, cache=False)
    for split in ("train", "val", "test"):
        assert torch.equal(a[split].images, b[split].images) and torch.equal(a[split].masks, b[split].masks)
    assert not torch.equal(a["train"].masks, c["train"].masks)
    assert a["train"].images.shape == (20, 1, 40, 40) and a["train"].masks.shape == (20, 40, 40)
    masks = a["train"].masks
    assert masks.min() >= 0 and masks.max() < data.NUM_CLASSES
    assert len(masks.unique()) > 5  # several object classes besides background
    # every labelled pixel lies on an object stroke: bright in the (noisy) image
    img = a["train"].images[:, 0]
    assert img[masks > 0].mean() > img[masks == 0].mean() + 0.3


def test_unknown_data_set_and_bad_size():
    with pytest.raises(ValueError, match="digits"):
        data.load("cifar")
    with pytest.raises(ValueError, match="at least 28"):
        data.load("digits", size=20)


def test_model_shapes():
    assert SmallUNet(1, 11, width=8)(torch.randn(2, 1, 32, 32)).shape == (2, 11, 32, 32)


def test_cli_train_finetune_eval(tmp_path, capsys):
    common = ["--train-size", "64", "--epochs", "2", "--batch-size", "16", "--width", "8", "--no-progress"]
    main(["train", *common, "--out", str(tmp_path / "ce")])
    results = json.loads((tmp_path / "ce" / "results.json").read_text())
    assert len(results["config"]["history"]) == 2 and "miou_dataset" in results["test"]
    init = str(tmp_path / "ce" / "model.pt")
    finetune = ["--loss", "ce+lovasz", "--per-image", "--equibatch", "--init", init, "--out", str(tmp_path / "ft")]
    main(["train", *common, *finetune])
    ft = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert ft["config"]["init"].endswith("model.pt") and ft["config"]["loss"] == "ce+lovasz"
    main(["eval", "--checkpoint", str(tmp_path / "ft" / "model.pt"), "--json", str(tmp_path / "scores.json")])
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["miou_dataset"] == pytest.approx(ft["test"]["miou_dataset"])
    assert "per-image mIoU" in capsys.readouterr().out


def test_cli_demo_small(tmp_path, capsys):
    main(["demo", "--seeds", "2", "--pretrain-epochs", "1", "--finetune-epochs", "1", "--train-size", "32",
          "--width", "8", "--no-progress", "--out", str(tmp_path / "demo")])  # fmt: skip
    out = capsys.readouterr().out
    assert "| Lovász per image |" in out and "±" in out
    for f in ("table.md", "results.json", "curves.png", "per_class_iou.png", "predictions.png"):
        assert (tmp_path / "demo" / f).stat().st_size > 0
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(res["test"]) == {
        "CE pretrained",
        "CE (continued)",
        "Lovász batch",
        "Lovász per image",
        "Lovász per image, all classes",
    }
    assert all(len(v) == 2 for v in res["test"].values())  # one pretraining per seed (tests/test_demo.py)
    assert "| variant − CE (continued) |" in out


def test_engine_benchmark_runs():
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_engine.py"
    args = ["--sizes", "1x3x8x8", "--methods", "ce", "exact", "fast", "--repeats", "1"]
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True).stdout
    assert "lovasz binned" in out and "| 1x3x8x8 |" in out and "error" not in out.lower()


def test_cli_has_no_bench_command(capsys):
    with pytest.raises(SystemExit):
        main(["bench"])
    assert "invalid choice" in capsys.readouterr().err
