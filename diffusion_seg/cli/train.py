"""Train (and then test) a segmentation model: ``python -m diffusion_seg.train [overrides]``.

Examples::

    python -m diffusion_seg.train                                   # built-in dataset
    python -m diffusion_seg.train experiment=pdn_24nb_1m_ade20k     # a paper row
    python -m diffusion_seg.train -m model=fcn,deeplabv2 seed=1,2   # a sweep
    python -m diffusion_seg.train resume=logs/train/runs/2026-11-21_10-00-00  # continue a run
    python -m diffusion_seg.train -m hydra/launcher=submitit_slurm seed=1,2     # on SLURM
    python -m diffusion_seg.train hparams_search=pdn_optuna model=pdn           # Optuna search

A run survives: a job dir that holds the job already is skipped (finished) or continued
(``auto_resume``, :mod:`diffusion_seg.jobs`), or with ``reuse_from=<dir>`` copied from a job
that finished under that dir with the same config and code; a stop signal saves ``last.ckpt``
at the current step and a non-finite step stops the run (:mod:`diffusion_seg.lightning.safety`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from diffusion_seg import CONFIG_DIR
from diffusion_seg.builders import build_backbone, build_datamodule, build_segmentor, build_task, compile_from_config
from diffusion_seg.cli.console import log, print_config, quiet_known_warnings
from diffusion_seg.cli.errors import hydra_command, user_errors
from diffusion_seg.config import instantiate_node, register_resolvers
from diffusion_seg.errors import ConfigError
from diffusion_seg.jobs import (
    FINISHED_FILE,
    RunPlan,
    end_attempts,
    find_reusable,
    plan_run,
    read_yaml,
    record_attempt,
    resolved_config,
    reuse_finished,
    write_finished,
)
from diffusion_seg.lightning.checkpoint import AtomicCheckpointIO
from diffusion_seg.lightning.safety import Interrupted, NonFiniteError, RunGuard, cluster_plugins
from diffusion_seg.lightning.task import PROGRESS_KEYS
from diffusion_seg.runtime import keep_freed_memory
from diffusion_seg.sweeps import register_sweep_resolvers

register_resolvers()
register_sweep_resolvers()

# Command-line choices that need the `cluster` extra → the module they need.
CLUSTER_PLUGINS = {
    "hydra/launcher=submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=submitit_local": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher",
    "hparams_search": "hydra_plugins.hydra_optuna_sweeper",
}

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
    """Fit, then test the best checkpoint; returns the final metrics (also written to
    ``finished.yaml``). A job dir that holds this job already is skipped or continued."""
    quiet_known_warnings()  # also in a job a launcher started in a process of its own
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    log.info("Run dir: %s", output_dir)
    # Fails on a missing checkpoint or a dir holding another job, before building anything.
    plan = plan_run(output_dir, overrides, cfg.get("resume"), cfg.get("ckpt_path"), cfg.get("auto_resume", True))
    if plan.action == "start" and cfg.get("reuse_from"):
        if not Path(cfg.reuse_from).is_dir():
            log.warning("reuse_from=%s is not a directory: no job to reuse there; training", cfg.reuse_from)
        source = find_reusable(Path(cfg.reuse_from), resolved_config(cfg), output_dir)
        if source is not None:
            plan = RunPlan("reuse", source=source, finished=read_yaml(source / FINISHED_FILE),
                           reason=f"the same job finished in {source}")
    if rank_zero_only.rank == 0:
        record_attempt(output_dir, overrides, plan, cfg)
    if plan.action == "skip":
        return skip_finished(plan, output_dir, cfg)
    if plan.action == "reuse":
        if rank_zero_only.rank == 0:
            reuse_finished(output_dir, overrides, plan.source)
        log.info("Reused: this job's config (study, paths and loggers aside) and code are those of "
                 "%s, which finished; its records are copied here instead of training "
                 "(reuse_from=null trains it)", plan.source)
        return recorded_metrics(plan.finished)
    if cfg.get("malloc_keep_freed", True):
        keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True)

    backbone = build_backbone(cfg)
    datamodule = build_datamodule(cfg, backbone)
    net = compile_from_config(cfg, build_segmentor(cfg, datamodule.num_classes, backbone=backbone))
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
    guard = RunGuard(output_dir / "checkpoints")
    callbacks = [instantiate_node(cfg, f"callbacks.{k}") for k in cfg.get("callbacks") or {}]
    plugins = [instantiate_node(cfg, f"trainer.plugins.{i}") for i in range(len(cfg.trainer.plugins))]
    trainer: L.Trainer = instantiate_node(
        cfg,
        "trainer",
        logger=loggers or False,
        callbacks=[*callbacks, guard],
        plugins=[AtomicCheckpointIO(), *cluster_plugins(), *plugins],
    )
    for lg in loggers:
        if isinstance(lg, WandbLogger) and trainer.is_global_zero:
            (output_dir / WANDB_ID_FILE).write_text(lg.experiment.id)

    if plan.ckpt_path:
        log.info("Resuming from %s (%s)", plan.ckpt_path, plan.reason)
    else:
        log.info("Starting from scratch (%s)", plan.reason)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=plan.ckpt_path)
        guard.stop_if_signalled(trainer, task)  # a signal during the last validation
    except Interrupted as stop:
        stopped(stop, output_dir)
    except SIGTERMException:  # Lightning's own handler (before the guard's were installed)
        log.warning("Stopped by SIGTERM outside the training steps (Lightning's handler): nothing new saved")
        raise SystemExit(143) from None
    except NonFiniteError as err:
        if trainer.is_global_zero:
            write_finished(output_dir, overrides, {}, status="diverged", epoch=trainer.current_epoch,
                           global_step=trainer.global_step, error=str(err))
        raise

    metrics = scalar_metrics(trainer.callback_metrics)
    metric = cfg.get("optimized_metric")
    if metric and metric.startswith("val/") and metric not in metrics:
        # Resumed from a checkpoint taken after the last epoch: no validation ran this time.
        log.info("Validating the final weights for %s", metric)
        for results in trainer.validate(task, datamodule=datamodule, verbose=False):
            metrics.update(scalar_metrics(results))
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test_after_training"):
        weights = best or "the last weights"
        if datamodule.has_test_split:
            log.info("Testing %s", weights)
            results = trainer.test(task, datamodule=datamodule, ckpt_path=best or None)
        else:  # never the validation split under a test label
            log.info("No test split (dataset.test_split=%s): validating %s instead; set "
                     "dataset.test_split=<split> to test on one", datamodule.splits["test"] or "null", weights)
            results = trainer.validate(task, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(scalar_metrics(results[0]) if results else {})
    if trainer.is_global_zero:
        write_finished(output_dir, overrides, metrics, epoch=trainer.current_epoch,
                       global_step=trainer.global_step, best_checkpoint=best)
    log.info("Checkpoints: %s", output_dir / "checkpoints")
    log.info("Run dir: %s", output_dir)
    return metrics


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics, without the (epoch, step) that label them (finished.yaml has its own)."""
    return {k: float(v) for k, v in metrics.items()
            if k not in PROGRESS_KEYS and getattr(v, "numel", lambda: 1)() == 1}


