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

    Parameters split into two learning-rate groups (both papers: new layers at 10× the
    pretrained ones' lr). The split is recorded by parameter *name* (``backbone.model.conv1
    .weight``), not by object identity, so it survives pickling (``ddp_spawn``), ``deepcopy``
    (EMA/SWA copies) and ``torch.compile`` — as timm's ``group_matcher`` and torchvision's
    segmentation reference do.
    """

    def __init__(self, backbone: TimmBackbone, head: HeadFactory, num_classes: int) -> None:
        super().__init__()
        # Parameters that exist before the head is built are the (possibly pretrained)
        # backbone's; everything the head adds, even inside the backbone, counts as new,
        # unless the head declares it pretrained.
        backbone_ids = {id(p) for p in backbone.parameters()}
        self.backbone = backbone
        self.head = head(backbone=backbone, num_classes=num_classes)
        pretrained_ids = backbone_ids | {id(p) for p in self.head.pretrained_parameters()}
        self.pretrained_names = frozenset(
            name for name, p in self.named_parameters() if id(p) in pretrained_ids
        )
        self.num_classes = num_classes

    def forward(self, image: Tensor) -> SegmentationOutput:
        return self.head(self.backbone(image), image)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Pretrained parameters: the backbone's and those the head declares (base lr)."""
        return (p for n, p in self.named_parameters() if n in self.pretrained_names)

    def new_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the head added (the papers' "newly added layers", 10× learning rate)."""
        return (p for n, p in self.named_parameters() if n not in self.pretrained_names)
