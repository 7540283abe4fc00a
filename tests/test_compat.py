"""What a user of diffusion-seg 0.1.0 keeps: its checkpoints still evaluate. Checkpoints carry a
format version, and only the configs of format 1 (0.1.0 and files written before the version
existed) go through :func:`upgrade_config`; 0.1.0's second command names are retired."""

from __future__ import annotations

import copy
import importlib.util

import pytest

from diffusion_seg.errors import CheckpointError
from diffusion_seg.checkpoints import (
    CONFIG_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    load_checkpoint_file,
    load_segmentor,
    run_config,
)
from diffusion_seg.lightning.checkpoint import AtomicCheckpointIO

# A run config as diffusion-seg 0.1.0 stored it: the dataset nested under dataset.dataset,
# the loss and inference options at the root.
OLD_CONFIG = {
    "dataset": {
        "_target_": "diffusion_seg.data.datamodule.SegmentationDataModule",
        "dataset": {"_target_": "diffusion_seg.data.datasets.VOCAug", "_partial_": True, "root": "/data/voc"},
        "crop_size": 321, "batch_size": 16,
    },
    "loss": {"aux_weight": 1.0, "ignore_index": 255},
    "inference": {"mode": "whole", "scales": [1.0], "flip": False},
    "new_lr_mult": 10.0,
}


def test_checkpoints_are_written_with_the_format_version(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, CONFIG_KEY: {"seed": 1}}, path)
    assert load_checkpoint_file(path)[FORMAT_KEY] == FORMAT_VERSION == 2


def test_only_format_1_configs_are_upgraded():
    upgraded = run_config({CONFIG_KEY: copy.deepcopy(OLD_CONFIG)}, "old.ckpt")  # no version: 0.1.0
    assert upgraded.dataset.dataset_class == "diffusion_seg.data.voc.VOCAug"
    assert upgraded.dataset.root == "/data/voc" and upgraded.task.inference.mode == "whole"
    assert "loss" not in upgraded
    # The same keys under today's version are taken as written: no guessing from the layout.
    kept = run_config({CONFIG_KEY: copy.deepcopy(OLD_CONFIG), FORMAT_KEY: FORMAT_VERSION}, "new.ckpt")
    assert kept.dataset.dataset._target_ == "diffusion_seg.data.datasets.VOCAug" and "task" not in kept


def test_a_newer_format_names_itself():
    with pytest.raises(CheckpointError, match=r"future.ckpt has checkpoint format 3, newer than .* \(2\)"):
        run_config({CONFIG_KEY: {"seed": 1}, FORMAT_KEY: 3}, "future.ckpt")


def test_retired_command_names_are_gone():
    # One way to call each command: python -m diffusion_seg.<command> (or diffusion-seg-<command>).
    for old in ("diffusion_seg.data.check", "diffusion_seg.data.prepare"):
        assert importlib.util.find_spec(old) is None, old
    for command in ("train", "eval", "predict", "export", "visualize", "check", "prepare", "report"):
        assert importlib.util.find_spec(f"diffusion_seg.{command}") is not None, command


@pytest.mark.slow
def test_a_trained_checkpoint_has_the_current_format_and_loads(trained_pdn):
    _, ckpt = trained_pdn
    assert load_checkpoint_file(ckpt)[FORMAT_KEY] == FORMAT_VERSION
    net, cfg = load_segmentor(ckpt)
    assert cfg.dataset.dataset_class.endswith("SyntheticContextDataset") and not net.training
