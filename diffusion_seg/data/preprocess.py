"""What the network expects of its input, in one place (torch only).

A network is trained on images normalised with its backbone's pretraining statistics and
evaluated on whole images padded bottom-right to a multiple of its output stride. Every
path into the network (training and evaluation batches, ``predict``, ``export``,
``visualize``, the pictures and the dense CRF's colour input) goes through one
:class:`Preprocessor`, as mmsegmentation's ``data_preprocessor`` does, so none of them can
drift from the others::

    pixels    RGB 0..255 (uint8 or float), channels at dim -3
    resize    longest side to ``resize`` (evaluation only, optional; the albumentations
              pipeline of :func:`diffusion_seg.data.transforms.build_eval_transform`)
    pad       bottom-right with 0 to a multiple of ``size_divisor`` (the label with 255)
    normalise (x − 255·mean) · 1 / (255·std), float32

An evaluation sample carries ``image_size``: the ``(h, w)`` of the image inside the padded
tensor, so pictures and prediction files cut the padding off without guessing it back.

The normalisation is written as albumentations' ``Normalize`` computes it for uint8 images
(float32 ``255·mean`` and float32 reciprocal of ``255·std``), so batches are bit for bit what
they were when that step normalised them: old checkpoints evaluate to their numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The label of padded pixels: left out of loss and metrics.
IGNORE_INDEX = 255
# ImageNet statistics (0..1 scale): timm's default, the datasets' default.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessor(nn.Module):
    """Normalise / denormalise, pad / un-pad for one network (module docstring).

    An ``nn.Module`` so its statistics are buffers: they follow the network to its device and
    into exported programs (:class:`diffusion_seg.deploy.DeployableSegmentor`).

    Args:
        mean: per-channel mean on the 0..1 scale.
        std: per-channel standard deviation on the 0..1 scale.
        size_divisor: evaluation padding multiple (the backbone's output stride).
        resize: evaluation resizes the longest side to this first (``dataset.eval_resize``).
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        size_divisor: int = 1,
        resize: int | None = None,
    ) -> None:
        super().__init__()
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.size_divisor = max(int(size_divisor), 1)
        self.resize = int(resize) if resize else None
        # float32 arithmetic as albumentations' Normalize does it (module docstring).
        scaled_mean = np.asarray(self.mean, dtype=np.float32) * 255.0
        reciprocal = np.reciprocal(np.asarray(self.std, dtype=np.float32) * 255.0)
        self.register_buffer("pixel_mean", torch.from_numpy(scaled_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_scale", torch.from_numpy(reciprocal).view(3, 1, 1), persistent=False)

    @classmethod
    def for_backbone(cls, backbone: Any, resize: int | None = None) -> Preprocessor:
        """The pipeline a network on ``backbone`` is trained with unless its dataset config
        says otherwise: the backbone's pretraining statistics, padded to its output stride."""
        return cls(backbone.mean, backbone.std, max(backbone.reductions), resize)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}, size_divisor={self.size_divisor}, resize={self.resize}"

    def forward(self, pixels: Tensor) -> Tensor:
        """:meth:`pad` then :meth:`normalise`: raw pixels of any size → network input."""
        return self.normalise(self.pad(pixels))

    # ------------------------------------------------------------------ values

    def normalise(self, pixels: Tensor) -> Tensor:
        """RGB 0..255 (``…×3×H×W``, any dtype) → the network's float32 input."""
        mean = self.pixel_mean.to(pixels.device)
        scale = self.pixel_scale.to(pixels.device)
        return (pixels.float() - mean) * scale

    def normalise_rgb(self, rgb: np.ndarray) -> Tensor:
        """An ``H×W×3`` RGB array → the normalised ``3×H×W`` input, not padded (the figures
        draw the image as it is)."""
        return self.normalise(torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1))

    def denormalise(self, image: Tensor) -> Tensor:
        """A network input back to float RGB 0..255 (the dense CRF's colour kernel)."""
        mean = torch.tensor(self.mean, device=image.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=image.device).view(3, 1, 1)
        return (image.float() * std + mean).mul(255).clamp(0, 255)

    def to_rgb(self, image: Tensor) -> np.ndarray:
        """A ``3×H×W`` network input → ``H×W×3`` uint8 RGB (pictures, overlays)."""
        return self.denormalise(image.detach()).round().byte().permute(1, 2, 0).cpu().numpy()

    # ------------------------------------------------------------------ sizes

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The size of an ``height × width`` image after the evaluation resize."""
        if not self.resize:
            return height, width
        scale = self.resize / max(height, width)
        return round(height * scale), round(width * scale)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input's size for an ``height × width`` image (resized, then padded)."""
        height, width = self.resized_size(height, width)
        d = self.size_divisor
        return -(-height // d) * d, -(-width // d) * d

    def pad(self, x: Tensor, value: float = 0) -> Tensor:
        """Pad the last two dims bottom-right to a multiple of ``size_divisor`` (images with 0,
        before normalisation; labels with :data:`IGNORE_INDEX`)."""
        # Written on the tensor's own size, so a traced or exported module records the
        # arithmetic and takes any size.
        height, width = x.shape[-2], x.shape[-1]
        d = self.size_divisor
        pad_h = (d - height % d) % d
        pad_w = (d - width % d) % d
        return F.pad(x, (0, pad_w, 0, pad_h), value=value)

    @staticmethod
    def unpad(x: Tensor, size: Sequence[int]) -> Tensor:
        """The top-left ``size`` (h, w) of the last two dims: the image inside its padding."""
        # No int(): a traced module keeps the sizes symbolic.
        return x[..., : size[0], : size[1]]

    # ------------------------------------------------------------------ one image

    def eval_transform(self) -> Any:
        """The evaluation pipeline (:func:`diffusion_seg.data.transforms.build_eval_transform`)
        of these statistics and sizes: what a DataModule's validation set applies."""
        from diffusion_seg.data.transforms import build_eval_transform

        return build_eval_transform(self.mean, self.std, self.size_divisor, self.resize)

    @functools.cached_property
    def _prepare_transform(self) -> Any:
        # built once per preprocessor: albumentations pipelines are not free to create
        return self.eval_transform()

    def prepare(self, rgb: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
        """``H×W×3`` uint8 RGB → the normalised padded ``3×H'×W'`` input evaluation gives the
        network, and the size of the image inside it."""
        out = self._prepare_transform(image=rgb)
        return out["image"], tuple(int(v) for v in out["image_size"])
