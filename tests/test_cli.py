"""The ``lovasz`` command line: typed options, one-line errors (exit code 2), --version, defaults in the help."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import lovasz
from lovasz.experiments.cli import _finish_args, build_parser, main
from lovasz.experiments.models import SmallUNet


def _fails(argv, capsys, *fragments):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err  # one line, no usage block, no traceback
    assert lines[0].startswith(f"lovasz {argv[0]}: error:")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _parse(argv):
    args = build_parser().parse_args(argv)
    _finish_args(args)
    return args


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--epochs", "0"], ["--epochs", "positive integer"]),
        (["--epochs", "two"], ["--epochs", "'two'"]),
        (["--batch-size", "-4"], ["--batch-size", "positive integer"]),
        (["--width", "1.5"], ["--width"]),
        (["--train-size", "0"], ["--train-size"]),
        (["--threads", "0"], ["--threads"]),
        (["--seed", "-1"], ["--seed", ">= 0"]),
        (["--lr", "0"], ["--lr", "> 0"]),
        (["--lr", "-1e-3"], ["--lr"]),
        (["--lr", "nan"], ["--lr"]),
        (["--lr", "inf"], ["--lr"]),
        (["--loss", "ce+lovasz", "--lovasz-weight", "-1"], ["--lovasz-weight", ">= 0"]),
        (["--loss", "lovasz", "--bins", "10"], ["--bins", ">= 64"]),
        (["--loss", "lovasz", "--bins", "many"], ["--bins"]),
    ],
)
def test_train_rejects_out_of_range_values(argv, fragments, capsys):
    _fails(["train", *argv], capsys, *fragments)


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--bins", "128"], ["--bins", "--loss ce"]),
        (["--bins", "0"], ["--bins", "--loss ce"]),  # "given" is told apart from the default, even for 0
        (["--per-image"], ["--per-image", "--loss ce"]),
        (["--classes", "all"], ["--classes", "--loss ce"]),
        (["--loss", "ce", "--per-image", "--classes", "present"], ["--per-image, --classes"]),
        (["--lovasz-weight", "0.5"], ["--lovasz-weight", "--loss ce"]),
        (["--loss", "lovasz", "--lovasz-weight", "0.5"], ["--lovasz-weight", "--loss lovasz"]),
    ],
)
def test_train_refuses_options_that_do_not_apply(argv, fragments, capsys):
    _fails(["train", *argv], capsys, *fragments)


def test_options_that_apply_are_accepted_and_defaults_filled_in():
    args = _parse(["train"])
    assert (args.loss, args.per_image, args.classes, args.bins, args.lovasz_weight) == (
        "ce",
        False,
        "present",
        "auto",
        1.0,
    )
    args = _parse(["train", "--loss", "ce+lovasz", "--per-image", "--classes", "all", "--bins", "256"])
    assert (args.per_image, args.classes, args.bins, args.lovasz_weight) == (True, "all", 256, 1.0)
    args = _parse(["train", "--loss", "ce+lovasz", "--lovasz-weight", "0", "--bins", "exact"])
    assert args.lovasz_weight == 0.0 and args.bins is None  # the exact engine
    assert _parse(["train", "--loss", "lovasz", "--bins", "0"]).bins is None
    assert _parse(["demo", "--bins", "0"]).bins is None
    assert _parse(["demo"]).bins == 4096 and _parse(["demo"]).seeds == 6


def test_demo_refuses_zero_seeds_and_bad_values_up_front(capsys):
    _fails(["demo", "--seeds", "0"], capsys, "--seeds", "positive integer")
    _fails(["demo", "--finetune-epochs", "0"], capsys, "--finetune-epochs")
    _fails(["demo", "--finetune-lr", "0"], capsys, "--finetune-lr")
    _fails(["demo", "--bins", "32"], capsys, "--bins")


@pytest.mark.parametrize("flag", ["train --init", "eval --checkpoint"])
def test_checkpoint_must_be_an_existing_lovasz_checkpoint(flag, tmp_path, capsys):
    command, option = flag.split()
    _fails([command, option, str(tmp_path / "missing.pt")], capsys, option, "no such file")
    _fails([command, option, str(tmp_path)], capsys, option, "not a file")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    _fails([command, option, str(text)], capsys, option, "not a lovasz checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _fails([command, option, str(empty)], capsys, "not a lovasz checkpoint")
    pickled = tmp_path / "objects.pt"
    torch.save({"model": {}, "config": argparse.Namespace(width=8)}, pickled)  # loads only with weights_only=False
    _fails([command, option, str(pickled)], capsys, "weights_only=True")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    _fails([command, option, str(other)], capsys, "'model' and 'config'")
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"width": 8}}, good)
    argv = [command, option, str(good)] + (["--loss", "ce"] if command == "train" else [])
    args = _parse(argv)
    assert getattr(args, option.lstrip("-")) == str(good)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"lovasz {lovasz.__version__}"


def test_help_shows_defaults(capsys):
    for command, expected in [
        (
            "train",
            [
                "(default: 8)",
                "(default: 32, or a quarter",
                "(default: ce)",
                "the Lovász engine: auto",
                "(default: present)",
                "(default: auto)",
            ],
        ),
        ("demo", ["(default: 6)", "(default: 16)", "(default: 0.0003)", "(default: runs/demo;", "(default: 30)"]),
        ("eval", ["(default: test; val for data on disk", "(default: the checkpoint's)"]),
        ("predict", ["IMAGE_OR_FOLDER", "--out"]),
    ]:
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        out = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
        for text in expected:
            assert text in out, (command, text)
        assert "(default: None)" not in out and "(default: False)" not in out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "lovasz train --loss ce+lovasz --per-image" in out  # the raw description keeps its lines


def test_unknown_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice" in err[0]


# Training, fine-tuning, evaluation and the demo end to end (small settings)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A cache folder of the test's own, so canvases are generated afresh."""
    monkeypatch.setenv("LOVASZ_CACHE", str(tmp_path / "cache"))


@pytest.mark.usefixtures("fresh_cache")
def test_model_shapes():
    assert SmallUNet(1, 11, width=8)(torch.randn(2, 1, 32, 32)).shape == (2, 11, 32, 32)


@pytest.mark.usefixtures("fresh_cache")
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


@pytest.mark.usefixtures("fresh_cache")
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
        "CE + 0.25·Lovász batch",
    }
    assert all(len(v) == 2 for v in res["test"].values())  # one pretraining per seed (tests/test_demo.py)
    assert "| variant − CE (continued) |" in out


@pytest.mark.usefixtures("fresh_cache")
def test_cli_has_no_bench_command(capsys):
    with pytest.raises(SystemExit):
        main(["bench"])
    assert "invalid choice" in capsys.readouterr().err
