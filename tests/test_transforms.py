"""The albumentations pipelines: label values survive augmentation, padding is ignored,
and DataLoader workers draw different augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from diffusion_seg.data.base import apply_transform
from diffusion_seg.lightning.datamodule import seed_worker
from diffusion_seg.data.transforms import build_eval_transform, build_train_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def scene(h=45, w=60, values=(0, 3, 7, 20, 255), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.asarray(values, np.uint8)[rng.integers(0, len(values), (h, w))]
    return image, mask


def test_train_pipeline_never_invents_label_values():
    """Nearest-neighbour resampling at every scale, flips, colour jitter and padding keep
    the mask within the original values (+ 255 from padding)."""
    image, mask = scene()
    original = set(np.unique(mask).tolist())
    transform = build_train_transform(64, MEAN, STD, (0.5, 2.0), hflip=True, photometric=True)
    transform.set_random_seed(0)
    padded = 0
    for _ in range(40):
        out = transform(image=image, mask=mask)
        values = set(out["mask"].unique().tolist())
        assert values <= original | {255}
        assert out["image"].shape == (3, 64, 64) and out["mask"].shape == (64, 64)
        padded += int((out["mask"] == 255).sum()) > int((mask == 255).sum())
    assert padded  # small scales did pad the 45×60 image to 64×64


def test_padding_is_ignore_never_background():
    image = np.full((20, 30, 3), 200, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    transform = build_train_transform(40, MEAN, STD, (1.0, 1.0), hflip=False)
    out = transform(image=image, mask=mask)
    label, pixels = out["mask"], out["image"]
    assert int((label == 0).sum()) == 20 * 30
    assert int((label == 255).sum()) == 40 * 40 - 20 * 30
    pad_value = (0 - torch.tensor(MEAN)) / torch.tensor(STD)  # image padded with 0
    torch.testing.assert_close(pixels[:, label == 255].mean(1), pad_value)


def test_eval_pads_bottom_right_to_the_output_stride():
    image, mask = scene(21, 30)
    out = build_eval_transform(MEAN, STD, size_divisor=8)(image=image, mask=mask)
    assert out["image"].shape == (3, 24, 32)
    np.testing.assert_array_equal(out["mask"][:21, :30].numpy(), mask)
    assert (out["mask"][21:] == 255).all() and (out["mask"][:, 30:] == 255).all()


def test_eval_resize_keeps_label_values():
    image, mask = scene(50, 100, values=(0, 5, 9))
    out = build_eval_transform(MEAN, STD, size_divisor=1, resize=64)(image=image, mask=mask)
    assert out["mask"].shape == (32, 64)
    assert set(out["mask"].unique().tolist()) <= {0, 5, 9}


def test_invalid_scale_range_names_the_key():
    with pytest.raises(ValueError, match=r"dataset\.scale_range=\[2\.0, 0\.5\]"):
        build_train_transform(32, MEAN, STD, (2.0, 0.5))


class Identical(Dataset):
    """The same image at every index: any difference comes from the augmentation."""

    def __init__(self):
        self.transform = build_train_transform(16, (0, 0, 0), (1, 1, 1), (0.5, 2.0))
        self.image, self.mask = scene(64, 64)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return apply_transform(self.transform, self.image, self.mask, str(index))


def test_workers_draw_different_augmentations():
    """albumentations keeps its generator in the Compose, so forked workers would replay
    one stream: sample 0 (worker 0) and sample 1 (worker 1) would get the same crop.
    The DataModule's loaders reseed each worker's copy with ``seed_worker``."""
    torch.manual_seed(0)
    loader = DataLoader(Identical(), batch_size=1, num_workers=2, worker_init_fn=seed_worker)
    images = [b["image"] for b in loader]
    assert not torch.equal(images[0], images[1])
    assert not torch.equal(images[2], images[3])
