"""How Lightning writes and reads checkpoint files: atomically, and with
``weights_only=True``. The format itself and rebuilding a network from a file are
:mod:`diffusion_seg.checkpoints`'s."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from diffusion_seg.checkpoints import FORMAT_KEY, FORMAT_VERSION, load_checkpoint_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same directory, fsyncs, then renames over the target:
    a crash mid-write leaves the previous checkpoint intact, never a truncated file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        checkpoint[FORMAT_KEY] = FORMAT_VERSION
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
