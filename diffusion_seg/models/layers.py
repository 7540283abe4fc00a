"""Building blocks that more than one model family uses (timm's ``layers``, in small).

The new layers' initialisation, mmseg's conv-BN-ReLU, the classifiers on a feature map
(1×1 and DeepLab-v2's ASPP) and :class:`ResidualStack`, the frame PDN's diffusion module and
LG-LSTM's module share: a stack of recurrent layers joined to the backbone stream by a
zero-initialised residual, with an auxiliary classifier per layer. Nothing here knows a
backbone or a head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

# The classifiers PDN and LG-LSTM can put on the network output (:func:`output_classifier`).
CLASSIFIERS = ("aspp", "1x1")


def init_normal(module: nn.Module, std: float = 0.01) -> None:
    """Gaussian init N(0, std²) of every conv weight, zero biases — both papers' new layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def classifier_1x1(in_channels: int, num_classes: int) -> nn.Conv2d:
    """A 1×1 classifier with bias, N(0, 0.01²) weights and zero bias (DeepLab's classifier
    init; mmseg's ``conv_seg``)."""
    conv = nn.Conv2d(in_channels, num_classes, 1)
    init_normal(conv)
    return conv


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


def check_classifier(kind: str) -> None:
    """``ValueError`` naming ``model.classifier`` unless ``kind`` is one of :data:`CLASSIFIERS`."""
    if kind not in CLASSIFIERS:
        raise ValueError(
            f"model.classifier={kind!r} is invalid; allowed: {', '.join(CLASSIFIERS)}"
        )


def output_classifier(
    kind: str, in_channels: int, num_classes: int, dilations: Sequence[int]
) -> nn.Module:
    """``"aspp"``: DeepLab-v2's ASPP (the base network of PDN and of its comparisons);
    ``"1x1"``: one 1×1 conv."""
    check_classifier(kind)
    if kind == "aspp":
        return ASPPClassifier(in_channels, num_classes, dilations)
    return classifier_1x1(in_channels, num_classes)


class ResidualStack(nn.Module):
    """Recurrent layers on a feature map, joined to the stream it reads by a residual.

    ``x`` (C channels) → 1×1 projection to ``hidden`` (d) → the layers' initial state
    (:meth:`initial_state`) → one layer after the other → ``x + W_out·h`` with ``h`` the
    last layer's depth hidden map (:meth:`depth`) and ``W_out`` a 1×1 projection back to C.
    Each layer's depth hidden map also goes through its own 1×1 classifier: the intermediate
    supervision of PDN (Sec. 3) and LG-LSTM.

    A subclass gives the layers (``layer()`` builds one; each maps the state tuple to the
    next one) and defines :meth:`initial_state` and :meth:`depth`.

    ``forward(x) -> (x + W_out·h, [aux logits of layer 1..L])``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int,
        layers: int,
        layer: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        for key, value in (("layers", layers), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{key}={value} is invalid; allowed: an integer >= 1")
        self.hidden = hidden
        self.proj_in = nn.Conv2d(in_channels, hidden, 1)
        self.layers = nn.ModuleList(layer() for _ in range(layers))
        self.classifiers = nn.ModuleList(nn.Conv2d(hidden, num_classes, 1) for _ in range(layers))
        self.proj_out = nn.Conv2d(hidden, in_channels, 1)
        # The projections and classifiers are not described by either paper: N(0, 0.01²)
        # like every other new layer of the project (DeepLab's classifier init). The residual
        # branch starts at zero so inserting the module keeps the pretrained network intact;
        # the auxiliary losses train the layers from the first step.
        init_normal(self.proj_in)
        init_normal(self.classifiers)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def initial_state(self, p: Tensor) -> tuple[Tensor, ...]:
        """The first layer's input state from the projected features ``p`` (``B×d×h×w``)."""
        raise NotImplementedError

    def depth(self, state: tuple[Tensor, ...]) -> Tensor:
        """The depth hidden map (``B×d×h×w``) of a layer's output state."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        state = self.initial_state(self.proj_in(x))
        aux = []
        for layer, classifier in zip(self.layers, self.classifiers):
            state = layer(*state)
            aux.append(classifier(self.depth(state)))
        return x + self.proj_out(self.depth(state)), aux
