"""Every config in every group composes, and what it describes can be built."""


import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion_seg import CONFIG_DIR
from diffusion_seg.builders import build_segmentor
from diffusion_seg import config as package_config
from diffusion_seg.config import ConfigError, instantiate_node
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.lightning.sync_bn import TimmSyncBatchNorm
from diffusion_seg.validation import check_command_line, config_problems

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
    assert list(config_problems(cfg, "train")) == []
    backbone = instantiate(cfg.backbone)
    assert isinstance(backbone, TimmBackbone) and backbone.output_stride == cfg.backbone.output_stride


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_build_and_run_on_tiny_backbone(name):
    cfg = compose_config([f"model={name}", "backbone=tiny"])
    assert list(config_problems(cfg, "train")) == []
    net = build_segmentor(cfg, num_classes=5)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.logits.shape[:2] == (2, 5)


@pytest.mark.parametrize("name", options("dataset"))
def test_dataset_configs_compose(name):
    cfg = compose_config([f"dataset={name}"])
    assert list(config_problems(cfg, "train")) == []
    assert cfg.dataset._target_ == "diffusion_seg.lightning.datamodule.SegmentationDataModule"
    assert OmegaConf.select(cfg, "dataset.dataset_class")


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_configs_compose_and_cpu_ones_build(name, tmp_path):
    cfg = compose_config([f"trainer={name}"], output_dir=tmp_path)
    assert list(config_problems(cfg, "train")) == []
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
        assert list(config_problems(cfg, "train")) == []
        if group == "optimizer":
            assert isinstance(instantiate(cfg.optimizer)([torch.nn.Parameter(torch.ones(1))]), torch.optim.Optimizer)
        else:
            for key in cfg[group] or {}:
                built = instantiate_node(cfg, f"{group}.{key}")
                target = cfg[group][key]["_target_"].rsplit(".", 1)[-1]
                assert type(built).__name__ == target, (group, key, type(built))


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_configs_build(name):
    cfg = compose_config([f"experiment={name}"])
    assert list(config_problems(cfg, "train")) == []
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


# -- start-up checks (diffusion_seg/validation.py) ------------------------------------------


def test_a_trainer_argument_needs_no_plus(tmp_path):
    """Any argument of Lightning's Trainer is a key of trainer, listed in conf/trainer/ or not
    (it was "Key 'limit_val_batches' is not in struct")."""
    assert check_command_line(["trainer.limit_val_batches=2", "seed=1"], "train") == [
        "++trainer.limit_val_batches=2", "seed=1"]
    cfg = package_config.compose_config(["trainer.limit_val_batches=2"])
    cfg.trainer.default_root_dir = str(tmp_path)
    assert instantiate_node(cfg, "trainer", logger=False).limit_val_batches == 2
    # In a sweep too, and each value of the sweep is checked.
    assert check_command_line(["-m", "trainer.limit_val_batches=1,2"], "train") == [
        "-m", "++trainer.limit_val_batches=1,2"]
    with pytest.raises(ConfigError, match=r"^trainer.limit_val_batches=-1 is invalid"):
        check_command_line(["-m", "trainer.limit_val_batches=1,-1"], "train")


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer.max_epoch=1"], "trainer.max_epoch is not an argument of lightning.pytorch.Trainer "
                              "(did you mean trainer.max_epochs?)"),
    (["trainr.max_epochs=1"], "trainr.max_epochs is not a key of the train config (did you mean "
                              "trainer.max_epochs?); add it with +trainr.max_epochs=1 if it is meant as a new key"),
    (["task.inference.scale=[1]"], "task.inference.scale is not a key of task.inference (did you mean "
                                   "task.inference.scales?); add it with +task.inference.scale=[1] if it is meant as a new key"),
    (["model=pdnn"], "model=pdnn: there is no conf/model/pdnn.yaml (did you mean model=pdn?)"),
    (["seed=1", "trainer.max_epochs=["], "cannot parse trainer.max_epochs=[: no viable alternative at input "
                                         "'[' (see Hydra's override grammar: key=value, +key=value, ~key)"),
    (["+trainer.max_epochs=3"], "Could not append to config. An item is already at 'trainer.max_epochs'.; "
                                "Either remove + prefix: 'trainer.max_epochs=3'; Or add a second + to add or "
                                "override 'trainer.max_epochs': '++trainer.max_epochs=3'"),
])
def test_a_misspelt_key_names_the_nearest_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        package_config.compose_config(overrides)
    assert str(err.value) == message


def test_a_sweep_without_multirun_and_a_bad_sweep_value_are_one_line():
    with pytest.raises(ConfigError, match=r"^seed=1,2 is a sweep: add -m \(--multirun\)"):
        check_command_line(["seed=1,2"], "train")
    with pytest.raises(ConfigError, match=r"^model.neighbors='abc' is invalid; allowed: an integer"):
        check_command_line(["-m", "model=pdn", "model.neighbors=8,abc"], "train")


def test_a_sweep_over_experiments_takes_a_key_only_the_swept_configs_have():
    """Hydra composes a sweep's primary config without the swept values (here the default
    synthetic experiment, which has no dataset.max_distance): the key gets ++ and every job is
    checked with it; a key no job has is still the job's one-line error."""
    argv = ["-m", "experiment=pathfinder_pdn,pathfinder_fcn", "dataset.max_distance=2", "seed=1"]
    assert check_command_line(argv, "train") == [
        "-m", "experiment=pathfinder_pdn,pathfinder_fcn", "++dataset.max_distance=2", "seed=1"]
    with pytest.raises(ConfigError, match=r"^dataset.max_distanc is not an argument of .*did you mean dataset.max_distance"):
        check_command_line(["-m", "experiment=pathfinder_pdn,pathfinder_fcn", "dataset.max_distanc=2"], "train")
    with pytest.raises(ConfigError, match=r"^dataset.max_distance is not an argument"):
        check_command_line(["dataset.max_distance=2"], "train")  # a single run keeps its error


def test_help_and_config_printing_go_to_hydra_unchecked():
    """eval --cfg job prints a config holding ckpt_path: ???; --help must not need one."""
    for flag in ("--help", "--cfg", "--hydra-help", "-cp"):
        assert check_command_line([flag, "job"], "eval") == [flag, "job"]
