import pytest
import torch

from diffusion_seg.checkpoints import load_checkpoint_file
from diffusion_seg.errors import CheckpointNotFoundError
from diffusion_seg.lightning.checkpoint import AtomicCheckpointIO


class NotWeights:
    """An arbitrary object: loading it would need full unpickling."""


def test_atomic_save_replaces_file_and_leaves_no_temporary(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, path)
    io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "global_step": 4}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    assert io.load_checkpoint(path)["global_step"] == 4


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint_file(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_missing_checkpoint_names_path_and_lists_neighbours(tmp_path):
    (tmp_path / "epoch001.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint at .*last.ckpt.*epoch001.ckpt"):
        load_checkpoint_file(tmp_path / "last.ckpt")


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"obj": NotWeights()}, path)
    with pytest.raises(ValueError, match="weights_only load failed"):
        load_checkpoint_file(path)


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="cut.ckpt"):
        load_checkpoint_file(path)


def test_resume_dir_without_last_checkpoint_fails_with_the_path(tmp_path):
    from diffusion_seg.jobs import resolve_checkpoint_path

    run = str(tmp_path / "run")
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint at .*run/checkpoints/last.ckpt"):
        resolve_checkpoint_path(run, None, tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_checkpoint_path(run, None, tmp_path) == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointNotFoundError, match="last.ckpt"):
        resolve_checkpoint_path(None, "last", tmp_path / "elsewhere")
