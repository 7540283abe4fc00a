import csv
import re
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from diffusion_seg.checkpoints import read_checkpoint_progress
from diffusion_seg.lightning import task as task_module
from diffusion_seg.lightning.loggers import ResumableCSVLogger
from diffusion_seg.lightning.task import SegmentationTask
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import FCNHead, SegmentationHead, SegmentationOutput
from diffusion_seg.models.losses import cross_entropy
from diffusion_seg.models.segmentor import Segmentor


class TwoOutputHead(SegmentationHead):
    """FCN head plus one auxiliary classifier (deep supervision stand-in)."""

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.main = FCNHead(backbone, num_classes, channels=8)
        self.aux = torch.nn.Conv2d(backbone.channels[-2], num_classes, 1)

    def forward(self, features, image):
        return SegmentationOutput(self.main(features, image).logits, aux={"deep": self.aux(features[-2])})

    def diagnostics(self):
        return {"answer": 42.0}


def make_module(**kwargs):
    net = Segmentor(TimmBackbone("test_resnet"), TwoOutputHead, num_classes=3)
    return SegmentationTask(
        net, ["a", "b", "c"],
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=5e-4),
        scheduler=partial(torch.optim.lr_scheduler.PolynomialLR, power=0.9),
        **kwargs,
    )


def batch(n=2, size=32):
    return {"image": torch.randn(n, 3, size, size), "mask": torch.randint(0, 3, (n, size, size))}


def test_training_step_adds_weighted_aux_loss():
    module = make_module(aux_weight=0.4)
    b = batch()
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    torch.manual_seed(0)  # same dropout mask in both passes
    loss = module.training_step(b, 0)
    torch.manual_seed(0)
    out = module.net(b["image"])
    expected = cross_entropy(out.logits, b["mask"]) + 0.4 * cross_entropy(out.aux["deep"], b["mask"])
    assert torch.allclose(loss, expected, atol=1e-5)
    assert {"train/loss", "train/loss_main", "train/loss_aux/deep"} <= set(logged)
    loss.backward()
    assert module.net.head.aux.weight.grad is not None


def test_all_ignored_crop_gives_zero_loss_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 16, 16), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()  # nothing labelled, nothing learned


def test_new_layers_get_lr_multiplier_and_poly_decays_per_step(tmp_path):
    module = make_module(new_lr_mult=10.0)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    samples = [{"image": torch.randn(3, 32, 32), "mask": torch.randint(0, 3, (32, 32))} for _ in range(8)]
    data = torch.utils.data.DataLoader(samples, batch_size=2)
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):
            lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    trainer.callbacks.append(Record())
    trainer.fit(module, train_dataloaders=data)
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["backbone", "new"]
    assert lrs[0] == pytest.approx([0.01, 0.1])
    assert lrs[1][0] == pytest.approx(0.01 * (1 - 1 / 4) ** 0.9)  # poly 0.9, stepped per iteration
    assert lrs[1][1] / lrs[1][0] == pytest.approx(10.0)
    assert trainer.callback_metrics["diag/answer"] == 42.0


def test_validation_accumulates_confusion_matrix():
    module = make_module()
    module.eval()
    b = batch(2, 32)
    with torch.no_grad():
        module.log = lambda *a, **k: None
        module.validation_step(b, 0)
    assert module.metrics['val'].confmat.sum() == 2 * 32 * 32


def test_tables_checkpoints_and_csv_rows_agree_on_epoch_and_step(tmp_path, monkeypatch):
    """One convention (README, "Epochs and steps"): a validation or test of some weights is
    labelled (epochs run to their end, optimizer steps taken) in its table, its checkpoint's
    name and stored progress, and its metrics.csv row. Lightning alone says epoch 0 at the first
    validation, writes it at step 3 of 4, and labels a test by the trainer's counters rather
    than the checkpoint tested."""
    tables = []
    monkeypatch.setattr(task_module, "rank_zero_info", tables.append)
    samples = [{"image": torch.randn(3, 32, 32), "mask": torch.randint(0, 3, (32, 32))} for _ in range(8)]
    train = torch.utils.data.DataLoader(samples, batch_size=2)  # 4 steps per epoch
    val = torch.utils.data.DataLoader(samples[:2], batch_size=2)
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="epoch{epoch:03d}-step{step:07d}",
                                  auto_insert_metric_name=False, save_top_k=-1, save_last=True)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", callbacks=[every_epoch], num_sanity_val_steps=0,
                        logger=ResumableCSVLogger(tmp_path, name="csv", version=""),
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    module = make_module()
    trainer.fit(module, train, val)
    trainer.test(module, val)  # the last weights (train.py without a checkpoint callback)
    first = tmp_path / "ckpt" / "epoch001-step0000004.ckpt"
    trainer.test(module, val, ckpt_path=str(first))  # as train.py tests the best checkpoint
    trainer.test(module, val)  # the weights loaded last are still the first epoch's
    fresh = make_module()  # as eval.py: weights loaded outside Lightning, progress from the file
    fresh.trained_at = read_checkpoint_progress(tmp_path / "ckpt" / "last.ckpt")
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(fresh, val, verbose=False)

    labels = [m.group(1, 2, 3) for m in map(re.compile(r"\n(\w+) metrics \(epoch (\d+), step (\d+)\)").match, tables) if m]
    assert labels == [("val", "1", "4"), ("val", "2", "8"), ("val", "3", "12"),
                      ("test", "3", "12"), ("test", "1", "4"), ("test", "1", "4"), ("val", "3", "12")]
    names = sorted(p.name for p in (tmp_path / "ckpt").glob("epoch*.ckpt"))
    assert names == ["epoch001-step0000004.ckpt", "epoch002-step0000008.ckpt", "epoch003-step0000012.ckpt"]
    for name in [*names, "last.ckpt"]:
        epoch, step = read_checkpoint_progress(tmp_path / "ckpt" / name)
        assert name == "last.ckpt" or name.startswith(f"epoch{epoch:03d}-step{step:07d}")
    assert read_checkpoint_progress(tmp_path / "ckpt" / "last.ckpt") == (3, 12)
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    logged = [(key.split("/")[0], r["epoch"], r["step"]) for r in rows for key in ("val/mIoU", "test/mIoU") if r[key]]
    assert logged == [("val", "1", "4"), ("val", "2", "8"), ("val", "3", "12"),
                      ("test", "3", "12"), ("test", "1", "4"), ("test", "1", "4")]


def test_weights_of_unknown_progress_get_no_epoch_label(monkeypatch):
    tables = []
    monkeypatch.setattr(task_module, "rank_zero_info", tables.append)
    val = torch.utils.data.DataLoader([{"image": torch.randn(3, 32, 32), "mask": torch.zeros(32, 32, dtype=torch.long)}])
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(make_module(), val, verbose=False)
    assert tables[0].startswith("\nval metrics\n")  # not "epoch 0, step 0" for weights never trained here
