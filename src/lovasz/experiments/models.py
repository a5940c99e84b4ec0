"""Models of the harness: a small U-Net in plain PyTorch (sized for CPU training on the demo data), and,
when their packages are installed, torchvision's DeepLabv3 / FCN and segmentation_models_pytorch models.

:func:`build_model` takes a spec: ``unet`` (:class:`SmallUNet`), ``deeplabv3_resnet50`` or ``fcn_resnet50``
(torchvision, imported only then; built with ``weights=None, weights_backbone=None``, so nothing is ever
downloaded) or ``smp:<Arch>:<encoder>`` (e.g. ``smp:Unet:resnet34``, ``encoder_weights=None``).  Pretrained
weights come only from a local file (:func:`load_weights`).  Every model maps ``[B, in_channels, H, W]`` to
``[B, num_classes, H, W]`` logits (torchvision's ``{"out": ...}`` dict is unwrapped by :class:`OutLogits`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

TORCHVISION_MODELS = ("deeplabv3_resnet50", "fcn_resnet50")
MODEL_SPECS = ("unet", *TORCHVISION_MODELS, "smp:<Arch>:<encoder>")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """Four-level U-Net: ``[B, in_channels, H, W]`` → ``[B, num_classes, H, W]`` logits (H, W divisible by 8).

    Three poolings give a receptive field of about 60 pixels, enough to see a whole 28×28 object from any
    of its pixels.

    Example:
        >>> import torch
        >>> from lovasz.experiments.models import SmallUNet
        >>> SmallUNet(1, 11)(torch.randn(2, 1, 64, 64)).shape
        torch.Size([2, 11, 64, 64])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 11, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1 = _block(in_channels, w)
        self.enc2 = _block(w, 2 * w)
        self.enc3 = _block(2 * w, 4 * w)
        self.mid = _block(4 * w, 4 * w)
        self.up3 = nn.ConvTranspose2d(4 * w, 4 * w, 2, stride=2)
        self.dec3 = _block(8 * w, 2 * w)
        self.up2 = nn.ConvTranspose2d(2 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, w)
        self.up1 = nn.ConvTranspose2d(w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        pool = nn.functional.max_pool2d
        e1 = self.enc1(x)
        e2 = self.enc2(pool(e1, 2))
        e3 = self.enc3(pool(e2, 2))
        m = self.mid(pool(e3, 2))
        d3 = self.dec3(torch.cat([self.up3(m), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class OutLogits(nn.Module):
    """Wraps a model that returns a dict (torchvision's segmentation models: ``{"out": logits, "aux": ...}``)
    so that it returns the ``"out"`` tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out["out"] if isinstance(out, dict) else out


def parse_model_spec(spec: str) -> tuple[str, ...]:
    """``"unet"`` → ``("unet",)``, ``"fcn_resnet50"`` → ``("torchvision", "fcn_resnet50")``,
    ``"smp:Unet:resnet34"`` → ``("smp", "Unet", "resnet34")``; ``ValueError`` otherwise."""
    if spec == "unet":
        return ("unet",)
    if spec in TORCHVISION_MODELS:
        return ("torchvision", spec)
    parts = spec.split(":")
    if len(parts) == 3 and parts[0] == "smp" and parts[1] and parts[2]:
        return ("smp", parts[1], parts[2])
    raise ValueError(f"unknown model {spec!r}: use one of {', '.join(MODEL_SPECS)} (e.g. smp:Unet:resnet34)")


def _import_torchvision_segmentation(spec: str):
    try:
        from torchvision.models import segmentation
    except Exception as exc:  # missing, or a build that does not match this torch (it then fails at import)
        raise ImportError(
            f"--model {spec} needs torchvision, which cannot be imported here ({type(exc).__name__}: {exc}); "
            f"install the torchvision release built for torch {torch.__version__}, or use --model unet"
        ) from exc
    return segmentation


def _import_smp(spec: str):
    try:
        import segmentation_models_pytorch as smp
    except Exception as exc:
        raise ImportError(
            f"--model {spec} needs segmentation_models_pytorch, which cannot be imported here "
            f"({type(exc).__name__}: {exc}): pip install segmentation-models-pytorch, or use --model unet"
        ) from exc
    return smp


def build_model(
    spec: str, in_channels: int, num_classes: int, width: int = 16, weights: str | Path | None = None, log=None
) -> nn.Module:
    """The model of ``spec`` (see the module docstring), randomly initialised, then loaded from the local
    file ``weights`` if given (:func:`load_weights`; ``log`` receives its one-line summary)."""
    kind = parse_model_spec(spec)
    if kind[0] == "unet":
        model: nn.Module = SmallUNet(in_channels, num_classes, width)
    elif kind[0] == "torchvision":
        segmentation = _import_torchvision_segmentation(spec)
        net = getattr(segmentation, kind[1])(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        )
        if in_channels != 3:
            old = net.backbone.conv1
            net.backbone.conv1 = nn.Conv2d(
                in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
            )
        model = OutLogits(net)
    else:
        smp = _import_smp(spec)
        try:
            model = smp.create_model(
                kind[1], encoder_name=kind[2], encoder_weights=None, in_channels=in_channels, classes=num_classes
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"--model {spec}: segmentation_models_pytorch refuses it: {exc}") from exc
    if weights is not None:
        summary = load_weights(model, weights)
        if log is not None:
            log(summary)
    return model


_PREFIXES = ("", "net.", "backbone.", "net.backbone.", "encoder.")


def load_weights(model: nn.Module, path: str | Path) -> str:
    """Initialise ``model`` from a local state dict (``torch.load(weights_only=True)``; never downloads).

    Accepts a whole model's state dict (e.g. torchvision's ``deeplabv3_resnet50_coco-*.pth``, or a
    ``lovasz train`` checkpoint), or a backbone's (e.g. torchvision's ImageNet ``resnet50-*.pth``, placed
    under ``backbone.``; an smp encoder's, under ``encoder.``): the placement matching the most tensors is
    used.  Tensors whose name or shape does not match (a classifier with another number of classes, the
    ``fc`` layer of an ImageNet backbone, an auxiliary head) are skipped.  Returns a one-line summary;
    raises ``ValueError`` if nothing matches."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"--weights {path}: not a state dict (a dict of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()

    def matches(prefix: str) -> dict[str, Tensor]:
        return {prefix + k: v for k, v in state.items() if prefix + k in own and own[prefix + k].shape == v.shape}

    best = max((matches(p) for p in _PREFIXES), key=len)
    if not best:
        raise ValueError(
            f"--weights {path}: none of its {len(state)} tensors matches the model "
            f"(its names: {', '.join(list(state)[:3])}, ...; the model's: {', '.join(list(own)[:3])}, ...)"
        )
    model.load_state_dict(best, strict=False)
    skipped = len(state) - len(best)
    return f"weights from {path}: {len(best)} of the model's {len(own)} tensors loaded" + (
        f", {skipped} tensors of the file skipped (name or shape differ)" if skipped else ""
    )
