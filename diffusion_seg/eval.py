"""Evaluate a checkpoint: ``python -m diffusion_seg.eval ckpt_path=<file.ckpt> [overrides]``.

The network is rebuilt from the config stored in the checkpoint. The dataset is the
checkpoint's too, unless ``dataset=<name>`` is given (e.g. to evaluate on another root).
Paper numbers come from single-device evaluation; multi-scale + flip with
``inference.scales=[0.5,0.75,1.0,1.25,1.5,1.75] inference.flip=true``, sliding window with
``inference.mode=slide``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_seg import CONFIG_DIR
from diffusion_seg.builders import build_datamodule, build_module
from diffusion_seg.checkpoint import load_segmentor
from diffusion_seg.config import ConfigError, instantiate_node, register_resolvers
from diffusion_seg.utils import log, print_config

register_resolvers()

VALID_SPLITS = ("val", "test")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Validate or test ``cfg.ckpt_path`` on ``cfg.split``; returns the logged metrics."""
    if cfg.split not in VALID_SPLITS:
        raise ConfigError(f"split={cfg.split!r} is invalid; allowed: {list(VALID_SPLITS)}")
    L.seed_everything(cfg.seed, workers=True)
    net, train_cfg = load_segmentor(cfg.ckpt_path)
    run_cfg = train_cfg.copy()
    with open_dict(run_cfg):
        for key in ("loss", "inference", "channels_last"):
            run_cfg[key] = cfg[key]
        if cfg.get("dataset") is not None:
            run_cfg.dataset = cfg.dataset
    datamodule = build_datamodule(run_cfg, net.backbone)
    if datamodule.class_names != list(train_cfg.class_names):
        raise ConfigError(
            f"dataset has classes {datamodule.class_names[:5]}... but the checkpoint was trained "
            f"on {list(train_cfg.class_names)[:5]}...; evaluate on a dataset with the same classes"
        )
    module = build_module(run_cfg, net, datamodule.class_names, train=False)
    trainer: L.Trainer = instantiate_node(cfg, "trainer", logger=False, callbacks=[])
    run = trainer.validate if cfg.split == "val" else trainer.test
    results = run(module, datamodule=datamodule)
    log.info("Run dir: %s", HydraConfig.get().runtime.output_dir)
    return dict(results[0]) if results else {}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    print_config(cfg)
    try:
        metrics = evaluate(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    out = Path(HydraConfig.get().runtime.output_dir) / "metrics.yaml"
    out.write_text(OmegaConf.to_yaml(OmegaConf.create(metrics)))
    log.info("Metrics written to %s", out)


if __name__ == "__main__":
    main()
