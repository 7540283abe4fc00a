"""Build the run's objects from a composed config (shared by train, eval and tools)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from diffusion_seg.config import ConfigError, instantiate_node, unknown_option_error
from diffusion_seg.data.datamodule import SegmentationDataModule
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.segmentor import Segmentor
from diffusion_seg.module import SegmentationModule


def build_backbone(cfg: DictConfig, pretrained: bool = True) -> TimmBackbone:
    """The backbone; ``pretrained=False`` skips weight loading (a checkpoint will supply them)."""
    overrides: dict[str, Any] = {} if pretrained else {"pretrained": False, "weights": None}
    return instantiate_node(cfg, "backbone", **overrides)


def build_segmentor(
    cfg: DictConfig,
    num_classes: int,
    pretrained: bool = True,
    backbone: TimmBackbone | None = None,
) -> Segmentor:
    """Backbone (built here unless given) + the ``model`` head."""
    backbone = backbone if backbone is not None else build_backbone(cfg, pretrained)
    head_factory = instantiate_node(cfg, "model")
    try:
        return Segmentor(backbone, head_factory, num_classes)
    except TypeError as err:
        raise unknown_option_error("model", getattr(head_factory, "func", head_factory), err) from err
    except ValueError as err:
        message = str(err)
        raise ConfigError(message if message.startswith("model.") else f"model: {message}") from err


def build_datamodule(cfg: DictConfig, backbone: TimmBackbone) -> SegmentationDataModule:
    """The DataModule, normalised like the backbone's pretraining, padded for evaluation to a
    multiple of its output stride and seeded (augmentations, distributed sampler) by the run's
    ``seed`` — unless the dataset config sets these itself."""
    defaults = {"mean": list(backbone.mean), "std": list(backbone.std),
                "size_divisor": max(backbone.reductions), "seed": cfg.seed}
    kwargs = {k: v for k, v in defaults.items() if OmegaConf.select(cfg.dataset, k) is None}
    return instantiate_node(cfg, "dataset", **kwargs)


def build_module(
    cfg: DictConfig, net: Segmentor, class_names: list[str], train: bool = True
) -> SegmentationModule:
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    config["class_names"] = class_names
    return SegmentationModule(
        net,
        class_names,
        optimizer=instantiate_node(cfg, "optimizer") if train else None,
        scheduler=instantiate_node(cfg, "scheduler") if train and cfg.get("scheduler") else None,
        new_lr_mult=cfg.get("new_lr_mult", 10.0),
        aux_weight=cfg.loss.aux_weight,
        ignore_index=cfg.loss.ignore_index,
        inference=OmegaConf.to_container(cfg.inference, resolve=True),
        channels_last=cfg.get("channels_last", False),
        config=config,
    )
