"""The comparison heads of PDN's tables (LG-LSTM, PSPNet, DeepLab-v3) train through the real
stack, and the dense CRF runs as an evaluation option."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from diffusion_seg.builders import build_backbone, build_datamodule, build_segmentor, build_task
from diffusion_seg.models.crf import dense_crf
from diffusion_seg.models.inference import resize_logits

from .conftest import TINY_SYNTHETIC, compose_config

SMALL = {
    "lg_lstm": ["model.layers=2", "model.hidden=8"],
    "pspnet": ["model.channels=16", "model.aux_channels=8"],
    "deeplabv3": ["model.channels=16", "model.aux_channels=8"],
}


def build(overrides: list[str], tmp_path: Path, train: bool = True):
    cfg = compose_config([*TINY_SYNTHETIC, *overrides], output_dir=tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]
    backbone = build_backbone(cfg)
    datamodule = build_datamodule(cfg, backbone)
    net = build_segmentor(cfg, datamodule.num_classes, backbone=backbone)
    return cfg, datamodule, net, build_task(cfg, net, datamodule.class_names, train=train)


@pytest.mark.parametrize("model", sorted(SMALL))
def test_head_trains_and_its_loss_decreases(model, tmp_path):
    torch.manual_seed(0)
    _, datamodule, net, task = build([f"model={model}", *SMALL[model], "task.aux_weight=0.4"], tmp_path)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    task.log = lambda *args, **kwargs: None
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    losses = []
    for _ in range(8):  # one fixed batch: a head that learns fits it
        loss = task.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    if model != "lg_lstm":
        assert "fcn_layer3" in net(batch["image"]).aux  # PSPNet's / DeepLab-v3's aux FCN head


def test_validation_with_the_dense_crf(tmp_path):
    """task.inference.crf=true: the metrics are those of the CRF's marginals on the softmax."""
    from diffusion_seg.metrics import SegmentationMetrics

    overrides = ["model=fcn", "task.inference.crf=true", "task.inference.crf_params.iterations=3"]
    cfg, datamodule, net, task = build(overrides, tmp_path, train=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    results = trainer.validate(task, datamodule=datamodule)[0]
    expected, plain = SegmentationMetrics(net.num_classes), SegmentationMetrics(net.num_classes)
    mean = torch.tensor(datamodule.mean).view(1, 3, 1, 1)
    std = torch.tensor(datamodule.std).view(1, 3, 1, 1)
    net.eval()
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            probs = resize_logits(net(batch["image"]).logits, batch["mask"].shape[-2:]).softmax(1)
            rgb = (batch["image"] * std + mean).mul(255).clamp(0, 255)
            crf = dense_crf(probs, rgb, **dict(cfg.task.inference.crf_params))
            expected.update(crf.argmax(1), batch["mask"])
            plain.update(probs.argmax(1), batch["mask"])
    assert results["val/mIoU"] == pytest.approx(float(expected.compute()["mIoU"]), abs=1e-6)
    assert "val/loss" not in results  # the CRF's marginals are not logits

    # Inside fit, validation picks the checkpoint and runs without the CRF (its scores are
    # logits again, so val/loss is logged); the CRF is post-processing of the final network.
    fit = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path, max_epochs=1,
                    limit_train_batches=1, enable_checkpointing=False)
    fit.fit(build(overrides, tmp_path)[3], datamodule=datamodule)
    assert "val/loss" in fit.callback_metrics
