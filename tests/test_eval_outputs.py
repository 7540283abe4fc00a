"""Evaluation report files: confusion matrix (CSV + figure), most confused pairs, per-class
CSV, from `eval` and from the end of training; `eval save_predictions=true`."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffusion_seg.checkpoints import read_checkpoint_progress
from diffusion_seg.metrics import SegmentationMetrics
from diffusion_seg.plots import (
    CONFUSION_FILES,
    confused_pairs,
    confusion_figure,
    read_confusion_csv,
    write_eval_reports,
)

from .conftest import run_cli

NAMES = ["background", "disk_red", "disk_blue", "box_red", "box_blue"]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_reports_from_a_confusion_matrix(tmp_path):
    metrics = SegmentationMetrics(4)
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 16, 16))
    pred = torch.where(torch.rand(2, 16, 16) < 0.7, target, torch.randint(0, 4, (2, 16, 16)))
    pred[target == 3] = 2  # class 3 always predicted as 2
    metrics.update(pred, target)
    names = ["a", "b", "c", "d"]
    files = write_eval_reports(tmp_path, metrics.confmat, names, top=3)
    assert sorted(f.name for f in files) == sorted(CONFUSION_FILES)
    got_names, cm = read_confusion_csv(tmp_path / "confusion.csv")
    assert got_names == names and np.array_equal(cm, metrics.confmat.numpy())
    results = metrics.compute()
    rows = read_rows(tmp_path / "per_class.csv")
    assert [r["class"] for r in rows] == names
    for row, iou, acc, pixels in zip(rows, results["IoU"], results["Acc"], metrics.confmat.sum(1)):
        assert float(row["IoU (%)"]) == pytest.approx(100 * float(iou), abs=1e-4)  # percent, as the tables
        assert float(row["Acc (%)"]) == pytest.approx(100 * float(acc), abs=1e-4)
        assert int(row["pixels"]) == int(pixels)
    pairs = confused_pairs(metrics.confmat, names, top=3)
    assert (pairs[0].true, pairs[0].predicted, pairs[0].share) == ("d", "c", 1.0)
    text = (tmp_path / "confused_pairs.md").read_text()
    assert "| 1 | d | c |" in text and text.count("\n| ") == 4  # header + 3 pairs
    with Image.open(tmp_path / "confusion.png") as img:
        assert img.width > 300 and img.height > 300


def test_confusion_figure_stays_readable_at_150_classes():
    k = 150
    cm = np.diag(np.arange(1, k + 1) * 10) + np.ones((k, k), dtype=np.int64)
    names = [f"class_{i}" for i in range(k)]
    fig = confusion_figure(cm, names, top=20)
    ax = fig.axes[0]
    labels = ax.get_yticklabels()
    assert len(labels) == k and [t.get_text() for t in labels] == names
    size = labels[0].get_fontsize()
    assert 3 <= size < 9  # shrunk, still legible at the figure's size
    width, height = fig.get_size_inches()
    assert height * 72 / k >= size  # one label per row fits: no overlap
    assert "Top 20 confused pairs" in fig.axes[1].texts[0].get_text()


@pytest.mark.slow
def test_eval_writes_confusion_files_and_predictions(trained_pdn, tmp_path):
    run_dir, ckpt = trained_pdn
    run_cli("diffusion_seg.eval", f"ckpt_path={ckpt}", "save_predictions=true", log_dir=tmp_path)
    eval_dir = next((tmp_path / "eval" / "runs").iterdir())
    metrics = yaml.safe_load((eval_dir / "metrics.yaml").read_text())
    names, cm = read_confusion_csv(eval_dir / "confusion.csv")
    assert names == NAMES and cm.sum() == 16 * 64 * 64  # 16 val images, nothing ignored
    rows = {r["class"]: r for r in read_rows(eval_dir / "per_class.csv")}
    for name in NAMES:
        if f"val/IoU/{name}" in metrics:
            assert float(rows[name]["IoU (%)"]) == pytest.approx(100 * metrics[f"val/IoU/{name}"], abs=1e-4)
    ious = [float(r["IoU (%)"]) / 100 for r in rows.values() if r["IoU (%)"] != "nan"]
    assert np.mean(ious) == pytest.approx(metrics["val/mIoU"], abs=1e-6)
    assert (eval_dir / "confusion.png").is_file() and (eval_dir / "confused_pairs.md").is_file()
    labels = sorted((eval_dir / "predictions").glob("*.png"))
    assert len(labels) == 16 and len(list((eval_dir / "predictions").glob("*_overlay.jpg"))) == 16
    with Image.open(labels[0]) as img:
        assert img.mode == "P" and img.size == (64, 64)
    # the same confusion matrix as the training run's last validation of these weights
    _, train_cm = read_confusion_csv(run_dir / "eval" / "val" / "confusion.csv")
    assert np.array_equal(train_cm, cm)


@pytest.mark.slow
def test_training_run_writes_val_and_test_reports(trained_pdn):
    run_dir, _ = trained_pdn
    for stage in ("val", "test"):
        for name in CONFUSION_FILES:
            assert (run_dir / "eval" / stage / name).is_file(), (stage, name)
        _, cm = read_confusion_csv(run_dir / "eval" / stage / "confusion.csv")
        assert cm.sum() == 16 * 64 * 64


@pytest.mark.slow
def test_train_tables_checkpoints_csv_and_eval_agree_on_epoch_and_step(tmp_path):
    """A 3-epoch run through the CLI: every label of one validation (its table, its checkpoint's
    name and stored progress, its metrics.csv row, eval's table of that checkpoint) says the
    same epoch and step, and the test table names the checkpoint it tested. Before: eval said
    epoch 0, step 0; the test said the trainer's epoch 3; the CSV had step 47 for table 48."""
    overrides = ["backbone=tiny", "model=fcn", "dataset=synthetic", "dataset.length=16",
                 "dataset.eval_length=8", "dataset.size=48", "dataset.crop_size=48",
                 "dataset.batch_size=8", "trainer.max_epochs=3", "trainer.log_every_n_steps=1"]
    proc = run_cli("diffusion_seg.train", *overrides, log_dir=tmp_path)
    out = proc.stdout + proc.stderr
    tables = re.findall(r"^(val|test) metrics \(epoch (\d+), step (\d+)\)$", out, re.M)
    run_dir = next((tmp_path / "train" / "runs").iterdir())
    finished = yaml.safe_load((run_dir / "finished.yaml").read_text())
    best = Path(finished["best_checkpoint"])
    epoch, step = read_checkpoint_progress(best)
    assert best.name.startswith(f"epoch{epoch:03d}-step{step:07d}-")
    assert tables == [("val", "1", "2"), ("val", "2", "4"), ("val", "3", "6"), ("test", str(epoch), str(step))]
    assert (finished["epoch"], finished["global_step"]) == read_checkpoint_progress(run_dir / "checkpoints" / "last.ckpt") == (3, 6)
    rows = read_rows(run_dir / "csv" / "metrics.csv")
    logged = [(key[:-5], r["epoch"], r["step"]) for r in rows for key in ("val/mIoU", "test/mIoU") if r[key]]
    assert logged == [("val", "1", "2"), ("val", "2", "4"), ("val", "3", "6"), ("test", str(epoch), str(step))]
    proc = run_cli("diffusion_seg.eval", f"ckpt_path={best}", log_dir=tmp_path)
    out = proc.stdout + proc.stderr
    assert re.findall(r"^val metrics \(epoch (\d+), step (\d+)\)$", out, re.M) == [(str(epoch), str(step))]
    metrics = yaml.safe_load(next((tmp_path / "eval" / "runs").iterdir()).joinpath("metrics.yaml").read_text())
    assert "val/mIoU" in metrics and not set(metrics) & {"epoch", "step"}  # labels, not metrics


@pytest.mark.parametrize("fn, every_s, written_before_end", [
    ("fit", 60.0, [0, 0, 0]),       # the first at once, the next two wait for the fit's end
    ("fit", 0.0, [0, 1, 2]),        # every validation
    ("validate", 60.0, [0, 1, 2]),  # an eval run writes what it evaluated
])
def test_val_reports_are_rewritten_at_most_every_val_every_s_and_at_the_fit_end(
        tmp_path, fn, every_s, written_before_end):
    from types import SimpleNamespace

    from diffusion_seg.lightning.pictures import EvalReports

    names = ["background", "thing"]
    callback = EvalReports(dirpath=str(tmp_path), val_every_s=every_s)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, state=SimpleNamespace(fn=fn),
                              default_root_dir=str(tmp_path), current_epoch=0, global_step=0)
    module = SimpleNamespace(class_names=names, confmats={})

    def written() -> int:  # which validation the files hold: its matrix is [[epoch + 1, 0], [0, 1]]
        return int(read_confusion_csv(tmp_path / "val" / "confusion.csv")[1][0, 0]) - 1

    for epoch, expected in enumerate(written_before_end):
        trainer.current_epoch = epoch
        module.confmats["val"] = torch.tensor([[epoch + 1, 0], [0, 1]])
        callback.on_validation_end(trainer, module)
        assert written() == expected
    callback.on_fit_end(trainer, module)
    assert written() == 2  # the files left are the last validation's


def test_val_reports_interval_must_not_be_negative():
    from diffusion_seg.lightning.pictures import EvalReports

    with pytest.raises(ValueError, match="callbacks.eval_reports.val_every_s"):
        EvalReports(val_every_s=-1)
