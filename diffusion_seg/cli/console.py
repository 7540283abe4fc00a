"""Small run-time helpers: the package logger and the start-up config print."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("diffusion_seg")


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    """Print the composed config (unresolved, so paths read as written) once per run."""
    print(OmegaConf.to_yaml(cfg, resolve=False), flush=True)
