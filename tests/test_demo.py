"""`lovasz demo` (multi-class and binary): per-seed pretraining to a plateau, paired differences with 95 %
intervals, p-values and Holm's adjustment, conclusions in words."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lovasz.experiments import data
from lovasz.experiments.cli import _finish_args, build_parser, main
from lovasz.experiments.demo import (
    QUICK,
    T_975,
    agreement,
    conclusions,
    demo_table,
    holm,
    paired_interval,
    paired_pvalue,
    t_975,
    t_pvalue,
    train_binary,
)
from lovasz.experiments.train import (
    TrainConfig,
    load_model,
    make_schedule,
    plateau_gain,
    plateau_stages,
    plateau_step,
    train,
)

TINY = ["--seeds", "2", "--pretrain-epochs", "1", "--finetune-epochs", "1", "--train-size", "32", "--width", "8"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOVASZ_CACHE", str(tmp_path / "cache"))


def _student_t_cdf_above_half(t: float, df: int, steps: int = 20000) -> float:
    """P(0 < T < t) for Student's t with ``df`` degrees of freedom (Simpson's rule on the density)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    pdf = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = t / steps
    total = pdf(0) + pdf(t) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return total * h / 3


@pytest.mark.parametrize("df", [*T_975, 10, 12, 15, 20, 30, 60])
def test_t_quantiles_are_the_975_quantiles(df):
    t = t_975(df)
    if df in T_975:
        assert t == T_975[df]
    # 0.475 = 0.975 - 0.5; a t off by 1e-4 moves the probability by about pdf(t) * 1e-4 < 1e-5
    assert _student_t_cdf_above_half(t, df) == pytest.approx(0.475, abs=1e-5)
    with pytest.raises(ValueError):
        t_975(0)


@pytest.mark.parametrize("df", [1, 2, 4, 7, 30])
@pytest.mark.parametrize("t", [0.3, 1.0, 2.5, 6.0])
def test_t_pvalue_is_the_two_sided_tail(t, df):
    # P(|T| >= t) = 1 - 2 P(0 < T < t), the latter by Simpson's rule on the density (independent of the code)
    assert t_pvalue(t, df) == pytest.approx(1 - 2 * _student_t_cdf_above_half(t, df), abs=1e-6)
    assert t_pvalue(-t, df) == t_pvalue(t, df)
    assert t_pvalue(t_975(df), df) == pytest.approx(0.05, abs=2e-5)
    assert t_pvalue(0.0, df) == 1.0


def test_paired_pvalue_and_holm():
    assert paired_pvalue([0.5]) is None
    assert paired_pvalue([0.0, 0.0]) == 1.0 and paired_pvalue([0.1, 0.1, 0.1]) == 0.0
    diffs = [1.0, 2.0, 3.0]  # t = 2 / (1 / sqrt 3)
    assert paired_pvalue(diffs) == pytest.approx(t_pvalue(2 * math.sqrt(3), 2))
    # Holm: sorted p 0.01, 0.02, 0.04 times 3, 2, 1 -> 0.03, 0.04, 0.04 (made non-decreasing); order kept
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_plateau_gain():
    assert plateau_gain([0.1, 0.2, 0.3], 3) is None
    assert plateau_gain([0.1, 0.2, 0.3, 0.31], 3) == pytest.approx(0.21)
    # the best of the last 3 against the best before them; a dip does not count as a loss
    assert plateau_gain([0.5, 0.6, 0.55, 0.58, 0.602], 3) == pytest.approx(0.002)
    assert plateau_gain([0.5, 0.6, 0.4, 0.3, 0.2], 3) == 0.0
    with pytest.raises(ValueError):
        plateau_gain([0.1], 0)


def test_plateau_stages():
    cfg = TrainConfig(plateau=0.01, patience=2, lr_drops=1)
    rising = [0.1, 0.2, 0.3, 0.4]
    assert plateau_stages(cfg, rising) == ([], False)
    # epoch 4: +0.005 over 2 epochs, a plateau: the learning rate drops; the rule waits 2 epochs at the new rate
    scores = [0.1, 0.3, 0.302, 0.305, 0.3, 0.301]
    assert plateau_stages(cfg, scores[:4]) == ([4], False)
    assert plateau_stages(cfg, scores[:5]) == ([4], False)
    assert plateau_stages(cfg, scores) == ([4], True)
    # a rise after the drop postpones the stop
    assert plateau_stages(cfg, [*scores[:4], 0.33, 0.34]) == ([4], False)
    assert plateau_stages(TrainConfig(plateau=0.01, patience=2), scores[:4]) == ([], True)
    assert plateau_stages(TrainConfig(plateau=None, lr_drops=1), scores) == ([], False)


