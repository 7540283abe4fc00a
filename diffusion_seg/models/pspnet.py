"""PSPNet head (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017), laid out as
mmsegmentation's ``PSPHead`` + ``FCNHead`` auxiliary head (its PSPNet R-50/R-101-D8 configs).

Decode head on the deepest feature x (C channels, ResNet layer4):

* pyramid pooling: for each scale s in ``pool_scales`` (1, 2, 3, 6; paper Sec. 3.2), adaptive
  average pooling to s×s → 1×1 conv-BN-ReLU to ``channels`` → bilinear upsampling to x's size
  (the paper reduces each level to C/4; mmseg uses ``channels`` = 512, the same for C = 2048);
* bottleneck: concat [x, 4 levels] → 3×3 conv-BN-ReLU to ``channels``;
* dropout(0.1) → 1×1 classifier (with bias).

Auxiliary head on layer3 (``features[-2]``; the paper's deep supervision after res4b22, Sec. 4):
3×3 conv-BN-ReLU to 256 → dropout(0.1) → 1×1 classifier, returned as aux ``"fcn_layer3"``. Its
loss weight is 0.4 in the paper (α, Sec. 5) and in mmseg; here every aux loss uses the run's global
``task.aux_weight``, so a PSPNet experiment sets it to 0.4.

Convs followed by BN have no bias (mmseg's ``ConvModule``), are Kaiming-normal (fan-out, ReLU)
initialised like mmseg's; the classifiers are N(0, 0.01²) with zero bias (mmseg's ``conv_seg``).
The classifier and the auxiliary head come from :class:`~diffusion_seg.models.heads.DecodeHead`.

Parameter count (weights + biases + BN affine; K classes, C = in channels, c = ``channels``,
S = number of pool scales, C3 = layer3 channels, a = aux channels)::

    decode = S·(C·c + 2c) + ((C + S·c)·c·9 + 2c) + (c·K + K)
    aux    = (C3·a·9 + 2a) + (a·K + K)

R-101-D8 / R-50-D8 (C = 2048, C3 = 1024), K = 150 (ADE20K), c = 512, a = 256:
decode = 4,198,400 + 18,875,392 + 76,950 = 23,150,742; aux = 2,359,808 + 38,550 = 2,398,358;
total 25,549,100 — the same modules and count as mmseg's PSPHead + FCNHead for those configs.
Training with ``pool_scales`` containing 1 needs a batch of at least 2 (BatchNorm on a 1×1
map), as in mmseg.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import DecodeHead, SegmentationOutput, check_positive_ints
from diffusion_seg.models.layers import conv_bn_relu


class PSPHead(DecodeHead):
    """PSPNet: pyramid pooling on the deepest feature, plus an FCN auxiliary head on layer3.

    Args:
        backbone: the backbone the head sits on.
        num_classes: K.
        channels: width of every pyramid level and of the bottleneck (mmseg: 512).
        pool_scales: output sizes of the pyramid's adaptive average pools (1, 2, 3, 6).
        dropout, aux, aux_channels: the decode heads' options
            (:class:`~diffusion_seg.models.heads.DecodeHead`).
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux: bool = True,
        aux_channels: int = 256,
    ) -> None:
        super().__init__(channels)
        scales = check_positive_ints("pool_scales", pool_scales)
        in_channels = backbone.channels[-1]
        self.pyramid = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv_bn_relu(in_channels, channels))
            for scale in scales
        )
        self.bottleneck = conv_bn_relu(in_channels + len(scales) * channels, channels, 3)
        self.add_classifier(channels, num_classes, dropout)
        if aux:
            self.add_aux_head(backbone, num_classes, aux_channels, dropout)

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        x = features[-1]
        levels = [x] + [
            F.interpolate(level(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
            for level in self.pyramid
        ]
        return self.decode(self.bottleneck(torch.cat(levels, 1)), features)
