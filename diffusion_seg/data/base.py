"""The file-backed dataset every on-disk dataset builds on, with strict input checks.

A concrete dataset (ADE20K, VOC aug, ...) only lists its ``(image, mask)`` file pairs and
states its classes, palette and raw-label mapping; reading, validation and augmentation are
here, once. Nothing is silently wrong: an unreadable file, an image/mask size mismatch or a
label value outside ``[0, K) ∪ {255}`` after the dataset's mapping raises
:class:`BadSampleError` naming the file and the values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from diffusion_seg.data.transforms import IGNORE_INDEX

Transform = Callable[..., dict[str, Any]]


class BadSampleError(ValueError):
    """A sample that cannot be used as it is; the message names the file and the problem."""


def read_image(path: Path) -> np.ndarray:
    """RGB ``H×W×3`` uint8; raises :class:`BadSampleError` naming the file if unreadable."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        raise BadSampleError(f"cannot read image {path}: {err}. Re-extract or delete the file.")


def read_mask(path: Path) -> np.ndarray:
    """Label map ``H×W`` as stored (palette PNGs give indices, not colours: read with PIL,
    never as OpenCV grayscale)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise BadSampleError(
                    f"mask {path} has PIL mode {img.mode!r}; expected a single-channel "
                    "label PNG (mode L or P) holding class indices"
                )
            return np.asarray(img)
    except BadSampleError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise BadSampleError(f"cannot read mask {path}: {err}. Re-extract or delete the file.")


def identity_label_map() -> np.ndarray:
    """Raw value v → v (the dataset already stores train ids 0..K-1 and 255)."""
    return np.arange(256, dtype=np.int64)


class SegmentationDataset(Dataset):
    """``(image, mask)`` file pairs → ``{"image": 3×H×W float, "mask": H×W long, "name": str}``.

    Args:
        samples: ``(image_path, mask_path)`` pairs.
        class_names: the K class names (index = train id).
        palette: ``K×3`` uint8 colours for visualisation.
        label_map: length-256 lookup from the stored value to the train id (255 = ignore).
        transform: an albumentations ``Compose`` (called with ``image=``, ``mask=``).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        class_names: Sequence[str],
        palette: np.ndarray,
        label_map: np.ndarray | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.samples = [(Path(i), Path(m)) for i, m in samples]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.label_map = identity_label_map() if label_map is None else label_map
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read, map and validate one pair (no augmentation)."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        raw = read_mask(mask_path)
        if raw.shape != image.shape[:2]:
            raise BadSampleError(
                f"size mismatch: image {image_path} is {image.shape[1]}×{image.shape[0]} but "
                f"mask {mask_path} is {raw.shape[1]}×{raw.shape[0]} (W×H)"
            )
        if raw.max(initial=0) > 255 or raw.min(initial=0) < 0:
            raise BadSampleError(f"mask {mask_path} holds values outside 0..255")
        mask = self.label_map[raw.astype(np.int64)]
        bad = np.unique(mask[(mask >= self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            raw_bad = np.unique(raw[np.isin(mask, bad)])
            raise BadSampleError(
                f"mask {mask_path} has label values {raw_bad.tolist()} outside the "
                f"{self.num_classes} classes (allowed after mapping: 0..{self.num_classes - 1}"
                f" and {IGNORE_INDEX} = ignore). Check the dataset choice and conversion."
            )
        return image, mask.astype(np.uint8)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load(index)
        return apply_transform(self.transform, image, mask, self.samples[index][0].stem)


def apply_transform(
    transform: Transform | None, image: np.ndarray, mask: np.ndarray, name: str
) -> dict[str, Any]:
    """Run the albumentations pipeline (if any) and return tensors."""
    if transform is not None:
        out = transform(image=image, mask=mask)
        image_t, mask_t = out["image"], out["mask"]
    else:
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        mask_t = torch.from_numpy(np.ascontiguousarray(mask))
    return {"image": image_t, "mask": torch.as_tensor(mask_t).long(), "name": name}
