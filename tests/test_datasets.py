"""On-disk data sets of the harness (``lovasz train --data voc | cityscapes | folder``), on miniature trees
written into ``tmp_path`` in exactly the published layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lovasz.experiments import data

# Each class region of the test images has its own colour, so the class of a pixel can be read back from the
# (augmented) image and compared with the (augmented) mask.  Void regions are white; crop padding is black.
COLOURS = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)], np.uint8)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
VOID = 255


def layout(h: int, w: int, k: int, border: int = 0) -> np.ndarray:
    """Class ids ``[h, w]`` of image ``k``: asymmetric blocks of classes 0-3 (a flip shows), optionally a
    void (255) border."""
    m = np.zeros((h, w), np.uint8)
    m[:, w // 3 :] = 1
    m[h // 4 : h // 2, 2 : w // 2 + k] = 2
    m[(3 * h) // 4 :, (3 * w) // 4 :] = 3
    if border:
        m[:border] = m[-border:] = VOID
        m[:, :border] = m[:, -border:] = VOID
    return m


def paint(mask: np.ndarray) -> np.ndarray:
    """The image of a mask: class colours, white where void."""
    image = np.full((*mask.shape, 3), WHITE, np.uint8)
    valid = mask != VOID
    image[valid] = COLOURS[mask[valid]]
    return image


def read_back(image: torch.Tensor) -> np.ndarray:
    """Class ids from a normalized image tensor ``[3, H, W]`` by nearest colour: 0-3, VOID (white) or -1
    (black padding)."""
    rgb = (data.denormalize(image).permute(1, 2, 0).numpy() * 255).astype(np.float64)
    palette = np.concatenate([COLOURS, [WHITE, BLACK]]).astype(np.float64)
    nearest = ((rgb[:, :, None, :] - palette) ** 2).sum(-1).argmin(-1)
    return np.array([0, 1, 2, 3, VOID, -1])[nearest]


def voc_palette() -> list[int]:
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def make_voc(root, n_train: int = 3, n_val: int = 2, size=(40, 48)):
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    ids = [f"2007_{i:06d}" for i in range(n_train + n_val)]
    for k, name in enumerate(ids):
        mask = layout(*size, k, border=2)
        Image.fromarray(paint(mask)).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(voc_palette())
        png.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return ids


# label id -> train id, written here from the Cityscapes table, not from the code under test
CITYSCAPES = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
              26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def make_cityscapes(root, size=(32, 64)):
    """Two cities in train, one in val; label images hold ids that map to train ids and ids that map to 255."""
    files = {"train": [("aachen", "aachen_000000_000019"), ("bremen", "bremen_000001_000019")],
             "val": [("lindau", "lindau_000000_000019")]}  # fmt: skip
    for split, items in files.items():
        for k, (city, name) in enumerate(items):
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            ids = np.zeros(size, np.uint8)  # 0 = unlabeled -> 255
            ids[:, : size[1] // 2] = 7  # road -> 0
            ids[: size[0] // 2, size[1] // 2 :] = 26  # car -> 13
            ids[size[0] // 2 :, -8:] = 4  # static -> 255
            ids[:4, :4] = 33 if k == 0 else 24  # bicycle -> 18, person -> 11
            Image.fromarray(np.full((*size, 3), 90 + 40 * k, np.uint8)).save(
                root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
            )
            Image.fromarray(ids).save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
            Image.fromarray(ids).save(root / "gtFine" / split / city / f"{name}_gtFine_color.png")  # ignored


def make_folder(root, n: int = 6, size=(36, 44), suffix=".png"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(n):
        mask = layout(*size, k, border=1)
        Image.fromarray(paint(mask)).save(root / "images" / f"img{k}{suffix}")
        Image.fromarray(mask).save(root / "masks" / f"img{k}.png")


# ---------------------------------------------------------------------------------------------------------------


def test_voc_layout(tmp_path):
    ids = make_voc(tmp_path)
    train = data.build_dataset("voc", tmp_path, "train")
    val = data.VOCSegmentation(tmp_path, "val")
    assert (len(train), len(val)) == (3, 2)
    assert train.num_classes == 21 and len(train.class_names) == 21 and train.class_names[15] == "person"
    assert data.class_names("voc") == train.class_names
    image, mask = val[1]
    assert image.shape == (3, 40, 48) and image.dtype == torch.float32
    assert mask.shape == (40, 48) and mask.dtype == torch.int64
    # the palette PNG's indices are the class ids (not its colours), the void border stays 255
    expected = layout(40, 48, len(ids) - 1, border=2)
    assert torch.equal(mask, torch.from_numpy(expected).long())
    assert set(mask.unique().tolist()) == {0, 1, 2, 3, VOID}
    # the image (JPEG) agrees with the mask away from region edges
    assert (read_back(image) == expected).mean() > 0.95


def test_cityscapes_layout_and_label_mapping(tmp_path):
    make_cityscapes(tmp_path)
    train = data.build_dataset("cityscapes", tmp_path, "train")
    val = data.CityscapesSegmentation(tmp_path, "val")
    assert (len(train), len(val)) == (2, 1)
    assert train.num_classes == 19 and train.class_names[0] == "road" and train.class_names[18] == "bicycle"
    image, mask = train[0]
    assert image.shape == (3, 32, 64) and mask.shape == (32, 64) and mask.dtype == torch.int64
    assert mask[10, 5] == 0 and mask[5, 40] == 13  # road, car
    assert mask[0, 0] == 18 and train[1][1][0, 0] == 11  # bicycle, person
    assert mask[20, 40] == VOID and mask[25, 60] == VOID  # unlabeled (0) and static (4)
    assert set(mask.unique().tolist()) == {0, 13, 18, VOID}
    # the whole table: every label id 0..33 (and a stray 250) maps as the official table says
    ids = np.arange(35, dtype=np.uint8).reshape(5, 7)
    ids[-1, -1] = 250
    name = "lindau/lindau_000000_000019"
    Image.fromarray(ids).save(tmp_path / f"gtFine/val/{name}_gtFine_labelIds.png")
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / f"leftImg8bit/val/{name}_leftImg8bit.png")
    got = val[0][1].flatten().tolist()
    assert got == [CITYSCAPES.get(i, VOID) for i in range(34)] + [VOID]


def test_folder_layout_split_and_classes(tmp_path):
    make_folder(tmp_path, n=10, suffix=".jpg")
    train = data.build_dataset("folder", tmp_path, "train", num_classes=4, val_fraction=0.2)
    val = data.build_dataset("folder", tmp_path, "val", num_classes=4, val_fraction=0.2)
    assert (len(train), len(val)) == (8, 2)
    assert not {p for p, _ in train.pairs} & {p for p, _ in val.pairs}  # disjoint
    for image_path, mask_path in train.pairs:
        assert image_path.stem == mask_path.stem
    # the split does not depend on the training seed
    other = data.build_dataset("folder", tmp_path, "val", num_classes=4, val_fraction=0.2, seed=7)
    assert other.pairs == val.pairs
    assert data.class_names("folder") == ["0", "1", "2", "3"] == train.class_names
    image, mask = train[0]
    assert image.shape == (3, 36, 44) and image.dtype == torch.float32
    assert mask.shape == (36, 44) and mask.dtype == torch.int64
    presence = train.class_presence()
    assert presence.shape == (8, 4) and presence.all()
    with pytest.raises(ValueError, match="--num-classes"):
        data.build_dataset("folder", tmp_path, "train")


def test_augmentation_shapes_void_and_determinism(tmp_path):
    make_voc(tmp_path)
    aug = data.Augment(crop_size=24, scale=(0.5, 2.0))
    ds = data.VOCSegmentation(tmp_path, "train", augment=aug, seed=3)
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (3, 24, 24) and image.dtype == torch.float32
        assert mask.shape == (24, 24) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= {0, 1, 2, 3, VOID}  # nearest neighbour: no blended ids
    a, b = ds[0], ds[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ds.set_epoch(1)
    assert not torch.equal(ds[0][1], a[1]) or not torch.equal(ds[0][0], a[0])
    # without crop, the void border survives scaling and flipping
    no_crop = data.VOCSegmentation(tmp_path, "train", augment=data.Augment(crop_size=None), seed=0)
    for epoch in range(4):
        no_crop.set_epoch(epoch)
        mask = no_crop[0][1]
        assert (mask[0] == VOID).all() and (mask[-1] == VOID).all() and (mask[:, 0] == VOID).all()
        assert set(mask.unique().tolist()) == {0, 1, 2, 3, VOID}
    # a crop larger than the (scaled) image is padded: black image, void mask
    big = data.VOCSegmentation(
        tmp_path, "train", augment=data.Augment(crop_size=64, scale=(1.0, 1.0), flip=False), seed=0
    )
    image, mask = big[0]
    assert image.shape == (3, 64, 64) and (mask[40:] == VOID).all() and (mask[:, 48:] == VOID).all()
    assert (read_back(image)[40:] == -1).all()


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 2.0)])
def test_image_and_mask_stay_aligned(tmp_path, scale):
    """The class painted into the image must be the mask's class, after scale, crop (with padding) and flip."""
    make_folder(tmp_path, n=6, size=(36, 44))
    aug = data.Augment(crop_size=40, scale=scale)
    ds = data.FolderSegmentation(tmp_path, "all", num_classes=4, augment=aug, seed=0)
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, mask = ds[i]
            seen, m = read_back(image), mask.numpy()
            padded = m == VOID
            if scale == (1.0, 1.0):  # crop and flip only: exact, pixel for pixel
                assert (seen[~padded] == m[~padded]).all()
                assert np.isin(seen[padded], [VOID, -1]).all()
            else:  # bilinear image, nearest mask: away from region edges they agree
                inner = interior(m)
                assert (seen[inner & ~padded] == m[inner & ~padded]).mean() > 0.99
                assert np.isin(seen[inner & padded], [VOID, -1]).all()
                assert (seen[~padded] == m[~padded]).mean() > 0.9


