"""Evaluate a checkpoint: ``python -m diffusion_seg.eval ckpt_path=<file.ckpt> [overrides]``.

The network is rebuilt from the config stored in the checkpoint. The dataset is the
checkpoint's too, unless ``dataset=<name>`` is given (e.g. to evaluate on another root);
``+dataset.<key>=<value>`` changes one option of the checkpoint's dataset (e.g.
``+dataset.ignore_near=4``: the pathfinder's far pixels only).
The ``task`` node (inference, ignore index) is this command's: multi-scale + flip with
``task.inference.scales=[0.5,0.75,1.0,1.25,1.5,1.75] task.inference.flip=true``, sliding
window with ``task.inference.mode=slide``. Paper numbers come from single-device evaluation.

Next to ``metrics.yaml`` in the run dir: ``confusion.csv`` (K×K pixel counts),
``confusion.png`` (row-normalised, class names), ``confused_pairs.md`` and ``per_class.csv``
(:func:`diffusion_seg.plots.write_eval_reports`); with ``save_predictions=true`` also every
image's label PNG and overlay under ``predictions/``, as ``predict`` writes them.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_seg import CONFIG_DIR
from diffusion_seg.builders import build_datamodule, build_task, compile_from_config
from diffusion_seg.checkpoints import load_segmentor, read_checkpoint_progress
from diffusion_seg.cli.console import log, print_config
from diffusion_seg.cli.errors import hydra_command, user_errors
from diffusion_seg.config import instantiate_node, register_resolvers
from diffusion_seg.errors import ConfigError
from diffusion_seg.lightning.pictures import PredictionWriter
from diffusion_seg.lightning.task import PROGRESS_KEYS
from diffusion_seg.plots import write_eval_reports
from diffusion_seg.runtime import keep_freed_memory

register_resolvers()

VALID_SPLITS = ("val", "test")
# The values `--help` lists for the options that take one of a few.
OPTION_CHOICES = {"split": VALID_SPLITS}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Validate or test ``cfg.ckpt_path`` on ``cfg.split``; returns the logged metrics."""
    if cfg.split not in VALID_SPLITS:
        raise ConfigError(f"split={cfg.split!r} is invalid; allowed: {list(VALID_SPLITS)}")
    if cfg.get("malloc_keep_freed", True):
        keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True)
    net, train_cfg = load_segmentor(cfg.ckpt_path)
    compile_from_config(cfg, net)
    run_cfg = train_cfg.copy()
    with open_dict(run_cfg):
        run_cfg.task = cfg.task
        if cfg.get("dataset") is not None and "dataset_class" in cfg.dataset:
            run_cfg.dataset = cfg.dataset  # dataset=<name>: that dataset, whole
        elif cfg.get("dataset") is not None:  # +dataset.<key>=...: the checkpoint's, changed
            run_cfg.dataset = OmegaConf.merge(train_cfg.dataset, cfg.dataset)
    datamodule = build_datamodule(run_cfg, net.backbone)
    if datamodule.class_names != list(train_cfg.class_names):
        raise ConfigError(
            f"dataset has classes {datamodule.class_names[:5]}... but the checkpoint was trained "
            f"on {list(train_cfg.class_names)[:5]}...; evaluate on a dataset with the same classes"
        )
    task = build_task(run_cfg, net, datamodule.class_names, train=False)
    task.trained_at = read_checkpoint_progress(cfg.ckpt_path)  # the tables' (epoch, step)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    callbacks: list[L.Callback] = []
    if cfg.get("save_predictions"):
        callbacks.append(PredictionWriter(output_dir / "predictions", alpha=cfg.get("overlay_alpha", 0.5)))
    trainer: L.Trainer = instantiate_node(cfg, "trainer", logger=False, callbacks=callbacks)
    run = trainer.validate if cfg.split == "val" else trainer.test
    results = run(task, datamodule=datamodule)
    if trainer.is_global_zero and cfg.split in task.confmats:
        files = write_eval_reports(
            output_dir, task.confmats[cfg.split], datamodule.class_names,
            top=cfg.get("confused_pairs", 20),
            title=f"Confusion matrix, row-normalised ({cfg.split}, {Path(cfg.ckpt_path).name})",
        )
        log.info("Confusion matrix and per-class metrics: %s", ", ".join(str(f) for f in files))
    if callbacks:
        log.info("Predictions of %d images written to %s", callbacks[0].count, output_dir / "predictions")
    log.info("Run dir: %s", output_dir)
    return {k: v for k, v in results[0].items() if k not in PROGRESS_KEYS} if results else {}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def _main(cfg: DictConfig) -> None:
    print_config(cfg)
    with user_errors():
        metrics = evaluate(cfg)
    out = Path(HydraConfig.get().runtime.output_dir) / "metrics.yaml"
    out.write_text(OmegaConf.to_yaml(OmegaConf.create(metrics)))
    log.info("Metrics written to %s", out)


def main() -> None:
    hydra_command(_main, "eval")
