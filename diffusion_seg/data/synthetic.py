"""The built-in dataset: procedurally generated scenes whose labels need long-range context.

Each image is a ``size×size`` canvas of grey noise with 1–3 filled shapes (disks and boxes)
and a thin coloured frame around the whole image, red or blue: the *scene cue*. A shape's
class is (shape type) × (scene colour)::

    0 background   1 disk_red   2 disk_blue   3 box_red   4 box_blue

Every shape is filled with the same texture whatever its class, so a pixel's local patch
only says "inside some shape". Which shape needs object-scale context (its outline, up to
~20 px away); which scene needs image-scale context: the frame, up to ``size/2`` px away.
Red and blue specks scattered over the background make "a red pixel somewhere near me" a
useless shortcut: only the frame decides. Measured on the tiny dilated backbone (README,
"Which head on the built-in dataset"), every head learns the frame cue; DeepLab-v2's remaining
errors are disk-vs-box confusions, which PDN's diffusion cuts by a quarter.

Generation is deterministic: sample ``i`` of split ``s`` with ``sample_seed`` is always the
same image, on any machine, with any number of workers. Nothing is written to disk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from diffusion_seg.data.base import Transform, apply_transform

CLASS_NAMES = ("background", "disk_red", "disk_blue", "box_red", "box_blue")
PALETTE = np.array(
    [[0, 0, 0], [230, 60, 60], [60, 90, 230], [250, 160, 120], [120, 200, 250]], dtype=np.uint8
)
SCENE_COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200)}
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


class SyntheticContextDataset(Dataset):
    """Procedural scenes needing long-range context (see module docstring).

    Args:
        split: ``train``, ``val`` or ``test`` (disjoint random streams).
        length: number of training samples.
        eval_length: number of samples in ``val`` / ``test`` (default: ``length``).
        size: image side in pixels.
        sample_seed: base seed of the images; ``(sample_seed, split, index)`` fixes a
            sample (the run's own seed does not change the data).
        frame: width of the scene-cue frame in pixels.
        transform: albumentations pipeline.
    """

    class_names = list(CLASS_NAMES)
    num_classes = len(CLASS_NAMES)
    palette = PALETTE

    def __init__(
        self,
        split: str = "train",
        length: int = 512,
        eval_length: int | None = None,
        size: int = 96,
        sample_seed: int = 0,
        frame: int = 3,
        transform: Transform | None = None,
    ) -> None:
        if split not in SPLIT_OFFSETS:
            raise ValueError(
                f"dataset split {split!r} is not one of {sorted(SPLIT_OFFSETS)} for the "
                "synthetic dataset"
            )
        if size < 32:
            raise ValueError(f"dataset.size={size} is too small; use 32 or more pixels")
        self.split = split
        self.length = length if split == "train" or eval_length is None else eval_length
        self.size = size
        self.sample_seed = sample_seed
        self.frame = frame
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``H×W×3`` uint8 and label ``H×W`` uint8 of sample ``index``."""
        rng = np.random.default_rng([self.sample_seed, SPLIT_OFFSETS[self.split], index])
        s = self.size
        image = rng.normal(90, 20, size=(s, s, 3))
        label = np.zeros((s, s), dtype=np.uint8)
        yy, xx = np.mgrid[0:s, 0:s]
        scene = "red" if rng.random() < 0.5 else "blue"
        scene_offset = 0 if scene == "red" else 1
        margin = self.frame + 4
        for _ in range(rng.integers(1, 4)):
            radius = int(rng.integers(s // 10, s // 4))
            cy, cx = rng.integers(margin + radius, s - margin - radius, size=2)
            if rng.random() < 0.5:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
                cls = 1 + scene_offset
            else:
                inside = (abs(yy - cy) <= radius) & (abs(xx - cx) <= radius)
                cls = 3 + scene_offset
            # Same texture for every class: the class is never in the local patch.
            image[inside] = rng.normal(170, 20, size=(int(inside.sum()), 3))
            label[inside] = cls
        # Decoy specks of both colours on the background: local colour is no shortcut.
        for colour in SCENE_COLOURS.values():
            for _ in range(4):
                y, x = rng.integers(margin, s - margin - 2, size=2)
                patch = (slice(y, y + 2), slice(x, x + 2))
                keep = label[patch] == 0
                image[patch][keep] = colour
        f = self.frame
        frame = np.zeros((s, s), dtype=bool)
        frame[:f], frame[-f:], frame[:, :f], frame[:, -f:] = True, True, True, True
        image[frame] = SCENE_COLOURS[scene]
        return np.clip(image, 0, 255).astype(np.uint8), label

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        image, label = self.generate(index)
        return apply_transform(self.transform, image, label, f"{self.split}_{index:05d}")