def interior(m: np.ndarray) -> np.ndarray:
    """Pixels whose 3×3 neighbourhood has one label (the crop's outer frame excluded)."""
    out = np.zeros(m.shape, bool)
    c = m[1:-1, 1:-1]
    same = np.ones(c.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= m[dy : dy + c.shape[0], dx : dx + c.shape[1]] == c
    out[1:-1, 1:-1] = same
    return out


def test_flip_keeps_alignment_exactly():
    mask = layout(20, 30, 1, border=1)
    image = paint(mask)
    aug = data.Augment(crop_size=None, scale=(1.0, 1.0), flip=True)
    flips = 0
    for seed in range(16):
        img2, mask2 = aug(image, mask, np.random.default_rng(seed))
        assert np.array_equal(img2, paint(mask2))
        flips += bool(np.array_equal(mask2, mask[:, ::-1]))
        assert np.array_equal(mask2, mask) or np.array_equal(mask2, mask[:, ::-1])
    assert 0 < flips < 16


def test_pad_collate():
    a = (torch.zeros(3, 20, 33), torch.ones(20, 33, dtype=torch.long))
    b = (torch.zeros(3, 40, 10), torch.zeros(40, 10, dtype=torch.long))
    images, masks = data.pad_collate([a, b])
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64) and masks.dtype == torch.int64
    assert (masks[0, :20, :33] == 1).all() and (masks[0, 20:] == VOID).all() and (masks[0, :, 33:] == VOID).all()
    assert (masks[1, :40, :10] == 0).all() and (masks[1, 40:] == VOID).all()
    black = data.denormalize(images[0, :, 30:, 40:])
    assert torch.allclose(black, torch.zeros_like(black), atol=1e-6)