def test_learning_rate_drops_at_the_plateau(tmp_path):
    """With plateau = 1 every test is a plateau: the learning rate is divided by 10 after epoch 3 (the first
    test), and training stops after epoch 5 (two epochs at the new rate)."""
    splits = data.load("scaled-digits", sizes=(16, 8, 8), seed=3)
    cfg = TrainConfig(
        data="scaled-digits", epochs=8, batch_size=8, width=4, train_size=16, schedule="constant", lr=1e-3,
        plateau=1.0, patience=2, lr_drops=1,
    )  # fmt: skip
    res = train(cfg, tmp_path / "a", splits, False, lambda *a, **k: None)
    assert res["stopping"]["lr_drops"] == [3] and res["stopping"]["epochs"] == 5
    assert res["stopping"]["stopped"] == "plateau"
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = make_schedule(opt, cfg, steps_per_epoch=2)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert not plateau_step(opt, sched, cfg, [0.1, 0.1, 0.1])  # a plateau after epoch 3: from the next step, lr / 10
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize("binary", [False, True])
def test_training_stops_at_the_plateau(tmp_path, binary):
    """With plateau = 1 no gain is enough: training stops after patience + 1 epochs, below the cap, and says
    so; without a plateau it runs to the cap."""
    splits = data.load("scaled-digits", sizes=(16, 8, 8), seed=3)
    cfg = TrainConfig(
        data="scaled-digits", epochs=6, batch_size=8, width=4, train_size=16, schedule="constant",
        plateau=1.0, patience=2, loss="bce" if binary else "ce",
    )  # fmt: skip
    run = train_binary if binary else train
    res = run(cfg, tmp_path / "a", splits, False, lambda *a, **k: None)
    stop = res["stopping"]
    assert stop["epochs"] == 3 and stop["stopped"] == "plateau" and stop["cap"] == 6
    assert len(res["config"]["history"]) == 3 and stop["gains"][:2] == [None, None] and stop["gains"][2] < 1.0
    again = run(TrainConfig(**{**cfg.__dict__, "plateau": None, "history": []}), tmp_path / "b", splits, False,
                lambda *a, **k: None)  # fmt: skip
    assert again["stopping"]["epochs"] == 6 and again["stopping"]["stopped"] == "cap"


def test_paired_interval():
    mean, low, high = paired_interval([1.0, 2.0, 3.0])  # sd 1, n 3: half-width t_{.975,2} / sqrt(3)
    assert mean == 2.0 and high - mean == pytest.approx(4.3027 / math.sqrt(3)) and low == pytest.approx(4 - high)
    assert paired_interval([0.5]) == (0.5, None, None)


def test_table_says_finding_only_where_the_interval_excludes_zero():
    metrics = [("a", "metric a"), ("b", "metric b")]

    def runs(a, b):
        return [{"a": x, "b": y} for x, y in zip(a, b, strict=True)]

    results = {
        "pretrained": runs([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]),
        "base": runs([0.50, 0.60, 0.70], [0.5, 0.5, 0.5]),
        "better": runs([0.51, 0.61, 0.71], [0.6, 0.4, 0.5]),  # a: +0.01 every seed; b: +0.1, -0.1, 0
        "worse": runs([0.49, 0.58, 0.70], [0.5, 0.5, 0.5]),  # a: -0.01, -0.02, 0: interval contains 0
    }
    text, diffs = demo_table(results, metrics, "base", "caption")
    assert text.startswith("caption\n")
    assert "| variant − base | metric | mean | 95 % interval | finding |" in text
    assert "| better | metric a | +0.0100 | [+0.0100, +0.0100] | yes, higher |" in text
    assert "| better | metric b | +0.0000 |" in text and text.count("yes") == 1
    assert diffs["worse"]["a"]["finding"] == "no" and diffs["worse"]["a"]["low"] < 0 < diffs["worse"]["a"]["high"]
    assert set(diffs) == {"better", "worse"}  # the rows after the baseline
    assert "| pretrained | 0.1000 ± 0.0000 |" in text
    assert "There are 4 comparisons" in text and "| p | Holm |" in text
    cell = diffs["better"]["a"]
    assert cell["p"] == 0.0 and cell["p_holm"] == 0.0  # +0.01 on every seed: sd 0
    words = "\n".join(conclusions(diffs, metrics, "base", 3))
    assert "4 comparisons" in words and "about 0.2 of them" in words
    assert "**better** vs base: higher on metric a +0.0100 [+0.0100, +0.0100] (survives Holm)" in words
    assert "No finding on metric b" in words and "**worse** vs base: no finding" in words


