"""Validation pictures in the loggers: W&B images with masks, a TensorBoard grid, PNGs for
CSV-only runs; the padding of evaluation batches is cut off where the pipeline recorded it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.data.transforms import build_eval_transform
from diffusion_seg.lightning.pictures import image_sizes

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def test_pictures_cut_the_padding_the_pipeline_recorded():
    """The evaluation pipeline says where each image's padding starts; the pictures cut it
    there and turn the network input back into the image's own pixels."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    rgb[-2:] = 0  # black rows at the bottom are image, not padding
    out = build_eval_transform(MEAN, STD, size_divisor=8)(image=rgb, mask=np.zeros((45, 61), np.uint8))
    batch = {"image": out["image"][None], "image_size": out["image_size"][None]}
    assert batch["image"].shape[-2:] == (48, 64) and image_sizes(batch) == [(45, 61)]
    assert image_sizes({"image": batch["image"]}) == [(48, 64)]  # not padded: all of it
    np.testing.assert_array_equal(Preprocessor(MEAN, STD, 8).to_rgb(batch["image"][0])[:45, :61], rgb)


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
