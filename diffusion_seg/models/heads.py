"""The head interface shared by every segmentation head, the two bases the model families
build on, and the two baseline heads.

A head is built from the backbone it sits on and the number of classes::

    head = FCNHead(backbone, num_classes=21)
    out = head(backbone(image), image)      # -> SegmentationOutput

and returns the main logits at feature resolution plus optional auxiliary logits for deep
supervision (PDN's per-layer classifiers, DifNet's optional seed loss). Upsampling to the
label size and the losses live in the LightningModule, so heads stay plain ``nn.Module``\\ s
usable without Lightning.

Bases: :class:`DecodeHead` (mmseg's ``BaseDecodeHead``: dropout and a 1×1 classifier after
the head's own layers, optionally mmseg's auxiliary FCN head; FCN, PSPNet, DeepLab-v3) and
:class:`InsertedModulesHead` (modules in the backbone stream, a classifier on its output;
PDN, LG-LSTM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from diffusion_seg.models.backbone import InsertedAfter, TimmBackbone
from diffusion_seg.models.layers import (
    ASPPClassifier,
    ResidualStack,
    check_classifier,
    classifier_1x1,
    conv_bn_relu,
    output_classifier,
)


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

    def moved_modules(self) -> dict[str, nn.Module]:
        """Modules whose weights older checkpoints hold under another name: ``{name then,
        relative to the head: the module now}``. :class:`~diffusion_seg.models.segmentor.
        Segmentor` renames such keys on load. None by default."""
        return {}


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
        self.classifier = classifier_1x1(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class DecodeHead(SegmentationHead):
    """Base of the decode heads (mmseg's ``BaseDecodeHead``).

    A subclass builds its layers from the backbone's features down to ``channels`` maps,
    then calls :meth:`add_classifier` (dropout → 1×1 classifier, mmseg's ``cls_seg``) and,
    optionally, :meth:`add_aux_head`; its forward ends with :meth:`decode`. The classifier
    comes after the subclass's layers, so the initialisation draws keep that order.

    The options the decode heads share (mmseg's names and defaults): ``dropout`` before
    both classifiers (0.1), ``aux`` to add the FCN auxiliary head on layer3 (aux logits
    ``"fcn_layer3"``) and ``aux_channels``, its width (mmseg: 256).

    Args:
        channels: width of the maps the classifier reads.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"model.channels={channels} is invalid; allowed: an integer >= 1")
        self.aux_head: FCNAuxHead | None = None

    def add_classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        """Dropout, then the 1×1 classifier (with bias, N(0, 0.01²))."""
        check_dropout(dropout)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = classifier_1x1(channels, num_classes)

    def add_aux_head(
        self, backbone: TimmBackbone, num_classes: int, channels: int, dropout: float
    ) -> None:
        """mmseg's auxiliary FCN head on the second-deepest stage (ResNet layer3; the PSPNet
        paper's deep supervision after res4b22): aux logits ``"fcn_layer3"``."""
        if len(backbone.channels) < 2:
            raise ValueError(
                f"model.aux=true is invalid for backbone {backbone.name}: it returns one stage; "
                "allowed: aux=false, or a backbone with two or more stages"
            )
        if channels < 1:
            raise ValueError(f"model.aux_channels={channels} is invalid; allowed: an integer >= 1")
        self.aux_head = FCNAuxHead(backbone.channels[-2], num_classes, channels, dropout)

    def decode(self, x: Tensor, features: list[Tensor]) -> SegmentationOutput:
        """The output: ``x`` (``channels`` maps) classified, with the auxiliary head's logits
        (after the main ones: their dropout masks are drawn in that order)."""
        logits = self.classifier(self.dropout(x))
        aux = {} if self.aux_head is None else {"fcn_layer3": self.aux_head(features[-2])}
        return SegmentationOutput(logits, aux=aux)


class FCNHead(DecodeHead):
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
        super().__init__(channels)
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
        self.add_classifier(in_channels, num_classes, dropout)

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        return self.decode(self.convs(features[-1]), features)


class DeepLabV2Head(SegmentationHead):
    """DeepLab-v2: the ASPP classifier on the deepest (output-stride 8) feature."""

    def __init__(
        self, backbone: TimmBackbone, num_classes: int, dilations: Sequence[int] = (6, 12, 18, 24)
    ) -> None:
        super().__init__()
        self.classifier = ASPPClassifier(backbone.channels[-1], num_classes, dilations)

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        return SegmentationOutput(self.classifier(features[-1]))


class InsertedModulesHead(SegmentationHead):
    """Base of the heads whose modules join the backbone stream (PDN, LG-LSTM).

    Each module (a :class:`~diffusion_seg.models.layers.ResidualStack`) sits at an
    insertion point of the backbone (:meth:`TimmBackbone.insertion_points`). Inside the
    backbone, the block there is wrapped with it (:class:`InsertedAfter`, so it shows in
    ``print(net)`` where it runs and its weights are named there); on ``"output"`` this head
    runs it on the last feature (its weights under ``on_output.<name>``). Either way its
    parameters count as new layers (10× learning rate, see the Segmentor). The classifier
    reads the network output. Aux logits ``<name>_layer<t>`` (1-based) come from every
    layer of every module, in ``names`` order.

    Args:
        backbone: the backbone the modules go into.
        num_classes: K.
        points: one insertion point per module.
        module: builds a module for the stream's channels at its point.
        names: one name per module (``pdn1``, ``lg``): aux logits and diagnostics keys.
        classifier: ``"aspp"`` (DeepLab-v2 ASPP) or ``"1x1"``.
        dilations: ASPP dilations.
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        num_classes: int,
        points: Sequence[str],
        module: Callable[[int], ResidualStack],
        names: Sequence[str],
        classifier: str = "aspp",
        dilations: Sequence[int] = (6, 12, 18, 24),
    ) -> None:
        super().__init__()
        check_classifier(classifier)
        # Every point is checked before any block is wrapped: a bad one leaves the backbone
        # as it was.
        channels = [backbone.insertion_channels(point) for point in points]
        self.insert_at = list(points)
        self.names = list(names)
        self.on_output = nn.ModuleDict()
        # Not registered here: they are the backbone's children.
        self._inserted: dict[str, InsertedAfter] = {}
        for name, point, width in zip(self.names, self.insert_at, channels):
            if point == "output":
                self.on_output[name] = module(width)
            else:
                self._inserted[name] = backbone.insert_after(point, module(width))
        self.classifier = output_classifier(
            classifier, backbone.channels[-1], num_classes, dilations
        )

    def inserted_modules(self) -> list[ResidualStack]:
        """Every module in ``names`` order, wherever it sits."""
        return [
            self.on_output[name] if name in self.on_output else self._inserted[name].module
            for name in self.names
        ]

    def diagnostics(self) -> dict[str, float]:
        """Norm of each module's output projection: how much it writes into the backbone
        stream (0 at init, so it shows whether training puts the module to use)."""
        return {
            f"{name}_out_norm": float(module.proj_out.weight.detach().norm())
            for name, module in zip(self.names, self.inserted_modules())
        }

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        x = features[-1]
        layer_logits = {name: inserted.take_aux() for name, inserted in self._inserted.items()}
        for name, module in self.on_output.items():
            x, layer_logits[name] = module(x)
        aux = {
            f"{name}_layer{t}": logits
            for name in self.names
            for t, logits in enumerate(layer_logits[name], start=1)
        }
        return SegmentationOutput(self.classifier(x), aux=aux)
