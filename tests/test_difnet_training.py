"""DifNet through the real training stack: config → builders → SegmentationTask → one
optimiser step → checkpoint → visualisation of that checkpoint; and the paper rows compose."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from PIL import Image

from diffusion_seg import CONFIG_DIR
from diffusion_seg.models.difnet import DifNetHead
from diffusion_seg.visualize import main as visualize_main
from tests.conftest import TINY_SYNTHETIC, compose_config, fit_one_step

OVERRIDES = [
    "model=difnet",
    "model.walks=3",
    "model.seed_loss=true",
    *TINY_SYNTHETIC,
]


def test_one_training_step_then_visualise_the_checkpoint(tmp_path: Path) -> None:
    cfg, net, trainer, before = fit_one_step(OVERRIDES, tmp_path)
    assert isinstance(net.head, DifNetHead) and net.head.levels == [0, 2, 4]

    groups = {g["name"]: {id(p) for p in g["params"]} for g in trainer.optimizers[0].param_groups}
    assert {id(p) for p in net.head.similarity.parameters()} <= groups["backbone"]
    assert {id(net.head.walks[0].a), id(net.head.walks[-1].b)} <= groups["new"]
    after = net.state_dict()
    for name in ("head.walks.0.a", "head.walks.2.b", "head.similarity.model.conv1.0.weight",
                 "head.importance.2.weight", "head.classifier.branches.0.weight"):
        assert not torch.equal(before[name], after[name]), f"{name} did not train"
    logged = trainer.callback_metrics
    assert {"train/loss_aux/seed", "diag/mu_1", "diag/beta_3"} <= set(logged)

    ckpt = tmp_path / "difnet.ckpt"
    trainer.save_checkpoint(ckpt)
    image = tmp_path / "image.png"
    Image.fromarray(torch.randint(0, 255, (40, 40, 3), dtype=torch.uint8).numpy()).save(image)
    out = tmp_path / "viz"
    visualize_main(["--ckpt", str(ckpt), "--image", str(image), "--out", str(out), "--pixels", "3,4"])
    names = {p.name for p in out.iterdir()}
    assert {"walk_3_argmax.png", "transition_t3_pixel1.png", "importance.png"} <= names


PAPER_ROWS = {
    # name: (head, backbone, dataset target, aspp)
    "difnet18_voc": ("DifNetHead", "resnet18", "VOCAug", True),
    "difnet34_voc": ("DifNetHead", "resnet34", "VOCAug", True),
    "difnet50_voc": ("DifNetHead", "resnet50", "VOCAug", True),
    "difnet101_voc": ("DifNetHead", "resnet101", "VOCAug", True),
    "difnet50_noaspp_voc": ("DifNetHead", "resnet50", "VOCAug", False),
    "simdeeplab18_voc": ("DeepLabV2Head", "resnet18", "VOCAug", None),
    "simdeeplab34_voc": ("DeepLabV2Head", "resnet34", "VOCAug", None),
    "simdeeplab50_voc": ("DeepLabV2Head", "resnet50", "VOCAug", None),
    "simdeeplab101_voc": ("DeepLabV2Head", "resnet101", "VOCAug", None),
    "difnet50_context": ("DifNetHead", "resnet50", "PascalContext", True),
    "difnet50_noaspp_context": ("DifNetHead", "resnet50", "PascalContext", False),
    "difnet101_context": ("DifNetHead", "resnet101", "PascalContext", True),
    "simdeeplab101_context": ("DeepLabV2Head", "resnet101", "PascalContext", None),
}


def test_every_difnet_experiment_is_listed() -> None:
    names = {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")}
    ours = {n for n in names if n.startswith(("difnet", "simdeeplab"))}
    assert ours == set(PAPER_ROWS)


@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_paper_rows_compose_with_the_published_recipe(name: str, tmp_path: Path) -> None:
    cfg = compose_config([f"experiment={name}"], output_dir=tmp_path)
    head, backbone, dataset, aspp = PAPER_ROWS[name]
    assert cfg.model._target_.endswith(head) and cfg.backbone.name == backbone
    assert cfg.backbone.output_stride == 8 and cfg.backbone.pretrained
    assert cfg.dataset.dataset_class.endswith(dataset)
    if dataset == "PascalContext":
        assert cfg.dataset.classes == 60  # 59 classes + background (paper Sec. 5.1)
    if aspp is not None:
        assert cfg.model.aspp is aspp and cfg.model.walks == 5 and cfg.model.diffusion == "attention"
    # published code: one lr 2.5e-3 for all parameters, SGD 0.9, wd 5e-4, poly 0.9
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.task.new_lr_mult) == (2.5e-3, 1.0)
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.9, 5e-4)
    assert cfg.task.scheduler.power == 0.9 and cfg.backbone.dilation_pattern == "deeplab"
    assert (cfg.dataset.batch_size, cfg.dataset.crop_size) == (16, 321)
    assert list(cfg.dataset.scale_range) == [0.5, 1.4] and cfg.dataset.hflip
    assert cfg.trainer.max_epochs == 200 and cfg.trainer.devices == 1
