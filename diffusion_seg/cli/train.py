"""Train (and then test) a segmentation model: ``python -m diffusion_seg.train [overrides]``.

Examples::

    python -m diffusion_seg.train                                   # built-in dataset
    python -m diffusion_seg.train experiment=pdn_24nb_1m_ade20k     # a paper row
    python -m diffusion_seg.train -m model=fcn,deeplabv2 seed=1,2   # a sweep
    python -m diffusion_seg.train resume=logs/train/runs/2026-11-21_10-00-00  # continue a run
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig

from diffusion_seg import CONFIG_DIR
from diffusion_seg.builders import build_backbone, build_datamodule, build_segmentor, build_task
from diffusion_seg.cli.console import log, print_config
from diffusion_seg.cli.errors import hydra_command, user_errors
from diffusion_seg.config import instantiate_node, register_resolvers
from diffusion_seg.lightning.checkpoint import AtomicCheckpointIO, resolve_checkpoint_path

register_resolvers()

WANDB_ID_FILE = "wandb_run_id.txt"


def build_loggers(cfg: DictConfig, output_dir: Path) -> list[Logger]:
    """Loggers from the ``logger`` group; a W&B run keeps its id across resumes and is grouped
    by sweep in a multirun."""
    loggers: list[Logger] = []
    for name in cfg.get("logger") or {}:
        kwargs: dict[str, Any] = {}
        if name == "wandb":
            id_file = output_dir / WANDB_ID_FILE
            if id_file.is_file() and not cfg.logger.wandb.get("id"):
                kwargs["id"] = id_file.read_text().strip()
            if not cfg.logger.wandb.get("name"):
                kwargs["name"] = HydraConfig.get().job.override_dirname or cfg.task_name
            if HydraConfig.get().mode == RunMode.MULTIRUN and not cfg.logger.wandb.get("group"):
                kwargs["group"] = Path(HydraConfig.get().sweep.dir).name
        loggers.append(instantiate_node(cfg, f"logger.{name}", **kwargs))
    return loggers


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the final metrics."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info("Run dir: %s", output_dir)
    # Fail on a missing checkpoint before building anything.
    ckpt_path = resolve_checkpoint_path(cfg.get("resume"), cfg.get("ckpt_path"), output_dir)
    L.seed_everything(cfg.seed, workers=True)

    backbone = build_backbone(cfg)
    datamodule = build_datamodule(cfg, backbone)
    net = build_segmentor(cfg, datamodule.num_classes, backbone=backbone)
    task = build_task(cfg, net, datamodule.class_names)
    log.info(
        "Model: %s + %s, %d classes, %.2fM parameters (%.2fM new)",
        cfg.backbone.name,
        type(net.head).__name__,
        datamodule.num_classes,
        sum(p.numel() for p in net.parameters()) / 1e6,
        sum(p.numel() for p in net.new_parameters()) / 1e6,
    )

    loggers = build_loggers(cfg, output_dir)
    callbacks = [instantiate_node(cfg, f"callbacks.{k}") for k in cfg.get("callbacks") or {}]
    plugins = [instantiate_node(cfg, f"trainer.plugins.{i}") for i in range(len(cfg.trainer.plugins))]
    trainer: L.Trainer = instantiate_node(
        cfg,
        "trainer",
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(), *plugins],
    )
    for lg in loggers:
        if isinstance(lg, WandbLogger) and trainer.is_global_zero:
            (output_dir / WANDB_ID_FILE).write_text(lg.experiment.id)

    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.get("test_after_training"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        log.info("Testing %s", best or "the last weights")
        results = trainer.test(task, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(results[0] if results else {})
    log.info("Checkpoints: %s", output_dir / "checkpoints")
    log.info("Run dir: %s", output_dir)
    return metrics


def finish_wandb() -> None:
    """Close the W&B run so the next multirun job starts its own (a multirun would otherwise
    log every job into the first job's run)."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _main(cfg: DictConfig) -> float | None:
    print_config(cfg)
    try:
        with user_errors():
            metrics = train(cfg)
    finally:
        finish_wandb()
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


def main() -> float | None:
    return hydra_command(_main)


if __name__ == "__main__":
    main()
