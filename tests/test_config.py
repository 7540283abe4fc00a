"""Every config in every group composes, and what it describes can be built."""


import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion_seg import CONFIG_DIR
from diffusion_seg.builders import build_segmentor
from diffusion_seg.config import ConfigError, instantiate_node
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.lightning.sync_bn import TimmSyncBatchNorm

from .conftest import compose_config


def options(group: str) -> list[str]:
    """A group's choices; ``default`` is the base the others extend, not a choice."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if p.stem != "default")


def test_every_group_has_options():
    for group in ("backbone", "model", "dataset", "trainer", "logger", "callbacks", "optimizer"):
        assert options(group), group


@pytest.mark.parametrize("name", options("backbone"))
def test_backbone_configs_build(name):
    cfg = compose_config([f"backbone={name}", "backbone.pretrained=false"])
    backbone = instantiate(cfg.backbone)
    assert isinstance(backbone, TimmBackbone) and backbone.output_stride == cfg.backbone.output_stride


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_build_and_run_on_tiny_backbone(name):
    cfg = compose_config([f"model={name}", "backbone=tiny"])
    net = build_segmentor(cfg, num_classes=5)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.logits.shape[:2] == (2, 5)


@pytest.mark.parametrize("name", options("dataset"))
def test_dataset_configs_compose(name):
    cfg = compose_config([f"dataset={name}"])
    assert cfg.dataset._target_ == "diffusion_seg.lightning.datamodule.SegmentationDataModule"
    assert OmegaConf.select(cfg, "dataset.dataset_class")


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_configs_compose_and_cpu_ones_build(name, tmp_path):
    cfg = compose_config([f"trainer={name}"], output_dir=tmp_path)
    plugins = [instantiate(p) for p in cfg.trainer.plugins]
    if cfg.trainer.accelerator == "cpu":
        trainer = instantiate_node(cfg, "trainer", plugins=plugins, logger=False)
        assert trainer.num_devices == cfg.trainer.devices
    else:  # GPU configs: bf16 and, for DDP, timm-aware SyncBN instead of Lightning's
        assert cfg.trainer.precision == "bf16-mixed"
        if "ddp" in name:
            assert any(isinstance(p, TimmSyncBatchNorm) for p in plugins)
            assert cfg.trainer.sync_batchnorm is False


@pytest.mark.parametrize("group", ["logger", "callbacks", "optimizer"])
def test_logger_callback_optimizer_configs_build(group, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in options(group):
        cfg = compose_config([f"{group}={name}"], output_dir=tmp_path)
        if group == "optimizer":
            assert isinstance(instantiate(cfg.optimizer)([torch.nn.Parameter(torch.ones(1))]), torch.optim.Optimizer)
        else:
            for key in cfg[group] or {}:
                assert instantiate_node(cfg, f"{group}.{key}") is not None


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_configs_build(name):
    cfg = compose_config([f"experiment={name}"])
    net = build_segmentor(cfg, num_classes=7, pretrained=False)
    assert sum(p.numel() for p in net.new_parameters()) > 0


def test_eval_config_composes():
    cfg = compose_config(["ckpt_path=x.ckpt"], config_name="eval")
    assert cfg.split == "val" and cfg.get("dataset") is None


def test_timm_sync_bn_keeps_fused_activation():
    import timm
    from timm.layers import BatchNormAct2d

    model = timm.create_model("test_efficientnet", pretrained=False)
    acts = [type(m.act) for m in model.modules() if isinstance(m, BatchNormAct2d)]
    converted = TimmSyncBatchNorm().apply(model)
    synced = [m for m in converted.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert acts and len(synced) == len(acts)
    assert [type(m.act) for m in synced] == acts  # torch's converter would drop these


def test_invalid_value_names_key_and_allowed_values():
    cfg = compose_config(["backbone.output_stride=12"])
    with pytest.raises(ConfigError, match=r"backbone.output_stride=12.*\[8, 16, 32\]"):
        instantiate_node(cfg, "backbone")


def test_unknown_option_names_key():
    cfg = compose_config(["+backbone.depth=3"])
    with pytest.raises(ConfigError, match="backbone.depth is not an option of .*TimmBackbone"):
        instantiate_node(cfg, "backbone")


def test_run_seed_drives_the_augmentation_stream(tmp_path):
    from diffusion_seg.builders import build_backbone, build_datamodule

    def first_crop(seed):
        cfg = compose_config([f"seed={seed}", "dataset.scale_range=[0.5,2.0]", "dataset.crop_size=48"])
        dm = build_datamodule(cfg, build_backbone(cfg))
        dm.setup("fit")
        return dm._get("train")[0]["image"]

    assert torch.equal(first_crop(1), first_crop(1))
    assert not torch.equal(first_crop(1), first_crop(2))