def _check_layout(out, variants, pretrained, metrics):
    """One pretraining per seed, from scratch with that seed; every fine-tuning from its own seed's checkpoint."""
    assert not (out / "pretrain").exists()
    assert sorted(p.parent.name for p in out.glob("*/pretrain")) == ["seed0", "seed1"]
    weights = []
    for seed in (0, 1):
        pre = json.loads((out / f"seed{seed}" / "pretrain" / "results.json").read_text())["config"]
        assert pre["seed"] == seed and pre["init"] is None
        weights.append(load_model(out / f"seed{seed}" / "pretrain" / "model.pt")[0].state_dict())
        finetuned = sorted(p.parent.name for p in (out / f"seed{seed}").glob("*/results.json"))
        assert len(finetuned) == len(variants) + 1  # + pretrain
        for slug in finetuned:
            if slug == "pretrain":
                continue
            cfg = json.loads((out / f"seed{seed}" / slug / "results.json").read_text())["config"]
            assert cfg["seed"] == seed and cfg["init"] == str(out / f"seed{seed}" / "pretrain" / "model.pt")
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # two different pretrainings
    res = json.loads((out / "results.json").read_text())
    assert list(res["test"]) == [pretrained, *variants]
    assert all(len(runs) == 2 for runs in res["test"].values())  # one entry per seed, the pretrained row too
    assert set(res["paired_differences"]) == set(variants[1:])
    for per_metric in res["paired_differences"].values():
        assert set(per_metric) == set(metrics)
    table = (out / "table.md").read_text()
    assert "95 % interval" in table and "| finding |" in table and "Student t with 1 degree of freedom" in table
    assert "Conclusions:" in table and "comparisons" in table
    assert [p["seed"] for p in res["pretraining"]] == [0, 1] and all(p["epochs"] == 1 for p in res["pretraining"])
    for f in ("curves.png", "per_class_iou.png", "predictions.png"):
        assert (out / f).stat().st_size > 0
    return res, table


def test_demo_multiclass_pretrains_once_per_seed(tmp_path, capsys):
    out = tmp_path / "demo"
    main(["demo", *TINY, "--no-progress", "--out", str(out)])
    assert "| variant − CE (continued) |" in capsys.readouterr().out
    variants = ["CE (continued)", "Lovász batch", "Lovász per image", "CE + 0.25·Lovász batch"]
    metrics = ["miou_dataset", "miou_image", "miou_class_image", "miou_image_worst", "iou_class_2", "iou_class_5"]
    _, table = _check_layout(out, variants, "CE pretrained", metrics)
    assert "| CE + 0.25·Lovász batch | IoU of class 4 (rare) |" in table and "| 1 (small) |" in table
    assert load_model(out / "seed0" / "pretrain" / "model.pt")[1]["architecture"]["num_classes"] == 6
    combined = json.loads((out / "seed1" / "ce-0-25-lovasz-batch" / "results.json").read_text())["config"]
    assert combined["loss"] == "ce+lovasz" and combined["lovasz_weight"] == 0.25 and not combined["per_image"]
    pre = json.loads((out / "seed1" / "pretrain" / "results.json").read_text())["config"]
    assert pre["schedule"] == "constant" and pre["plateau"] == 0.005
    # every fine-tuning of a seed: the same steps (epochs × batches) from the same checkpoint
    assert {json.loads(p.read_text())["config"]["epochs"] for p in out.glob("seed1/[!p]*/results.json")} == {1}
    # lovasz eval reads a demo checkpoint of the 6-class canvases and scores the same test split
    scores = tmp_path / "eval.json"
    main(["eval", "--checkpoint", str(out / "seed0" / "lovasz-batch" / "model.pt"), "--json", str(scores),
          "--no-progress"])  # fmt: skip
    reported = json.loads((out / "seed0" / "lovasz-batch" / "results.json").read_text())["test"]
    assert json.loads(scores.read_text())["per_class_iou"] == pytest.approx(reported["per_class_iou"], nan_ok=True)
    _demo_again_skips_finished_runs(out, ["demo", *TINY, "--no-progress", "--out", str(out)], capsys)


