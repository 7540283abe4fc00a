"""albumentations pipelines shared by every dataset.

Train (both papers): random scale → pad to the crop (image 0, label 255 = ignore, never 0,
so padding is not learned as background) → random crop → horizontal flip → optional
photometric distortion → normalise. Evaluation: the whole image, optionally resized, padded
bottom-right with ignored labels to a multiple of the output stride so feature grids align;
each sample says the size of the image inside its padding (``image_size``). Masks are always
resampled nearest-neighbour: no label value can be invented by interpolation.

albumentations does the geometry and colour on uint8 pixels; padding to the stride and the
normalisation are :class:`~diffusion_seg.data.preprocess.Preprocessor`'s, the one
implementation every other path into the network uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from diffusion_seg.data.preprocess import IGNORE_INDEX, Preprocessor


class Pipeline:
    """albumentations ``steps`` on the uint8 pixels, then the ``preprocessor``'s
    normalisation; called like an albumentations ``Compose`` (``image=``, ``mask=``,
    ``masks=``), returns tensors. With ``pad``, image, label and masks are padded to the
    preprocessor's stride first and the sample gets ``image_size``."""

    def __init__(self, steps: A.Compose, preprocessor: Preprocessor, pad: bool = False) -> None:
        self.steps = steps
        self.preprocessor = preprocessor
        self.pad = pad

    def set_random_seed(self, seed: int) -> None:
        """Seed the augmentations (:func:`diffusion_seg.lightning.datamodule.seed_worker`)."""
        self.steps.set_random_seed(seed)

    def __call__(self, **data: Any) -> dict[str, Any]:
        image = data.get("image")
        if isinstance(image, np.ndarray) and not image.flags.writeable:
            # PIL-backed arrays are read-only and torch warns when it wraps one (ToTensorV2
            # does, when no step before it made a new array).
            data["image"] = image.copy()
        out = self.steps(**data)
        image = out["image"]
        if self.pad:
            out["image_size"] = torch.tensor(image.shape[-2:])
            image = self.preprocessor.pad(image)
            if "mask" in out:
                out["mask"] = self.preprocessor.pad(torch.as_tensor(out["mask"]), IGNORE_INDEX)
            if "masks" in out:
                out["masks"] = [self.preprocessor.pad(torch.as_tensor(m), IGNORE_INDEX) for m in out["masks"]]
        out["image"] = self.preprocessor.normalise(image)
        return out


def build_train_transform(
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: bool = True,
    photometric: bool = False,
) -> Pipeline:
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
    steps.append(ToTensorV2())
    return Pipeline(A.Compose(steps), Preprocessor(mean, std))


def build_eval_transform(
    mean: Sequence[float],
    std: Sequence[float],
    size_divisor: int = 8,
    resize: int | None = None,
) -> Pipeline:
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
    steps.append(ToTensorV2())
    return Pipeline(A.Compose(steps), Preprocessor(mean, std, size_divisor, resize), pad=True)
