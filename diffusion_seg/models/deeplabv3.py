"""DeepLabv3 head (Chen et al., "Rethinking Atrous Convolution for Semantic Image
Segmentation", 2017), laid out as mmsegmentation's ``ASPPHead`` + ``FCNHead`` auxiliary head
(its DeepLabV3 R-50/R-101-D8 configs).

Decode head on the deepest feature x (C channels, ResNet layer4):

* image pooling: global average pool → 1×1 conv-BN-ReLU to ``channels`` → upsampled to x's
  size (paper Sec. 3.3, image-level features);
* ASPP: one conv-BN-ReLU branch per dilation, 1×1 for dilation 1 and 3×3 otherwise. The paper
  uses rates 6/12/18 at output stride 16 and doubles them at output stride 8 (Sec. 3.3);
  mmseg's D8 configs use (1, 12, 24, 36), our default (the backbone runs at output stride 8);
* bottleneck: concat [pool, branches] → 3×3 conv-BN-ReLU to ``channels``;
* dropout(0.1) → 1×1 classifier (with bias).

Plus the FCN auxiliary head on layer3 (:class:`~diffusion_seg.models.heads.DecodeHead`), aux
``"fcn_layer3"``, weight 0.4 in mmseg: set the run's global ``task.aux_weight`` to 0.4 (see
:mod:`diffusion_seg.models.pspnet`). The paper's own DeepLabv3 has no auxiliary head and fuses
the concat with a 1×1 conv; the 3×3 bottleneck and the aux head are mmseg's.

Parameter count (K classes, C = in channels, c = ``channels``, R = number of dilations, R1 =
how many of them are 1, C3 = layer3 channels, a = aux channels)::

    decode = (C·c + 2c) + R1·(C·c + 2c) + (R − R1)·(C·c·9 + 2c)
             + ((R + 1)·c·c·9 + 2c) + (c·K + K)
    aux    = (C3·a·9 + 2a) + (a·K + K)

R-101-D8 / R-50-D8 (C = 2048, C3 = 1024), K = 150, c = 512, dilations (1, 12, 24, 36), a = 256:
decode = 1,049,600 + 1,049,600 + 28,314,624 + 11,797,504 + 76,950 = 42,288,278;
aux = 2,398,358; total 44,686,636 — the same modules and count as mmseg's ASPPHead + FCNHead.
Training needs a batch of at least 2 (BatchNorm on the pooled 1×1 map), as in mmseg.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import DecodeHead, SegmentationOutput, check_positive_ints
from diffusion_seg.models.layers import conv_bn_relu


class DeepLabV3Head(DecodeHead):
    """DeepLabv3: ASPP with image pooling on the deepest feature, plus an FCN auxiliary head.

    Args:
        backbone: the backbone the head sits on.
        num_classes: K.
        channels: width of every ASPP branch and of the bottleneck (mmseg: 512).
        dilations: one branch per dilation; 1 gives a 1×1 conv (mmseg D8: 1, 12, 24, 36).
        dropout, aux, aux_channels: the decode heads' options
            (:class:`~diffusion_seg.models.heads.DecodeHead`).
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        num_classes: int,
        channels: int = 512,
        dilations: Sequence[int] = (1, 12, 24, 36),
        dropout: float = 0.1,
        aux: bool = True,
        aux_channels: int = 256,
    ) -> None:
        super().__init__(channels)
        rates = check_positive_ints("dilations", dilations)
        in_channels = backbone.channels[-1]
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels)
        )
        self.branches = nn.ModuleList(
            conv_bn_relu(in_channels, channels, 1 if rate == 1 else 3, dilation=rate)
            for rate in rates
        )
        self.bottleneck = conv_bn_relu((len(rates) + 1) * channels, channels, 3)
        self.add_classifier(channels, num_classes, dropout)
        if aux:
            self.add_aux_head(backbone, num_classes, aux_channels, dropout)

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        x = features[-1]
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])
        outs = [pooled] + [branch(x) for branch in self.branches]
        return self.decode(self.bottleneck(torch.cat(outs, 1)), features)