def _demo_again_skips_finished_runs(out, argv, capsys):
    """The same demo again: finished runs skipped, an unfinished one (checkpoint, no results) resumed, no model
    trained again; other options into the same folder refused in one line."""
    before = json.loads((out / "results.json").read_text())["test"]
    models = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*/model.pt")}
    assert len(models) == 10  # 2 seeds × (pretraining + 4 variants)
    unfinished = out / "seed1" / "lovasz-batch" / "results.json"
    unfinished.unlink()  # as if stopped after its last checkpoint
    capsys.readouterr()
    main(argv)
    printed = capsys.readouterr().out
    assert printed.count("(skipped)") == 9 and printed.count("resuming") == 1
    assert unfinished.exists()
    assert {p: p.stat().st_mtime_ns for p in models} == models  # nothing trained again
    assert json.loads((out / "results.json").read_text())["test"] == before
    with pytest.raises(SystemExit) as exc:
        main([*argv[:-2], "--width", "4", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run with other options" in err[0] and "width" in err[0]


def test_demo_binary(tmp_path, capsys):
    out = tmp_path / "binary"
    main(["demo", "--task", "binary", *TINY, "--no-progress", "--out", str(out)])
    assert "| variant − BCE (continued) |" in capsys.readouterr().out
    variants = ["BCE (continued)", "Lovász hinge per image", "BCE + 1·Lovász hinge per image"]
    res, table = _check_layout(out, variants, "BCE pretrained", ["iou_dataset", "iou_image", "iou_image_worst"])
    assert "| Lovász hinge per image | per-image IoU (fg) |" in table
    model, ckpt = load_model(out / "seed1" / "lovasz-hinge-per-image" / "model.pt")
    assert ckpt["architecture"]["num_classes"] == 1 and ckpt["config"]["loss"] == "hinge"
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    scores = res["test"]["Lovász hinge per image"][0]
    assert 0 <= scores["iou_image_worst"] <= scores["iou_image"] <= 1 and len(scores["per_class_iou"]) == 2


def test_quick_fills_only_the_options_left_unset():
    def parse(argv):
        args = build_parser().parse_args(argv)
        _finish_args(args)
        return args

    quick = parse(["demo", "--quick", "--seeds", "4"])
    assert quick.seeds == 4 and quick.train_size == QUICK["train_size"] and quick.data == "scaled-digits"
    assert quick.pretrain_epochs == QUICK["pretrain_epochs"] and quick.patience == QUICK["patience"]
    full = parse(["demo"])
    assert full.seeds == 6 and full.train_size == 1000 and full.pretrain_epochs == 30 and full.plateau == 0.005


def test_ctrl_c_in_the_demo_ends_in_one_line_with_status_130(tmp_path, capsys, monkeypatch):
    """Ctrl-C inside one of the demo's runs (``train.Interrupted``) ends like ``lovasz train``: one line that
    says how to resume, exit status 130, no traceback."""
    from pathlib import Path

    from lovasz.experiments import cli
    from lovasz.experiments.train import Interrupted

    def interrupted(args):
        raise Interrupted(2, Path(tmp_path) / "seed0" / "pretrain" / "model.pt")

    monkeypatch.setitem(cli.COMMANDS, "demo", interrupted)
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--quick", "--out", str(tmp_path)])
    assert stop.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lovasz demo: interrupted after 2 saved epochs")
    assert "the same command again resumes" in err[0] and "Traceback" not in err[0]


def test_agreement_of_two_runs(tmp_path, capsys):
    def run(folder, findings):
        folder.mkdir()
        rows = {m: {"finding": f, "mean": 0.01 if f != "yes, lower" else -0.01} for m, f in findings.items()}
        (folder / "results.json").write_text(json.dumps({"task": "multiclass", "paired_differences": {"L": rows}}))
        return folder

    common = {"miou_dataset": "yes, higher", "miou_image_worst": "yes, lower"}
    a = run(tmp_path / "a", {**common, "miou_image": "no (1 seed: no interval)"})
    b = run(tmp_path / "b", {**common, "miou_image": "yes, lower"})
    agree, total, lines = agreement(a, b)
    assert (agree, total) == (2, 3) and len(lines) == 3
    assert "| L | per-image mIoU | no (+0.0100) | yes, lower (-0.0100) |" in lines[2]
    assert agreement(a, a) == (3, 3, [])
    main(["demo", "--agreement", str(a), str(b)])
    assert "agree in 2 of 3 comparisons" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--agreement", str(a), str(tmp_path / "none")])
    assert "results.json does not exist" in capsys.readouterr().err
