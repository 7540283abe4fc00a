"""PDN through the real training stack (config → builders → SegmentationTask → one
optimiser step, intermediate supervision logged), and the paper rows compose as described."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffusion_seg import CONFIG_DIR
from diffusion_seg.models.pdn import PDNHead
from tests.conftest import TINY_SYNTHETIC, compose_config, fit_one_step

OVERRIDES = [
    "model=pdn",
    "model.modules=2",
    "model.layers=2",
    "model.hidden=16",
    "model.neighbors=8",
    *TINY_SYNTHETIC,
]


def test_one_training_step_with_intermediate_supervision(tmp_path: Path) -> None:
    cfg, net, trainer, before = fit_one_step(OVERRIDES, tmp_path)
    assert isinstance(net.head, PDNHead) and net.head.insert_at == ["layer3", "output"]

    # the diffusion modules (the one hooked into layer3 included) are new layers: 10× lr
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    new = {id(p) for p in groups["new"]["params"]}
    assert {id(p) for p in net.head.pdn.parameters()} <= new
    assert groups["new"]["lr"] == pytest.approx(groups["backbone"]["lr"] * cfg.task.new_lr_mult)

    after = net.state_dict()
    for name in ("backbone.model.layer3.module.layers.0.taps", "head.on_output.pdn2.layers.1.taps",
                 "backbone.model.layer3.module.proj_out.weight", "head.on_output.pdn2.classifiers.1.weight",
                 "head.classifier.branches.0.weight"):
        assert not torch.equal(before[name], after[name]), f"{name} did not train"
    logged = set(trainer.callback_metrics)
    assert {f"train/loss_aux/pdn{m}_layer{t}" for m in (1, 2) for t in (1, 2)} <= logged
    # the residual branches (zero at init) are logged, and left zero after one step
    assert {"diag/pdn1_out_norm", "diag/pdn2_out_norm"} <= logged
    assert trainer.callback_metrics["diag/pdn1_out_norm"] > 0


# name: (neighbors, modules, insertion points, dataset class, SyncBN, paper number or None)
PAPER_ROWS = {
    "pdn_8nb_1m_ade20k": (8, 1, ["layer4.1"], "ADE20K", False, "36.18"),
    "pdn_24nb_1m_ade20k": (24, 1, ["layer4.1"], "ADE20K", False, "37.02"),
    "pdn_24nb_2m_ade20k": (24, 2, ["layer4.0", "layer4.1"], "ADE20K", False, "37.71"),
    "pdn_8nb_1m_ade20k_syncbn": (8, 1, ["layer4.1"], "ADE20K", True, "40.87"),
    "pdn_24nb_1m_ade20k_syncbn": (24, 1, ["layer4.1"], "ADE20K", True, "41.56"),
    "pdn_24nb_2m_ade20k_syncbn": (24, 2, ["layer4.0", "layer4.1"], "ADE20K", True, "41.89"),
    "pdn_8nb_1m_person_part": (8, 1, ["layer4.1"], "PersonPart", False, "63.3"),
    "pdn_24nb_1m_person_part": (24, 1, ["layer4.1"], "PersonPart", False, "64.0"),
    "pdn_24nb_2m_person_part": (24, 2, ["layer4.0", "layer4.1"], "PersonPart", False, "64.9"),
    "pdn_8nb_1m_person_part_syncbn": (8, 1, ["layer4.1"], "PersonPart", True, None),
    "pdn_24nb_1m_person_part_syncbn": (24, 1, ["layer4.1"], "PersonPart", True, "67.9"),
    "pdn_24nb_2m_person_part_syncbn": (24, 2, ["layer4.0", "layer4.1"], "PersonPart", True, "68.3"),
}


def test_every_pdn_row_is_listed() -> None:
    rows = {p.stem for p in (CONFIG_DIR / "experiment").glob("pdn_*nb_*.yaml")}
    assert rows == set(PAPER_ROWS)


@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_paper_rows_compose_with_the_papers_hyperparameters(name: str) -> None:
    neighbors, modules, points, dataset, syncbn, number = PAPER_ROWS[name]
    cfg = compose_config([f"experiment={name}"])
    assert cfg.model._target_ == "diffusion_seg.models.pdn.PDNHead"
    assert (cfg.model.neighbors, cfg.model.modules, cfg.model.layers) == (neighbors, modules, 4)
    assert list(cfg.model.insert_at) == points
    assert (cfg.model.hidden, cfg.model.conv, cfg.model.classifier) == (256, "channelwise", "aspp")
    assert cfg.backbone.name == "resnet101" and cfg.backbone.output_stride == 8
    assert cfg.backbone.dilation_pattern == "deeplab"  # DeepLab-v2: every block dilated
    assert cfg.dataset.dataset_class.endswith(f".{dataset}")
    assert cfg.dataset.crop_size == 321
    # lr 2.5e-4 pretrained / 2.5e-3 new, SGD 0.9, weight decay 5e-4, 200k iterations
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert cfg.optimizer.lr * cfg.task.new_lr_mult == pytest.approx(2.5e-3)
    assert cfg.optimizer.lr == pytest.approx(2.5e-4)
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.9, 5e-4)
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs) == (200_000, -1)
    if syncbn:  # 8 GPUs × 2 = 16, BatchNorm synchronised
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices * cfg.dataset.batch_size == 16
        assert cfg.backbone.frozen_bn is False
    else:  # one GPU, batch 1, BatchNorm frozen
        assert cfg.trainer.devices == 1 and cfg.dataset.batch_size == 1
        assert cfg.backbone.frozen_bn is True
    header = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    assert (number or "not in the paper") in header
    assert OmegaConf.select(cfg, "task_name") == name


def test_per_layer_classifiers_are_evaluable(tmp_path: Path) -> None:
    """task.eval_aux=true (PDN Table 2: the module output per number of layers): each layer's
    classifier gets val metrics equal to scoring its own upsampled argmax by hand."""
    import lightning as L

    from diffusion_seg.builders import build_backbone, build_datamodule, build_segmentor, build_task
    from diffusion_seg.metrics import SegmentationMetrics
    from diffusion_seg.models.inference import resize_logits

    cfg = compose_config([*OVERRIDES, "task.eval_aux=true"], output_dir=tmp_path)
    backbone = build_backbone(cfg)
    datamodule = build_datamodule(cfg, backbone)
    net = build_segmentor(cfg, datamodule.num_classes, backbone=backbone)
    task = build_task(cfg, net, datamodule.class_names, train=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    results = trainer.validate(task, datamodule=datamodule)[0]
    names = [f"pdn{m}_layer{t}" for m in (1, 2) for t in (1, 2)]
    assert {f"val/aux/{n}/mIoU" for n in names} <= set(results)

    by_hand = {n: SegmentationMetrics(datamodule.num_classes) for n in names}
    plain = SegmentationMetrics(datamodule.num_classes)
    net.eval()
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            out = net(batch["image"])
            size = batch["mask"].shape[-2:]
            plain.update(resize_logits(out.logits, size).argmax(1), batch["mask"])
            for n in names:
                by_hand[n].update(resize_logits(out.aux[n], size).argmax(1), batch["mask"])
    for n in names:
        assert results[f"val/aux/{n}/mIoU"] == pytest.approx(float(by_hand[n].compute()["mIoU"]), abs=1e-6)
    assert results["val/mIoU"] == pytest.approx(float(plain.compute()["mIoU"]), abs=1e-6)