def recorded_metrics(finished: dict[str, Any]) -> dict[str, float]:
    """The final metrics a ``finished.yaml`` recorded."""
    return {k: float(v) for k, v in (finished.get("metrics") or {}).items()}


def skip_finished(plan: RunPlan, output_dir: Path, cfg: DictConfig) -> dict[str, float]:
    """A job that finished before: its recorded metrics, without building anything."""
    finished = plan.finished
    if finished.get("status") == "diverged":
        raise NonFiniteError(
            f"this job diverged before (recorded in {output_dir / 'finished.yaml'}; delete that "
            f"file to train it again): {finished.get('error', '')}"
        )
    metrics = recorded_metrics(finished)
    metric = cfg.get("optimized_metric")
    value = f", {metric}={metrics[metric]:.4f}" if metric in metrics else ""
    log.info(
        "Skipped: this job finished before (epoch %s, step %s%s); returning its recorded metrics "
        "(auto_resume=false trains it again)",
        finished.get("epoch"), finished.get("global_step"), value,
    )
    return metrics


def stopped(stop: Interrupted, output_dir: Path) -> None:
    """After a stop signal (``last.ckpt`` saved): say how to continue, let submitit requeue
    the job, exit with 128 + the signal number."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        how = (f"a requeued job continues by itself; else launch the sweep again with "
               f"hydra.sweep.dir={hydra_cfg.sweep.dir} and the same overrides")
    else:
        how = f"resume={output_dir}"
    if rank_zero_only.rank == 0:
        log.warning("Stopped: %s. To continue: %s", stop, how)
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None and hasattr(wandb.run, "mark_preempting"):
            wandb.run.mark_preempting()
    stop.run_chained_handler()  # submitit's: requeue this job and exit
    raise SystemExit(stop.exit_code)


def finish_wandb() -> None:
    """Close the W&B run so the next multirun job starts its own (a multirun would otherwise
    log every job into the first job's run)."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


class JobFailed(RuntimeError):
    """A multirun job that failed on its own (diverged); the other jobs go on."""


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _main(cfg: DictConfig) -> float | None:
    print_config(cfg)
    try:
        with user_errors():
            try:
                metrics = train(cfg)
            except NonFiniteError as err:
                if HydraConfig.get().mode != RunMode.MULTIRUN:
                    raise
                # In a sweep a diverged job fails alone (an Optuna trial: FAIL), the rest go on.
                log.error("error: %s", err)
                raise JobFailed(str(err)) from None
    finally:
        end_attempts()  # the attempt's end in job.yaml: returned, failed or stopped by a signal
        finish_wandb()
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


def check_cluster_plugins(argv: list[str]) -> None:
    """A launcher or search named on the command line whose Hydra plugin is not installed
    stops with the install command (Hydra's own message would be an import error)."""
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        module = CLUSTER_PLUGINS.get(f"{key}={value}") or (CLUSTER_PLUGINS.get(key) if value and value != "null" else None)
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"{arg} needs the Hydra plugins of the `cluster` extra: pip install -e \".[cluster]\" "
                "(make setup installs it)"
            )


def main() -> float | None:
    with user_errors():
        check_cluster_plugins(sys.argv[1:])
    return hydra_command(_main, "train")
