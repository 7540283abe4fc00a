"""Shared test helpers: compose Hydra configs in-process, run the CLI in a subprocess."""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from diffusion_seg import CONFIG_DIR
from diffusion_seg.builders import build_backbone, build_datamodule, build_segmentor, build_task
from diffusion_seg.config import register_resolvers
from diffusion_seg.models.segmentor import Segmentor

register_resolvers()
# Under pytest-xdist (`make test` runs two workers) each worker gets one core of two.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

# Session fixtures that train through the CLI: a test that uses one waits for a training run.
TRAINING_FIXTURES = {"trained_pdn", "trained_difnet"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow every test that starts a subprocess (a CLI run, a benchmark, DDP workers:
    seconds of imports each) or uses a trained-run fixture, so ``make test-fast`` (``-m "not
    slow"``) stays the edit-test loop without anyone remembering to mark them."""
    for item in items:
        function = getattr(item, "function", None)
        if function is None or item.get_closest_marker("slow"):
            continue
        source = inspect.getsource(function)
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())) or any(
            call in source for call in ("run_cli(", "subprocess.", "mp.spawn", "Popen(")
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Hydra's ``main()``, run in-process by some tests, configures the root logger with
    handlers on that test's captured streams; later tests would log into closed files."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

# Settings that make a CLI training run take seconds on CPU (conf/debug/smoke.yaml).
FAST_TRAIN = ["debug=smoke"]


def compose_config(overrides: list[str], config_name: str = "train", output_dir: Path | None = None) -> DictConfig:
    """Compose like the CLI does, with Hydra's runtime config set so ``${hydra:...}`` resolves."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


# A tiny synthetic run for in-process training-step tests.
TINY_SYNTHETIC = [
    "backbone=tiny",
    "dataset=synthetic",
    "dataset.length=4",
    "dataset.eval_length=2",
    "dataset.size=48",
    "dataset.crop_size=48",
    "dataset.batch_size=2",
]


def fit_one_step(overrides: list[str], tmp_path: Path) -> tuple[DictConfig, Segmentor, L.Trainer, dict]:
    """Config → builders → SegmentationTask → one optimiser step, as ``train.py`` does.

    Returns the config, the network, the trainer and the network's state before the step.
    """
    cfg = compose_config(overrides, output_dir=tmp_path)
    with open_dict(cfg):  # as the CLI sees it: Hydra's own node is not part of the run config
        del cfg["hydra"]
    backbone = build_backbone(cfg)
    datamodule = build_datamodule(cfg, backbone)
    net = build_segmentor(cfg, datamodule.num_classes, backbone=backbone)
    task = build_task(cfg, net, datamodule.class_names)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=datamodule)
    return cfg, net, trainer, before


def run_cli(module: str, *args: str, log_dir: Path, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m <module> args`` with logs under ``log_dir``, W&B offline; output captured."""
    env = {**os.environ, "WANDB_MODE": "offline", "DIFFUSION_SEG_LOGS": str(log_dir), "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=CONFIG_DIR.parent,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def run_dirs(log_dir: Path, task: str = "train") -> list[Path]:
    return sorted(p for p in (log_dir / task / "runs").iterdir() if p.is_dir())


@pytest.fixture(scope="session")
def trained_pdn(tmp_path_factory) -> tuple[Path, Path]:
    """A small PDN trained through the CLI with csv + TensorBoard + W&B offline: ``(run dir,
    last.ckpt)``. Shared by the predict, eval-output, pictures, visualize and export tests."""
    log_dir = tmp_path_factory.mktemp("pdn_logs")
    run_cli("diffusion_seg.train", *FAST_TRAIN, "model=pdn", "model.hidden=8", "model.layers=2",
            "logger=many", log_dir=log_dir)
    run_dir = run_dirs(log_dir)[0]
    return run_dir, run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def trained_difnet(tmp_path_factory) -> tuple[Path, Path]:
    """A small DifNet trained through the CLI with the CSV logger only: ``(run dir, last.ckpt)``."""
    log_dir = tmp_path_factory.mktemp("difnet_logs")
    run_cli("diffusion_seg.train", *FAST_TRAIN, "model=difnet", "model.walks=2",
            "model.psi_channels=16", log_dir=log_dir)
    run_dir = run_dirs(log_dir)[0]
    return run_dir, run_dir / "checkpoints" / "last.ckpt"
