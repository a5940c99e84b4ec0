"""``lovasz train`` on your own data and hardware: the folder layout end to end, ``--amp``/``--channels-last``,
the device refusals, checkpoints read with ``weights_only=True``, and the optional model back ends
(torchvision, segmentation_models_pytorch) with their errors when missing."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lovasz.experiments import models, train
from lovasz.experiments.cli import main


@pytest.fixture
def folder(tmp_path):
    """A miniature folder layout: 6 RGB images 36×44 whose colour gives the class (3 classes), masks with a
    void border."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    colours = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200)], np.uint8)
    for k in range(6):
        mask = np.zeros((36, 44), np.uint8)
        mask[:, 15 + k :] = 1
        mask[8:20, 4:30] = 2
        image = colours[mask]
        mask[0] = 255
        Image.fromarray(image).save(root / "images" / f"{k:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{k:03d}.png")
    return root


def tiny(folder, out, *extra):
    return [
        "train", "--data", "folder", "--root", str(folder), "--num-classes", "3", "--epochs", "1",
        "--crop-size", "32", "--batch-size", "2", "--width", "4", "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def test_folder_end_to_end_and_checkpoint(folder, tmp_path, capsys):
    main(tiny(folder, tmp_path / "ce", "--device", "cpu"))
    res = json.loads((tmp_path / "ce" / "results.json").read_text())
    assert res["test_split"] == "val" and len(res["test"]["per_class_iou"]) == 3
    assert res["config"]["data"] == "folder" and res["config"]["num_classes"] == 3
    assert "per-class IoU: 0 " in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "ce" / "model.pt", weights_only=True)  # plain tensors and Python values
    assert ckpt["architecture"] == {"model": "unet", "in_channels": 3, "num_classes": 3, "width": 4}
    model, _ = train.load_model(tmp_path / "ce" / "model.pt")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    # fine-tuning with the Lovász loss (void and padding ignored) and class-balanced batches
    main(
        tiny(folder, tmp_path / "ft", "--loss", "ce+lovasz", "--equibatch", "--init", str(tmp_path / "ce" / "model.pt"))
    )
    ft = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert ft["config"]["loss"] == "ce+lovasz" and len(ft["config"]["history"]) == 1


def test_bf16_channels_last_on_cpu(folder, tmp_path):
    main(tiny(folder, tmp_path / "bf16", "--device", "cpu", "--amp", "bf16", "--channels-last", "--loss", "lovasz"))
    res = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert res["config"]["amp"] == "bf16" and res["config"]["channels_last"] is True
    assert np.isfinite(res["config"]["history"][0]["train_loss"])


