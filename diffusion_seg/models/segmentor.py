"""Backbone + head = a segmentation network."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import SegmentationHead, SegmentationOutput

HeadFactory = Callable[..., SegmentationHead]


class Segmentor(nn.Module):
    """A timm backbone and a head built on it.

    Args:
        backbone: the feature extractor.
        head: a callable ``head(backbone=..., num_classes=...)`` returning the head, e.g.
            ``functools.partial(FCNHead, channels=512)`` or a Hydra ``_partial_`` config.
            Heads get the backbone itself so they can read its channels, hook into a stage
            (PDN) or clone it (DifNet's similarity branch).
        num_classes: number of classes K.
    """

    def __init__(self, backbone: TimmBackbone, head: HeadFactory, num_classes: int) -> None:
        super().__init__()
        # Parameters that exist before the head is built are the (possibly pretrained)
        # backbone's; everything the head adds, even inside the backbone, counts as new,
        # unless the head declares it pretrained.
        pretrained_ids = {id(p) for p in backbone.parameters()}
        self.backbone = backbone
        self.head = head(backbone=backbone, num_classes=num_classes)
        pretrained_ids |= {id(p) for p in self.head.pretrained_parameters()}
        self._backbone_param_ids = pretrained_ids
        self.num_classes = num_classes

    def forward(self, image: Tensor) -> SegmentationOutput:
        return self.head(self.backbone(image), image)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Pretrained parameters: the backbone's and those the head declares (base lr)."""
        return (p for p in self.parameters() if id(p) in self._backbone_param_ids)

    def new_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the head added (the papers' "newly added layers", 10× learning rate)."""
        return (p for p in self.parameters() if id(p) not in self._backbone_param_ids)
