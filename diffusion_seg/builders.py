"""Build the run's objects from a composed config: backbone, network, DataModule, task.

Shared by train, eval, the checkpoint loader and the tools. Every object is built with
``hydra.utils.instantiate`` from its config group, so any constructor argument is a
command-line override; errors name the config key.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from diffusion_seg.config import as_config_error, instantiate_node, unknown_option_error
from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.errors import ConfigError
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.compile import check_compile_options, compile_network
from diffusion_seg.models.segmentor import Segmentor


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
        raise as_config_error("model", err) from err


def compile_from_config(cfg: DictConfig, net: Segmentor) -> Segmentor:
    """``torch.compile`` ``net`` in place when ``compile=true`` (train, eval and predict), with
    ``compile_mode``, ``compile_backend`` and ``compile_debug``
    (:func:`diffusion_seg.models.compile.compile_network`). The options are checked either way,
    so a typo fails at once, not on the day compile is switched on."""
    mode = str(cfg.get("compile_mode", "default"))
    backend = str(cfg.get("compile_backend", "inductor"))
    try:
        check_compile_options(mode, backend)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.get("compile", False):
        compile_network(net, mode, backend, debug=bool(cfg.get("compile_debug", False)))
    return net


def build_datamodule(cfg: DictConfig, backbone: TimmBackbone) -> Any:
    """The DataModule, normalised like the backbone's pretraining, padded for evaluation to a
    multiple of its output stride and seeded (augmentations, distributed sampler) by the run's
    ``seed`` — unless the dataset config sets these itself."""
    default = Preprocessor.for_backbone(backbone)
    defaults = {"mean": list(default.mean), "std": list(default.std),
                "size_divisor": default.size_divisor, "seed": cfg.seed}
    kwargs = {k: v for k, v in defaults.items() if OmegaConf.select(cfg.dataset, k) is None}
    return instantiate_node(cfg, "dataset", **kwargs)


def build_task(cfg: DictConfig, net: Segmentor, class_names: list[str], train: bool = True) -> Any:
    """The LightningModule (``task`` config node) around ``net``; the resolved run config
    and the class names go into every checkpoint it writes."""
    # Hydra's own node (present when composed with return_hydra_config) is not the run's.
    run_keys = [key for key in cfg if key != "hydra"]
    config = OmegaConf.to_container(OmegaConf.masked_copy(cfg, run_keys), resolve=True)
    assert isinstance(config, dict)
    config["class_names"] = list(class_names)
    # Built as a partial and called here: the run config holds `_target_` nodes that Hydra
    # would instantiate if it were passed through `instantiate`.
    factory = instantiate_node(cfg, "task", _partial_=True)
    optimizer = instantiate_node(cfg, "optimizer") if train else None
    try:
        return factory(net=net, class_names=list(class_names), optimizer=optimizer, run_config=config)
    except TypeError as err:
        raise unknown_option_error("task", cfg.task._target_, err) from err
    except ValueError as err:
        raise as_config_error("task", err) from err