def refusal(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no usage, no traceback
    return err


def test_device_refusals(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = ["--out", str(tmp_path / "x")]
    assert "--device cuda: CUDA is not available" in refusal(capsys, ["train", "--device", "cuda", *out])
    assert "--amp fp16 needs a CUDA device" in refusal(capsys, ["train", "--device", "cpu", "--amp", "fp16", *out])
    assert "--amp fp16 needs a CUDA device" in refusal(capsys, ["train", "--amp", "fp16", "--device", "cpu", *out])
    assert "no CUDA here" in refusal(capsys, ["train", "--amp", "fp16", *out])  # --device auto → cpu
    # the same checks for Python callers of train()
    with pytest.raises(ValueError, match="CUDA is not available"):
        train.train(train.TrainConfig(device="cuda"), tmp_path / "y")
    with pytest.raises(ValueError, match="fp16"):
        train.train(train.TrainConfig(amp="fp16"), tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_option_errors(capsys, tmp_path, folder):
    with pytest.raises(SystemExit):
        main(["train", "--model", "resnet", "--out", str(tmp_path)])
    assert "smp:<Arch>:<encoder>" in capsys.readouterr().err
    # data errors: one line, exit status 2, no traceback (tests/test_cli_data.py has the rest)
    assert "--num-classes" in refusal(
        capsys, ["train", "--data", "folder", "--root", str(folder), "--out", str(tmp_path / "a")]
    )
    assert "--root" in refusal(capsys, ["train", "--data", "voc", "--out", str(tmp_path / "b")])
    assert "does not exist" in refusal(
        capsys, ["train", "--data", "cityscapes", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]
    )


# --- model back ends -----------------------------------------------------------------------------------------


def test_model_specs():
    assert models.parse_model_spec("unet") == ("unet",)
    assert models.parse_model_spec("fcn_resnet50") == ("torchvision", "fcn_resnet50")
    assert models.parse_model_spec("smp:Unet:resnet34") == ("smp", "Unet", "resnet34")
    for bad in ("smp:Unet", "smp::resnet34", "deeplab", ""):
        with pytest.raises(ValueError, match="unknown model"):
            models.parse_model_spec(bad)


def test_missing_back_ends_are_clear(monkeypatch):
    for name in ("torchvision", "torchvision.models", "segmentation_models_pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, installed or not
    with pytest.raises(ImportError, match="--model deeplabv3_resnet50 needs torchvision"):
        models.build_model("deeplabv3_resnet50", 3, 21)
    with pytest.raises(ImportError, match="needs segmentation_models_pytorch"):
        models.build_model("smp:Unet:resnet34", 3, 21)


class _FakeBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.layer1 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.layer1(self.conv1(x))


class _FakeSegNet(nn.Module):
    """Stands in for torchvision's DeepLabv3: ``backbone`` with ``conv1``, a dict output."""

    def __init__(self, num_classes):
        super().__init__()
        self.backbone = _FakeBackbone()
        self.classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        y = self.classifier(self.backbone(x))
        return {"out": nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear"), "aux": None}


@pytest.fixture
def fake_torchvision(monkeypatch):
    """The torchvision code path without torchvision: records the constructor's arguments."""
    calls = []

    def deeplabv3_resnet50(**kwargs):
        calls.append(kwargs)
        return _FakeSegNet(kwargs["num_classes"])

    segmentation = types.ModuleType("torchvision.models.segmentation")
    segmentation.deeplabv3_resnet50 = deeplabv3_resnet50
    tv_models = types.ModuleType("torchvision.models")
    tv_models.segmentation = segmentation
    tv = types.ModuleType("torchvision")
    tv.models = tv_models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv_models)
    monkeypatch.setitem(sys.modules, "torchvision.models.segmentation", segmentation)
    return calls


def test_torchvision_path_with_local_weights(fake_torchvision, folder, tmp_path):
    # a backbone-only file (as torchvision's ImageNet resnet50-*.pth: no "backbone." prefix, an fc layer)
    backbone = _FakeBackbone()
    weights = {**backbone.state_dict(), "fc.weight": torch.randn(1000, 8)}
    torch.save(weights, tmp_path / "backbone.pth")
    model = models.build_model("deeplabv3_resnet50", 3, 5, weights=tmp_path / "backbone.pth")
    assert fake_torchvision[-1] == {"weights": None, "weights_backbone": None, "num_classes": 5, "aux_loss": False}
    assert torch.equal(model.net.backbone.conv1.weight, backbone.conv1.weight)
    assert model(torch.randn(2, 3, 20, 24)).shape == (2, 5, 20, 24)  # the "out" tensor, not the dict
    one = models.build_model("deeplabv3_resnet50", 1, 11)  # the built-in canvases: one input channel
    assert one.net.backbone.conv1.in_channels == 1 and one(torch.randn(1, 1, 16, 16)).shape == (1, 11, 16, 16)
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="none of its 1 tensors matches"):
        models.build_model("deeplabv3_resnet50", 3, 5, weights=tmp_path / "other.pth")
    # end to end: train, checkpoint, rebuild from the checkpoint
    main(tiny(folder, tmp_path / "tv", "--model", "deeplabv3_resnet50", "--weights", str(tmp_path / "backbone.pth")))
    rebuilt, ckpt = train.load_model(tmp_path / "tv" / "model.pt")
    assert ckpt["architecture"]["model"] == "deeplabv3_resnet50" and isinstance(rebuilt, models.OutLogits)


def test_smp_path(monkeypatch):
    calls = []
    smp = types.ModuleType("segmentation_models_pytorch")

    def create_model(arch, **kwargs):
        calls.append((arch, kwargs))
        return models.SmallUNet(kwargs["in_channels"], kwargs["classes"], 4)

    smp.create_model = create_model
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", smp)
    model = models.build_model("smp:Unet:resnet34", 3, 19)
    assert calls == [("Unet", {"encoder_name": "resnet34", "encoder_weights": None, "in_channels": 3, "classes": 19})]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 19, 32, 32)


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _importable("torchvision"), reason="torchvision cannot be imported here")
@pytest.mark.parametrize("name", models.TORCHVISION_MODELS)
def test_real_torchvision_models(name, tmp_path):
    import torchvision

    model = models.build_model(name, 3, 4)
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    summary = models.load_weights(model, tmp_path / "resnet50.pth")
    assert "skipped" in summary  # the ImageNet fc layer
    assert models.build_model(name, 1, 11).eval()(torch.randn(1, 1, 64, 64)).shape == (1, 11, 64, 64)


@pytest.mark.skipif(not _importable("segmentation_models_pytorch"), reason="segmentation_models_pytorch missing")
def test_real_smp_model():
    model = models.build_model("smp:Unet:resnet18", 3, 4).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)
