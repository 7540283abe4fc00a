"""Shared test helpers: compose Hydra configs in-process, run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from diffusion_seg import CONFIG_DIR
from diffusion_seg.config import register_resolvers

register_resolvers()
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Settings that make a CLI training run take seconds on CPU.
FAST_TRAIN = [
    "backbone=tiny",
    "dataset=synthetic",
    "dataset.dataset.length=32",
    "dataset.dataset.eval_length=16",
    "dataset.dataset.size=64",
    "dataset.crop_size=64",
    "dataset.batch_size=8",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "~callbacks.model_summary",
]


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
