"""The head interface shared by every segmentation head, and the two baseline heads.

A head is built from the backbone it sits on and the number of classes::

    head = FCNHead(backbone, num_classes=21)
    out = head(backbone(image), image)      # -> SegmentationOutput

and returns the main logits at feature resolution plus optional auxiliary logits for deep
supervision (PDN's per-layer classifiers, DifNet's optional seed loss). Upsampling to the
label size and the losses live in the LightningModule, so heads stay plain ``nn.Module``\\ s
usable without Lightning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from diffusion_seg.models.backbone import TimmBackbone


@dataclass
class SegmentationOutput:
    """What every head returns.

    Attributes:
        logits: ``B×K×h×w`` main prediction at feature resolution.
        aux: named ``B×K×h'×w'`` auxiliary logits; each gets a cross-entropy loss weighted
            by ``task.aux_weight`` during training (ignored at evaluation).
        extras: named tensors for inspection only (e.g. DifNet's importance map); never in
            a loss.
    """

    logits: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


class SegmentationHead(nn.Module):
    """Base of all heads: ``forward(features, image) -> SegmentationOutput``.

    ``features`` are the backbone's stage outputs (shallow to deep), ``image`` the normalised
    input batch (DifNet's first random walk uses it). Subclasses may override
    :meth:`diagnostics` to expose scalars the LightningModule logs every epoch.
    """

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        """Scalars worth logging once per epoch (e.g. DifNet's μ_t, β_t); none by default."""
        return {}

    def pretrained_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the head that come pretrained (DifNet's second backbone): they get
        the backbone's learning rate, not the new layers' multiplier. None by default."""
        return iter(())


def init_normal(module: nn.Module, std: float = 0.01) -> None:
    """Gaussian init N(0, std²) of every conv weight, zero biases — both papers' new layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class FCNHead(SegmentationHead):
    """FCN-style head on the deepest feature: ``num_convs`` 3×3 conv-BN-ReLU then a 1×1
    classifier."""

    def __init__(
        self,
        backbone: TimmBackbone,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = backbone.channels[-1]
        for _ in range(num_convs):
            layers += [
                nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = channels
        self.convs = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        init_normal(self.classifier)

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        return SegmentationOutput(self.classifier(self.dropout(self.convs(features[-1]))))


class ASPPClassifier(nn.Module):
    """DeepLab-v2 ASPP classifier: parallel 3×3 convs with the given dilations, outputs
    summed (DeepLab-v2, PAMI 2018, Sec. 3.3; DifNet's seed classifier and the papers'
    "Sim-DeepLab" baseline). Weights N(0, 0.01), zero bias: DeepLab-v2's classifier init."""

    def __init__(
        self, in_channels: int, num_classes: int, dilations: Sequence[int] = (6, 12, 18, 24)
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d) for d in dilations
        )
        init_normal(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2Head(SegmentationHead):
    """DeepLab-v2: the ASPP classifier on the deepest (output-stride 8) feature."""

    def __init__(
        self, backbone: TimmBackbone, num_classes: int, dilations: Sequence[int] = (6, 12, 18, 24)
    ) -> None:
        super().__init__()
        self.classifier = ASPPClassifier(backbone.channels[-1], num_classes, dilations)

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        return SegmentationOutput(self.classifier(features[-1]))
