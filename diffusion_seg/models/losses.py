"""Losses (torch only)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from diffusion_seg.models.heads import SegmentationOutput
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


def segmentation_loss(
    out: SegmentationOutput, target: Tensor, aux_weight: float = 1.0, ignore_index: int = 255
) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss of every head: :func:`cross_entropy` of the main logits plus
    ``aux_weight`` × that of every auxiliary output (PDN's intermediate supervision, DifNet's
    seed), each on float32 logits (bf16 autocast leaves the head's output in bf16).

    Returns the total and its terms, ``loss_main`` and ``loss_aux/<name>`` (for the logs)."""
    loss_main = cross_entropy(out.logits.float(), target, ignore_index)
    loss = loss_main
    terms = {"loss_main": loss_main}
    for name, logits in out.aux.items():
        loss_aux = cross_entropy(logits.float(), target, ignore_index)
        loss = loss + aux_weight * loss_aux
        terms[f"loss_aux/{name}"] = loss_aux
    return loss, terms
