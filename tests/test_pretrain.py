"""The pretext pretraining (diffusion_seg.pretrain): deterministic, loadable as
``backbone.weights=``, and the committed weights are what their recorded command writes."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from diffusion_seg.builders import build_backbone
from diffusion_seg.config import compose_config
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.pretrain import METADATA_KEY, NUM_CLASSES, main, pretext_batch, pretrain, save

WEIGHTS = Path(__file__).parent.parent / "weights" / "test_resnet_textures.safetensors"


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """The tensors and the record :func:`save` keeps in the file's metadata."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()[METADATA_KEY])


def test_pretext_mosaics_are_seeded_and_labelled_densely():
    a = pretext_batch(np.random.default_rng(3), 4, 32)
    b = pretext_batch(np.random.default_rng(3), 4, 32)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    images, labels = a
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 32, 32)
    assert 0 <= images.min() and images.max() <= 1 and labels.min() >= 0 and labels.max() < NUM_CLASSES
    assert len(np.unique(labels)) > 2  # several regions, several orientations


def test_a_short_pretraining_is_bitwise_reproducible_and_loads_as_backbone_weights(tmp_path):
    settings = {"backbone": "test_resnet", "steps": 2, "batch_size": 2, "size": 32, "lr": 0.02,
                "seed": 0}
    threads = torch.get_num_threads()
    digests = [save(tmp_path / f"{i}.safetensors", *pretrain(**settings), settings)
               for i in range(2)]
    assert digests[0] == digests[1]
    assert torch.get_num_threads() == threads  # the process's settings are given back
    state, metadata = read(tmp_path / "0.safetensors")
    assert metadata["settings"] == settings
    loaded = TimmBackbone("test_resnet", weights=str(tmp_path / "0.safetensors")).model.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_the_committed_weights_match_their_checksum_and_load():
    recorded = WEIGHTS.with_suffix(".sha256").read_text().split()[0]
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == recorded
    assert WEIGHTS.stat().st_size < 4 * 2**20
    state, metadata = read(WEIGHTS)
    assert float(metadata["pretext_accuracy"]) > 3 / NUM_CLASSES  # well above chance
    loaded = TimmBackbone("test_resnet", weights=str(WEIGHTS)).model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # backbone=tiny_textures: the same weights, as a study's pretrained start
    cfg = compose_config(["backbone=tiny_textures", f"paths.root_dir={WEIGHTS.parent.parent}"])
    from_config = build_backbone(cfg).model.state_dict()
    assert all(torch.equal(from_config[k], state[k]) for k in state)


def test_verify_reruns_the_recorded_settings_and_says_whether_the_bytes_match(tmp_path, capsys):
    """``--verify`` on a short pretraining (``make verify-weights`` runs it on the committed
    file: minutes on a CPU, so not here)."""
    out = tmp_path / "w.safetensors"
    main(["--out", str(out), "--steps", "2", "--batch-size", "2", "--size", "32"])
    with pytest.raises(SystemExit) as status:
        main(["--verify", "--out", str(out)])
    assert status.value.code == 0 and "sha256" in capsys.readouterr().out
    # a file whose bytes its settings do not write: the rerun says so
    state, metadata = read(out)
    save(out, {k: v + 1 for k, v in state.items()}, float(metadata["pretext_accuracy"]), metadata["settings"])
    with pytest.raises(SystemExit) as status:
        main(["--verify", "--out", str(out)])
    assert status.value.code == 1 and "DIFFERS" in capsys.readouterr().out
