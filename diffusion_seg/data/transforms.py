"""albumentations pipelines shared by every dataset.

Train (both papers): random scale → pad to the crop (image 0, label 255 = ignore, never 0,
so padding is not learned as background) → random crop → horizontal flip → optional
photometric distortion → normalise. Evaluation: the whole image, optionally resized, padded
bottom-right with ignored labels to a multiple of the output stride so feature grids align.
Masks are always resampled nearest-neighbour: no label value can be invented by
interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

IGNORE_INDEX = 255


def build_train_transform(
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: bool = True,
    photometric: bool = False,
) -> A.Compose:
    """Random scale in ``scale_range`` (neither paper gives one: 0.5–2.0 is DeepLab's and
    mmsegmentation's, 0.5–1.4 the DifNet code's), pad + random crop to ``crop_size``², flip, optional colour jitter, normalise."""
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"dataset.scale_range={list(scale_range)} must satisfy 0 < low <= high")
    steps: list[A.BasicTransform] = [
        A.RandomScale(
            scale_limit=(low - 1.0, high - 1.0),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        ),
        A.PadIfNeeded(
            min_height=crop_size,
            min_width=crop_size,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(crop_size, crop_size),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if photometric:
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5))
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(steps)


def build_eval_transform(
    mean: Sequence[float],
    std: Sequence[float],
    size_divisor: int = 8,
    resize: int | None = None,
) -> A.Compose:
    """Whole image (longest side resized to ``resize`` if given), padded bottom-right to a
    multiple of ``size_divisor`` with ignored labels, normalised."""
    steps: list[A.BasicTransform] = []
    if resize is not None:
        steps.append(
            A.LongestMaxSize(
                max_size=resize,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        )
    if size_divisor > 1:
        steps.append(
            A.PadIfNeeded(
                min_height=None,
                min_width=None,
                pad_height_divisor=size_divisor,
                pad_width_divisor=size_divisor,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_INDEX,
            )
        )
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(steps)
