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
from diffusion_seg.models.heads import SegmentationHead, SegmentationOutput, init_normal


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1
) -> nn.Sequential:
    """mmseg's ``ConvModule``: conv (no bias, Kaiming fan-out) → BatchNorm → ReLU."""
    padding = 0 if kernel == 1 else dilation * (kernel // 2)
    conv = nn.Conv2d(
        in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout={dropout} is invalid; allowed: a float in [0, 1)")


def check_positive_ints(key: str, values: Sequence[int]) -> list[int]:
    """``values`` as a non-empty list of integers >= 1, else the ``model.<key>`` error."""
    items = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else []
    if not items or not all(isinstance(v, int) and v >= 1 for v in items):
        raise ValueError(
            f"model.{key}={values} is invalid; allowed: a non-empty list of integers >= 1"
        )
    return items


class FCNAuxHead(nn.Module):
    """mmseg's auxiliary ``FCNHead`` (num_convs=1, concat_input=False): 3×3 conv-BN-ReLU →
    dropout → 1×1 classifier."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_normal(self.classifier)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))


def build_aux_head(
    backbone: TimmBackbone, num_classes: int, channels: int, dropout: float
) -> FCNAuxHead:
    """The FCN auxiliary head on the second-deepest stage (ResNet layer3)."""
    if len(backbone.channels) < 2:
        raise ValueError(
            f"model.aux=true is invalid for backbone {backbone.name}: it returns one stage; "
            "allowed: aux=false, or a backbone with two or more stages"
        )
    if channels < 1:
        raise ValueError(f"model.aux_channels={channels} is invalid; allowed: an integer >= 1")
    return FCNAuxHead(backbone.channels[-2], num_classes, channels, dropout)


class PSPHead(SegmentationHead):
    """PSPNet: pyramid pooling on the deepest feature, plus an FCN auxiliary head on layer3.

    Args:
        backbone: the backbone the head sits on.
        num_classes: K.
        channels: width of every pyramid level and of the bottleneck (mmseg: 512).
        pool_scales: output sizes of the pyramid's adaptive average pools (1, 2, 3, 6).
        dropout: dropout before both classifiers (0.1).
        aux: add the FCN auxiliary head on layer3 (aux logits ``"fcn_layer3"``).
        aux_channels: width of the auxiliary head (mmseg: 256).
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
        super().__init__()
        if channels < 1:
            raise ValueError(f"model.channels={channels} is invalid; allowed: an integer >= 1")
        scales = check_positive_ints("pool_scales", pool_scales)
        check_dropout(dropout)
        in_channels = backbone.channels[-1]
        self.pyramid = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv_bn_relu(in_channels, channels))
            for scale in scales
        )
        self.bottleneck = conv_bn_relu(in_channels + len(scales) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_normal(self.classifier)
        self.aux_head = (
            build_aux_head(backbone, num_classes, aux_channels, dropout) if aux else None
        )

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        x = features[-1]
        levels = [x] + [
            F.interpolate(level(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
            for level in self.pyramid
        ]
        logits = self.classifier(self.dropout(self.bottleneck(torch.cat(levels, 1))))
        aux = {} if self.aux_head is None else {"fcn_layer3": self.aux_head(features[-2])}
        return SegmentationOutput(logits, aux=aux)
