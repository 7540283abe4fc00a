"""The checkpoint format, in one place: what a checkpoint holds, how it is read, and how a
network is rebuilt from it (no Lightning: a notebook or a deployment reads checkpoints with
this module alone; :mod:`diffusion_seg.lightning.checkpoint` writes them).

A checkpoint is Lightning's (``state_dict`` with the network under ``net.``, optimizer,
schedulers, loop state) plus ``diffusion_seg_config``: the resolved run config with the
class names, written by :class:`~diffusion_seg.lightning.task.SegmentationTask`. That config
alone rebuilds the network (:func:`load_segmentor`), so ``eval``, ``predict`` and the tools
need nothing but the file. Files are read with ``torch.load(weights_only=True)``
(:func:`load_checkpoint_file`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_seg.builders import build_segmentor
from diffusion_seg.errors import CheckpointError, CheckpointNotFoundError
from diffusion_seg.models.segmentor import Segmentor

CONFIG_KEY = "diffusion_seg_config"
# What diffusion-seg stores in a checkpoint, versioned so a reader knows what to upgrade:
# 1 = diffusion-seg 0.1.0 (written without this key; nested dataset.dataset, root-level
# loss / inference: :func:`upgrade_config`), 2 = today's run config. Written by
# :class:`diffusion_seg.lightning.checkpoint.AtomicCheckpointIO`, which every command's Trainer uses.
FORMAT_KEY = "diffusion_seg_format_version"
FORMAT_VERSION = 2
NETWORK_PREFIX = "net."


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
        raise CheckpointError(
            f"{path} is not a plain weights checkpoint (weights_only load failed: {err}). "
            "Only load checkpoints you trust; re-save it with diffusion-seg."
        ) from err
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt): {err}"
        ) from None


def run_config(checkpoint: dict[str, Any], path: str | Path) -> DictConfig:
    """The run config stored in a checkpoint (with ``class_names``), in today's layout."""
    if not checkpoint.get(CONFIG_KEY):
        raise CheckpointError(
            f"{path} holds no diffusion-seg config; was it written by diffusion_seg.train?"
        )
    version = checkpoint.get(FORMAT_KEY, 1)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this diffusion-seg reads "
            f"({FORMAT_VERSION}); install the diffusion-seg version that wrote it or a newer one"
        )
    config = dict(checkpoint[CONFIG_KEY])
    return OmegaConf.create(upgrade_config(config) if version < FORMAT_VERSION else config)


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run config of checkpoint format 1 (diffusion-seg 0.1.0: nested ``dataset.dataset``,
    root-level ``loss`` / ``inference`` / ``new_lr_mult``) in today's layout, so its
    checkpoints still evaluate. Format-1 files also include those written after the layout
    changed but before :data:`FORMAT_KEY` existed: a config already in today's layout is
    returned as it is."""
    dataset = config.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("dataset"), dict):
        inner = {k: v for k, v in dataset.pop("dataset").items() if k != "_partial_"}
        dataset["dataset_class"] = inner.pop("_target_")
        if "seed" in inner and dataset["dataset_class"].endswith("SyntheticContextDataset"):
            inner["sample_seed"] = inner.pop("seed")
        dataset.update(inner)
        dataset["_target_"] = "diffusion_seg.lightning.datamodule.SegmentationDataModule"
        dataset["dataset_class"] = dataset["dataset_class"].replace(
            "diffusion_seg.data.datasets.", _MOVED_DATASETS.get(dataset["dataset_class"], "")
        )
    if "task" not in config and "loss" in config:
        config["task"] = {
            "_target_": "diffusion_seg.lightning.task.SegmentationTask",
            "_convert_": "all",
            "new_lr_mult": config.pop("new_lr_mult", 10.0),
            "scheduler": config.pop("scheduler", None),
            "aux_weight": config["loss"]["aux_weight"],
            "ignore_index": config.pop("loss")["ignore_index"],
            "inference": config.pop("inference"),
            "channels_last": config.pop("channels_last", False),
        }
    return config


# 0.1.0's diffusion_seg.data.datasets.<Class> → the module each dataset lives in now.
_MOVED_DATASETS = {
    f"diffusion_seg.data.datasets.{cls}": f"diffusion_seg.data.{module}."
    for cls, module in (("ADE20K", "ade20k"), ("VOCAug", "voc"), ("PascalContext", "pascal_context"),
                        ("PersonPart", "person_part"), ("FolderDataset", "folder"))
}


def network_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights: the task's ``net.`` entries without the prefix."""
    return {
        k.removeprefix(NETWORK_PREFIX): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(NETWORK_PREFIX)
    }


def load_segmentor(ckpt_path: str | Path) -> tuple[Segmentor, DictConfig]:
    """Rebuild the trained network from a checkpoint (config stored inside it), in eval mode.

    The backbone is built without pretrained weights (the checkpoint carries them).
    """
    checkpoint = load_checkpoint_file(ckpt_path)
    cfg = run_config(checkpoint, ckpt_path)
    net = build_segmentor(cfg, num_classes=len(cfg.class_names), pretrained=False)
    net.load_state_dict(network_state(checkpoint))
    return net.eval(), cfg


def checkpoint_progress(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """``(epoch, step)`` of a checkpoint's weights
    (:meth:`~diffusion_seg.lightning.task.SegmentationTask.progress`).

    Lightning's own ``epoch`` field is its epoch counter at saving time, which differs for the
    same weights: 0 when saved at the first validation, 1 when saved as the run ends after
    that epoch. The fit loop's count of epochs processed to their end is 1 in both."""
    loops = checkpoint.get("loops") or {}
    epochs = loops.get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    return int(checkpoint.get("epoch", 0) if epochs is None else epochs), int(checkpoint.get("global_step", 0))


def read_checkpoint_progress(path: str | Path) -> tuple[int, int]:
    """:func:`checkpoint_progress` of a checkpoint file; memory-mapped, so its tensors are
    not read."""
    return checkpoint_progress(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
