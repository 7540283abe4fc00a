"""Atomic checkpoint writes, safe loads, and rebuilding a network from a checkpoint alone."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from diffusion_seg.models.segmentor import Segmentor
from diffusion_seg.module import CONFIG_KEY


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint path that does not exist; the message says where to look."""


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: our checkpoints hold only tensors and plain
    Python containers, so a file that needs arbitrary unpickling is rejected, not executed."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            found = sorted(p.name for p in path.parent.glob("*.ckpt"))
            hint = f" Checkpoints in {path.parent}: {found or 'none'}."
        raise CheckpointNotFoundError(
            f"no checkpoint at {path}.{hint} Pass ckpt_path=<file.ckpt> or resume=<run dir>."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} is not a plain weights checkpoint (weights_only load failed: {err}). "
            "Only load checkpoints you trust; re-save it with diffusion-seg."
        ) from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt): {err}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same directory, fsyncs, then renames over the target:
    a crash mid-write leaves the previous checkpoint intact, never a truncated file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location or "cpu")


def load_segmentor(ckpt_path: str | Path) -> tuple[Segmentor, DictConfig]:
    """Rebuild the trained network from a checkpoint (config stored inside it), in eval mode.

    The backbone is built without pretrained weights (the checkpoint carries them).
    """
    from diffusion_seg.builders import build_segmentor

    checkpoint = load_checkpoint_file(ckpt_path)
    if not checkpoint.get(CONFIG_KEY):
        raise ValueError(f"{ckpt_path} holds no diffusion-seg config; was it written by train.py?")
    cfg = OmegaConf.create(checkpoint[CONFIG_KEY])
    net = build_segmentor(cfg, num_classes=len(cfg.class_names), pretrained=False)
    state = {
        k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")
    }
    net.load_state_dict(state)
    return net.eval(), cfg