# --- errors --------------------------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    for name in data.FILE_LAYOUTS:
        with pytest.raises(FileNotFoundError, match="does not exist"):
            data.build_dataset(name, tmp_path / "nowhere", "train", num_classes=3)
    with pytest.raises(ValueError, match="--root"):
        data.build_dataset("voc", None, "train")


def test_missing_split_file_and_listed_files(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        data.VOCSegmentation(tmp_path, "val")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("2007_999999\n")
    with pytest.raises(FileNotFoundError, match="2007_999999"):
        data.VOCSegmentation(tmp_path, "val")
    (tmp_path / "SegmentationClass").rename(tmp_path / "Elsewhere")
    with pytest.raises(FileNotFoundError, match="not a VOC root"):
        data.VOCSegmentation(tmp_path, "train")


def test_cityscapes_missing_split_and_labels(tmp_path):
    make_cityscapes(tmp_path)
    with pytest.raises(FileNotFoundError, match="test"):
        data.CityscapesSegmentation(tmp_path, "test")
    (tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match="labelIds"):
        data.CityscapesSegmentation(tmp_path, "val")


def test_folder_mismatched_names(tmp_path):
    make_folder(tmp_path, n=4)
    (tmp_path / "masks" / "img3.png").rename(tmp_path / "masks" / "other.png")
    with pytest.raises(ValueError, match=r"do not match by name.*img3.*other"):
        data.FolderSegmentation(tmp_path, "train", num_classes=4)


def test_bad_masks(tmp_path):
    make_folder(tmp_path, n=3)
    ds = data.FolderSegmentation(tmp_path, "all", num_classes=3)  # the layout has class 3: out of range
    with pytest.raises(ValueError, match=r"outside the class ids \[0, 3\)"):
        [ds[i] for i in range(len(ds))]
    Image.fromarray(np.zeros((36, 44, 3), np.uint8)).save(tmp_path / "masks" / "img0.png")  # RGB mask
    ds = data.FolderSegmentation(tmp_path, "all", num_classes=4)
    with pytest.raises(ValueError, match="single-channel"):
        ds[0]
    Image.fromarray(np.zeros((30, 44), np.uint8)).save(tmp_path / "masks" / "img0.png")  # wrong size
    with pytest.raises(ValueError, match="44×30"):
        ds[0]


def test_builtin_names_unchanged():
    assert data.class_names("digits") == data.DIGIT_NAMES and data.class_names("fashion") == data.FASHION_NAMES
    with pytest.raises(ValueError, match="build_dataset"):
        data.load("voc")


# The built-in canvases


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A cache folder of the test's own, so canvases are generated afresh."""
    monkeypatch.setenv("LOVASZ_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", ["digits", "fashion"])
@pytest.mark.usefixtures("fresh_cache")
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


@pytest.mark.usefixtures("fresh_cache")
def test_scaled_digits_small_rare_and_clutter():
    """scaled-digits: 48×48 by default, 6 classes; the rare class is the least frequent, the small class's
    objects are the smallest; clutter digits (5-9) are drawn but labelled background."""
    if not data.available("scaled-digits"):
        pytest.skip("digits data not installed")
    splits = data.load("scaled-digits", sizes=(300, 5, 5), seed=4)
    again = data.load("scaled-digits", sizes=(300, 5, 5), seed=4, cache=False)
    assert torch.equal(splits["train"].images, again["train"].images)
    images, masks = splits["train"].images[:, 0], splits["train"].masks
    assert images.shape == (300, 48, 48) and data.num_classes_of("scaled-digits") == 6
    assert masks.min() == 0 and masks.max() == 5 and data.class_names("scaled-digits")[2] == "1 (small)"
    pixels = torch.bincount(masks.flatten(), minlength=6)
    images_with = torch.stack([(masks == c).flatten(1).any(1) for c in range(6)], 1).sum(0)
    assert images_with[5] < images_with[1:5].min()  # the rare class: in the fewest canvases
    assert pixels[0] > 0.9 * masks.numel()
    assert pixels[2] / images_with[2] < 0.5 * pixels[1] / images_with[1]  # the small class: few pixels a canvas
    # clutter: bright stroke pixels outside every mask, far more than the noise alone makes
    bright_background = ((images > 0.6) & (masks == 0)).sum()
    assert bright_background > 0.2 * ((images > 0.6) & (masks > 0)).sum()
    assert images[masks > 0].mean() > images[masks == 0].mean() + 0.2
    assert data.named_classes("scaled-digits") == {2: "small", 5: "rare"} and data.named_classes("digits") == {}


@pytest.mark.usefixtures("fresh_cache")
def test_unknown_data_set_and_bad_size():
    with pytest.raises(ValueError, match="digits"):
        data.load("cifar")
    with pytest.raises(ValueError, match="at least 28"):
        data.load("digits", size=20)
