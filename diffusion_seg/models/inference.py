"""Test-time inference: whole image or sliding window, optional multi-scale + flip.

Conventions of mmsegmentation (the field's common ground): sliding window sums the logits of overlapping
crops and divides by the count; multi-scale/flip averages the softmax over all passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from diffusion_seg.models.crf import Progress, dense_crf

LogitsFn = Callable[[Tensor], Tensor]

VALID_MODES = ("whole", "slide")


def scores_are_logits(scales: Sequence[float] = (1.0,), flip: bool = False, crf: bool = False,
                      **options: Any) -> bool:
    """Whether :func:`predict` with these options returns logits (one pass: whole image or
    sliding window, no CRF) rather than probabilities (the mean softmax of several passes,
    or the dense CRF's marginals). Takes a ``task.inference`` mapping as keywords."""
    return tuple(scales) == (1.0,) and not flip and not crf


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear upsampling of feature-resolution logits to ``size`` (H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def slide_logits(logits_fn: LogitsFn, image: Tensor, crop: int, stride: int) -> Tensor:
    """Logits of overlapping ``crop``² windows at ``stride``, summed and divided by the count."""
    _, _, h, w = image.shape
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    total: Tensor | None = None
    count = image.new_zeros(1, 1, h, w)
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * stride, max(h - crop, 0))
            x0 = min(c * stride, max(w - crop, 0))
            y1, x1 = min(y0 + crop, h), min(x0 + crop, w)
            window = logits_fn(image[:, :, y0:y1, x0:x1])
            window = resize_logits(window, (y1 - y0, x1 - x0))
            if total is None:
                total = image.new_zeros(image.shape[0], window.shape[1], h, w)
            total[:, :, y0:y1, x0:x1] += window
            count[:, :, y0:y1, x0:x1] += 1
    assert total is not None
    return total / count


def predict(
    logits_fn: LogitsFn,
    image: Tensor,
    mode: str = "whole",
    crop: int = 480,
    stride: int = 320,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: bool = False,
    crf_params: Mapping[str, Any] | None = None,
    rgb: Tensor | None = None,
    crf_progress: Progress | None = None,
) -> Tensor:
    """Scores ``B×K×H×W`` at the image size: logits for a single pass, else the mean softmax;
    with ``crf`` the marginals of DeepLab-v2's dense CRF on that softmax and the ``rgb``
    image (``B×3×H×W``, 0..255), :func:`diffusion_seg.models.crf.dense_crf` with
    ``crf_params``, which calls ``crf_progress`` with the fraction of its work done."""
    if mode not in VALID_MODES:
        raise ValueError(f"inference.mode={mode!r} is invalid; allowed: {list(VALID_MODES)}")
    if crf:
        if rgb is None:
            raise ValueError("inference.crf=true needs the RGB image (0..255) of the batch")
        plain = predict(logits_fn, image, mode, crop, stride, scales, flip)
        probs = plain.float().softmax(1) if scores_are_logits(scales, flip) else plain.float()
        return dense_crf(probs, rgb, **dict(crf_params or {}), progress=crf_progress)
    h, w = image.shape[-2:]

    def one_pass(x: Tensor) -> Tensor:
        if mode == "slide":
            return resize_logits(slide_logits(logits_fn, x, crop, stride), (h, w))
        return resize_logits(logits_fn(x), (h, w))

    passes = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
    if passes == [(1.0, False)]:
        return one_pass(image)
    probs: Tensor | None = None
    for scale, flipped in passes:
        x = image if scale == 1.0 else F.interpolate(
            image, scale_factor=scale, mode="bilinear", align_corners=False
        )
        x = x.flip(-1) if flipped else x
        p = one_pass(x).softmax(1)
        p = p.flip(-1) if flipped else p
        probs = p if probs is None else probs + p
    assert probs is not None
    return probs / len(passes)
