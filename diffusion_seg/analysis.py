"""Model analysis, torch only: what an output site of a network sees (its valid receptive
field, Luo et al. 2016), the network without PDN's diffusion modules, and where input pixels
fall on the feature grid. :mod:`diffusion_seg.figures` draws these."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from diffusion_seg.models.pdn import PDNHead
from diffusion_seg.models.segmentor import Segmentor


def grid_cells(
    pixels: Sequence[tuple[int, int]], image_size: tuple[int, int], grid_size: tuple[int, int]
) -> list[tuple[int, int]]:
    """Input-image pixels ``(y, x)`` → the grid nodes ``(gy, gx)`` that hold them."""
    (height, width), (h, w) = image_size, grid_size
    cells = []
    for y, x in pixels:
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"pixel [y, x] = [{y}, {x}] lies outside the {height}×{width} image")
        cells.append((y * h // height, x * w // width))
    return cells


def default_pixels(image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """The centre, then the centres of the four quadrants."""
    height, width = image_size
    return [(height // 2, width // 2)] + [
        (height * fy // 4, width * fx // 4) for fy in (1, 3) for fx in (1, 3)
    ]


@contextmanager
def bypass_pdn_modules(head: PDNHead) -> Iterator[None]:
    """Run the network *without* its diffusion modules: each module's output is
    ``x + W_out H``, so zeroing ``W_out`` (weight and bias, restored afterwards) passes ``x``
    through unchanged, wherever the module sits."""
    saved = [(m.proj_out.weight.detach().clone(), m.proj_out.bias.detach().clone()) for m in head.pdn]
    try:
        with torch.no_grad():
            for m in head.pdn:
                m.proj_out.weight.zero_()
                m.proj_out.bias.zero_()
        yield
    finally:
        with torch.no_grad():
            for m, (w, b) in zip(head.pdn, saved):
                m.proj_out.weight.copy_(w)
                m.proj_out.bias.copy_(b)


def receptive_field(net: Segmentor, image: Tensor, cell: tuple[int, int], class_index: int | None = None) -> tuple[np.ndarray, int]:
    """The valid receptive field of one output site: ``|∂ logit / ∂ image|`` summed over the
    colour channels (``H×W``), for the logit of ``class_index`` (default: the site's predicted
    class) at grid cell ``cell`` of the network's output. Returns the map and the class."""
    net.eval()
    param = next(net.parameters())
    x = (image if image.dim() == 4 else image[None]).to(param.device, param.dtype).clone().requires_grad_(True)
    with torch.enable_grad():
        logits = net(x).logits
        gy, gx = cell
        k = int(logits[0, :, gy, gx].argmax()) if class_index is None else class_index
        (grad,) = torch.autograd.grad(logits[0, k, gy, gx], x)
    return grad[0].abs().sum(0).float().cpu().numpy(), k


def mass_area(values: np.ndarray, mass: float = 0.9) -> float:
    """Share of the pixels that hold ``mass`` of the total (the smallest such set)."""
    flat = np.sort(values.ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return 0.0
    return float((np.searchsorted(np.cumsum(flat), mass * total) + 1) / flat.size)
