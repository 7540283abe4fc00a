"""Losses (torch only)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from diffusion_seg.models.inference import resize_logits


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Pixel-wise CE over non-ignored pixels, on logits upsampled to the label size — the
    loss of both papers (PDN Sec. 4.1; DifNet Sec. 4), on every output that is supervised.

    Computed in float32 (also under bf16 autocast), averaged by the number of valid pixels,
    and 0 (not NaN) for a crop that is all padding.
    """
    logits = resize_logits(logits, target.shape[-2:])
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp_min(1)
