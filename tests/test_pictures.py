"""Validation pictures in the loggers: W&B images with masks, a TensorBoard grid, PNGs for
CSV-only runs; the padding of evaluation batches is cut off again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_seg.lightning.pictures import denormalise, valid_size

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def test_valid_size_finds_the_image_inside_the_padding():
    rgb = torch.rand(3, 45, 61) * 0.8 + 0.1
    image = (rgb - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    padded = torch.nn.functional.pad(image, (0, 3, 0, 3))  # pads with 0 = the normalised mean
    padded[:, 45:, :] = torch.tensor(-MEAN / STD)[:, None, None]  # what 0 pixels normalise to
    padded[:, :, 61:] = torch.tensor(-MEAN / STD)[:, None, None]
    mask = torch.full((48, 64), 255, dtype=torch.long)
    mask[:45, :61] = 1
    assert valid_size(padded, mask, MEAN, STD) == (45, 61)
    # a black image row that is labelled is not padding
    mask[45:, :61] = 0
    assert valid_size(padded, mask, MEAN, STD) == (48, 61)
    back = denormalise(image, MEAN, STD)
    assert back.shape == (45, 61, 3) and np.abs(back / 255.0 - rgb.permute(1, 2, 0).numpy()).max() < 1 / 255


@pytest.mark.slow
def test_wandb_and_tensorboard_runs_hold_the_sample_images(trained_pdn):
    run_dir, _ = trained_pdn
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    media = list((wandb_run / "files" / "media" / "images").rglob("*.png"))
    # 4 samples, each an image plus its prediction and ground-truth masks (W&B stores a file
    # once per content: identical masks share one)
    images = [p for p in media if "mask" not in p.parts]
    masks = [p for p in media if "mask" in p.parts]
    assert len(images) == 4 and 2 <= len(masks) <= 8, media
    with Image.open(images[0]) as img:
        assert img.size == (64, 64)
    records = next(wandb_run.glob("*.wandb")).read_bytes()
    assert b"val/pictures" in records and b"disk_red" in records
    assert b"ground_truth" in records and b"prediction" in records
    events = b"".join(p.read_bytes() for p in (run_dir / "tensorboard").glob("events.out.tfevents*"))
    assert b"val/pictures" in events
    assert not (run_dir / "pictures").exists()  # image loggers took them


@pytest.mark.slow
def test_csv_only_run_writes_pngs(trained_difnet):
    run_dir, _ = trained_difnet
    pngs = sorted((run_dir / "pictures" / "epoch001").glob("*.png"))  # the table's "epoch 1"
    assert [p.name for p in pngs] == [f"{i:02d}_val_{i:05d}.png" for i in range(4)]
    with Image.open(pngs[0]) as img:
        # image | ground truth | prediction | overlay, 64 px each with 2 px gaps
        assert img.size == (4 * 64 + 3 * 2, 64) and img.mode == "RGB"
