"""PDN — Progressively Diffused Networks (Zhang et al., Pattern Recognition 2019).

A *diffusion module* is a stack of diffusion layers (Sec. 3–4). Each layer holds one depth
LSTM and E spatial LSTMs, each with its own hidden map H and memory M (``B×d×h×w``). The four
gates of every LSTM read all E+1 hidden groups of the previous layer (Eq. 1): the depth group
through a centre-only filter, spatial group e through a filter that is non-zero only on the
ring of taps at Chebyshev distance e (8e taps). So E = 1 gives 8 neighbours (8NB), E = 2 gives
8 + 16 = 24 (24NB): ``neighbors = 4E(E+1)``. Then Eq. 3::

    M' = f ⊙ M + i ⊙ g,    H' = o ⊙ tanh(M')

Eq. 1 as printed puts σ on the candidate g and tanh on the output gate o; against every LSTM
(and Eq. 3, where o scales tanh(M') and g feeds the memory) that is a typo: we use σ for i, f,
o and tanh for g.

Implementation (one fused grouped convolution per layer)
--------------------------------------------------------
The hidden state of a layer is one tensor ``B×(d·(E+1))×h×w`` ordered channel-major (index
``c·(E+1) + e``), so that, for the paper's channel-wise filters (``conv="channelwise"``,
Table 1), the gates of all E+1 LSTMs are *one* grouped convolution with ``groups = d``: group c
reads channel c of the E+1 hidden groups and writes the 4·(E+1) gate pre-activations of
channel c. Its ``(2E+1)×(2E+1)`` kernel is assembled at every call from the stored ring taps
(``taps``, exactly the Table 1 count) by an ``index_copy`` into zeros: the taps off the rings
are not parameters, so weight decay or momentum can never make them drift from zero. The
gate math works on views of the convolution output (no permutes) and keeps the memory format
of the input, so a channels-last input stays channels-last through the module.

Measured on CPU (AMD EPYC, 1 thread, d = 256, 41×41 grid, 24NB, 4 layers, min of 8 runs):

=============================================== =========== ===============
formulation                                      forward     forward+backward
=============================================== =========== ===============
fused grouped conv, NCHW (kept)                  128 ms      436–490 ms
fused grouped conv, channels-last                134–180 ms  480–650 ms
one depthwise conv per ring, summed (E+1 convs)  134 ms      358 ms
unfold / strided gather of ring taps + bmm       > 600 ms    > 600 ms
=============================================== =========== ===============

The convolution is 80 % of the time (its backward alone 60 %); the gate-math variants tried
(slices, ``unbind`` of the four gates, ``split``) are within noise of each other. The per-ring
split saves the zero taps' FLOPs and wins 25 % in CPU training at 24NB (none at 8NB) but costs
E+1 launches and E extra full-size additions per layer; the single fused convolution is kept
as the GPU form; on CPU, from 24NB up, the layer uses the per-ring split
(``DiffusionLayer.split_rings``; same taps, same result up to summation order). On CPU,
channels-last speeds up the grouped convolution's forward (11 vs 39 ms alone) but slows its
backward (oneDNN), so NCHW is the faster training layout.

Placement
---------
The module joins the backbone stream through a residual connection: ``x + W_out·H_depth``
(``W_out`` a 1×1 projection back to the stream's channels, zero-initialised so the pretrained
network is unchanged at step 0). :class:`PDNHead` applies modules at *insertion points*: the
backbone output (``"output"``), the end of a stage (``"layer3"``) or the end of a block
inside a stage (``"layer4.1"``: after res5b, i.e. between res5b and res5c of ResNet-101, the
paper's place in Sec. 5.1). Points inside the backbone use forward hooks registered on the
block, while the modules stay children of the head (so their parameters count as new layers
with the 10× learning rate).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import (
    ASPPClassifier,
    SegmentationHead,
    SegmentationOutput,
    init_normal,
)

CONV_TYPES = ("channelwise", "full")
CLASSIFIERS = ("aspp", "1x1")
# The paper's init: "Gaussian distribution with the mean 0 and the variance 0.01" (Sec. 5).
PAPER_INIT_STD = math.sqrt(0.01)


def rings_from_neighbors(neighbors: int) -> int:
    """Number of spatial LSTMs E for ``neighbors = 4E(E+1)`` (8 → 1, 24 → 2, 48 → 3, ...)."""
    rings = (math.isqrt(1 + max(neighbors, 0)) - 1) // 2
    if rings < 1 or 4 * rings * (rings + 1) != neighbors:
        allowed = ", ".join(str(4 * e * (e + 1)) for e in range(1, 5))
        raise ValueError(
            f"model.neighbors={neighbors} is invalid; allowed: {allowed}, ... "
            "(4E(E+1): the 8E neighbours at Chebyshev distance 1..E)"
        )
    return rings


def chebyshev_distance(rings: int) -> Tensor:
    """Ring (Chebyshev distance from the centre) of every tap of a flattened
    ``(2E+1)×(2E+1)`` window, raster order."""
    offsets = (torch.arange(2 * rings + 1) - rings).abs()
    return torch.maximum(offsets[:, None], offsets[None, :]).flatten()


def ring_tap_index(rings: int) -> Tensor:
    """Where each stored tap goes in a flattened ``(E+1)×K×K`` kernel, K = 2E+1.

    Taps are ordered ring by ring (the depth group's centre tap, then the 8 taps of ring 1,
    the 16 of ring 2, ...; raster order inside a ring). A tap at Chebyshev distance e lands
    in input group e, so group e's filter is non-zero only on ring e (Eq. 1, Fig. 3c). The
    rings partition the K×K window: there are exactly K² taps.
    """
    size = 2 * rings + 1
    ring = chebyshev_distance(rings)
    position = torch.arange(size * size)
    order = torch.argsort(ring * size * size + position)  # by ring, then raster
    return ring[order] * size * size + position[order]


class DiffusionLayer(nn.Module):
    """One diffusion layer: a depth LSTM and E spatial LSTMs (Eq. 1–3).

    State tensors are ``B×(d·(E+1))×h×w``, channel index ``c·(E+1) + e`` (e = 0: depth).

    Args:
        hidden: feature dimension d of every hidden map.
        rings: E, the number of spatial LSTMs.
        conv: ``"channelwise"`` — each gate filter is one ring-shaped filter per channel,
            the paper's Table 1 count (4·(E+1)·(2E+1)²·d weights per layer); ``"full"`` —
            each gate mixes all d channels of every group (d² per tap), for comparison.
        init_std: std of the Gaussian init of the taps (biases start at 0).
        split_rings: compute Eq. 1 as one convolution per ring (group e with a (2e+1)² kernel,
            summed) instead of one fused K×K convolution; ``None``: split on CPU from E = 2
            (it skips the off-ring zeros' FLOPs: faster CPU training at 24NB, no gain at 8NB),
            fuse elsewhere (one launch on a GPU).
    """

    def __init__(
        self,
        hidden: int,
        rings: int,
        conv: str = "channelwise",
        init_std: float = PAPER_INIT_STD,
        split_rings: bool | None = None,
    ) -> None:
        super().__init__()
        if conv not in CONV_TYPES:
            raise ValueError(f"model.conv={conv!r} is invalid; allowed: {', '.join(CONV_TYPES)}")
        self.hidden = hidden
        self.rings = rings
        self.groups = hidden if conv == "channelwise" else 1
        lstms = rings + 1
        size = 2 * rings + 1
        # Output channel c·4(E+1) + k·(E+1) + l: channel c, gate k (i, f, o, g), LSTM l.
        out_channels = hidden * 4 * lstms
        in_per_group = hidden // self.groups
        self.taps = nn.Parameter(torch.empty(out_channels, in_per_group, size * size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("tap_index", ring_tap_index(rings), persistent=False)
        # Per ring e: where its 8e taps go in a flattened (2e+1)² kernel (raster order).
        for e in range(rings + 1):
            on_ring = chebyshev_distance(e) == e
            self.register_buffer(f"ring_index_{e}", on_ring.nonzero().flatten(), persistent=False)
        self.split_rings = split_rings
        nn.init.normal_(self.taps, mean=0.0, std=init_std)

    def kernel(self) -> Tensor:
        """The dense ``(4·(E+1)·d) × (in/groups) × K × K`` kernel: taps on their rings, exact
        zeros elsewhere (built from the stored taps, so the zeros never train)."""
        out_channels, in_per_group, taps = self.taps.shape
        lstms = self.rings + 1
        size = 2 * self.rings + 1
        dense = self.taps.new_zeros(out_channels, in_per_group, lstms * taps)
        dense = dense.index_copy(2, self.tap_index, self.taps)
        return dense.view(out_channels, in_per_group * lstms, size, size)

    def ring_kernels(self) -> list[Tensor]:
        """Group e's taps alone as a ``(2e+1)×(2e+1)`` kernel per ring e (zero inside the
        ring): the per-ring form of :meth:`kernel`. The stored taps are ordered ring by ring,
        raster order inside a ring, which is also the raster order of the smaller window."""
        out_channels, in_per_group, _ = self.taps.shape
        kernels, start = [], 0
        for e in range(self.rings + 1):
            size = 2 * e + 1
            index = getattr(self, f"ring_index_{e}")
            dense = self.taps.new_zeros(out_channels, in_per_group, size * size)
            dense = dense.index_copy(2, index, self.taps[:, :, start : start + index.numel()])
            kernels.append(dense.view(out_channels, in_per_group, size, size))
            start += index.numel()
        return kernels

    def gates(self, h: Tensor) -> Tensor:
        """Eq. 1: the pre-activations of all gates of all E+1 LSTMs, ``B×(4(E+1)d)×h×w``."""
        split = self.split_rings
        if split is None:
            split = h.device.type == "cpu" and self.rings >= 2
        if not split:  # one (grouped) convolution over all groups with the K×K kernel
            return F.conv2d(h, self.kernel(), self.bias, padding=self.rings, groups=self.groups)
        groups = h.unflatten(1, (-1, self.rings + 1))  # [B, channel, group e, h, w]
        depth, *rings = self.ring_kernels()
        z = F.conv2d(groups[:, :, 0], depth, self.bias, groups=self.groups)
        for e, kernel in enumerate(rings, start=1):
            z = z + F.conv2d(groups[:, :, e], kernel, padding=e, groups=self.groups)
        return z

    def forward(self, h: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        lstms = self.rings + 1
        z = self.gates(h)
        zi, zf, zo, zg = z.unflatten(1, (self.hidden, 4, lstms)).unbind(2)
        m = m.unflatten(1, (self.hidden, lstms))
        # Eq. 3 with σ for i, f, o and tanh for g (Eq. 1 swaps σ/tanh on g and o: a typo).
        # The dense state comes first in each product so the result keeps its memory format
        # (elementwise ops lay out their output like their first dense operand).
        m = m * torch.sigmoid(zf) + torch.sigmoid(zi) * torch.tanh(zg)
        h = torch.tanh(m) * torch.sigmoid(zo)
        return h.flatten(1, 2), m.flatten(1, 2)


class DiffusionModule(nn.Module):
    """A stack of diffusion layers on a feature map, with per-layer auxiliary classifiers.

    ``x`` (C channels) → 1×1 projection to d → E+1 copies as the first layer's hidden maps,
    memories zero (Sec. 3) → ``layers`` diffusion layers → output ``x + W_out·H_depth``
    (residual). Each layer's depth hidden map goes through its own 1×1 classifier: the
    intermediate supervision of Sec. 3 (Table 2 reports these per-layer predictions).

    Args:
        in_channels: C, channels of the stream the module sits on.
        num_classes: K, classes of the auxiliary classifiers.
        neighbors: 8, 24, 48, ... = 4E(E+1).
        layers: number of diffusion layers (paper: 4).
        hidden: d (paper: 256).
        conv: ``"channelwise"`` (paper, Table 1) or ``"full"``.
        init_std: Gaussian std of the diffusion taps (paper: variance 0.01 → std 0.1).

    ``forward(x) -> (x + W_out·H_depth, [aux logits of layer 1..layers])``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        neighbors: int = 24,
        layers: int = 4,
        hidden: int = 256,
        conv: str = "channelwise",
        init_std: float = PAPER_INIT_STD,
    ) -> None:
        super().__init__()
        rings = rings_from_neighbors(neighbors)
        if layers < 1:
            raise ValueError(f"model.layers={layers} is invalid; allowed: an integer >= 1")
        if hidden < 1:
            raise ValueError(f"model.hidden={hidden} is invalid; allowed: an integer >= 1")
        self.rings = rings
        self.hidden = hidden
        self.proj_in = nn.Conv2d(in_channels, hidden, 1)
        self.layers = nn.ModuleList(
            DiffusionLayer(hidden, rings, conv, init_std) for _ in range(layers)
        )
        self.classifiers = nn.ModuleList(nn.Conv2d(hidden, num_classes, 1) for _ in range(layers))
        self.proj_out = nn.Conv2d(hidden, in_channels, 1)
        # The projections and classifiers are not described by the paper: N(0, 0.01²) like
        # every other new layer of the project (DeepLab's classifier init). The residual
        # branch starts at zero so inserting the module keeps the pretrained network intact;
        # the auxiliary losses train the LSTMs from the first step.
        init_normal(self.proj_in)
        init_normal(self.classifiers)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        lstms = self.rings + 1
        p = self.proj_in(x)
        # E+1 copies of the projected features, channel-major (c·(E+1) + e), in x's layout.
        h = p.unsqueeze(2).expand(-1, -1, lstms, -1, -1).flatten(1, 2)
        if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
            h = h.contiguous(memory_format=torch.channels_last)
        m = torch.zeros_like(h)
        aux = []
        for layer, classifier in zip(self.layers, self.classifiers):
            h, m = layer(h, m)
            aux.append(classifier(h.unflatten(1, (self.hidden, lstms))[:, :, 0]))
        depth = h.unflatten(1, (self.hidden, lstms))[:, :, 0]
        return x + self.proj_out(depth), aux


def _block_boundaries(backbone: TimmBackbone) -> list[str]:
    """Every insertion point, shallow to deep: ``<stage>.<i>`` after block i, the stage's
    name after its last block, and ``"output"`` for the end of the last stage."""
    points = []
    for s, stage_name in enumerate(backbone.stage_names):
        stage = backbone.stage(s)
        blocks = len(stage) if isinstance(stage, nn.Sequential) else 1
        points += [f"{stage_name}.{i}" for i in range(blocks - 1)] + [stage_name]
    points[-1] = "output"
    return points


def default_insertion_points(backbone: TimmBackbone, modules: int) -> list[str]:
    """The last ``modules`` block boundaries of the backbone, the output included.

    One module sits on the backbone output (works for any backbone and leaves no pretrained
    block behind a freshly initialised module); two modules on ResNet-101 go after res5b
    and after res5c (``["layer4.1", "output"]``: two depths of the last stage); on the tiny
    backbone (one block per stage) after layer3 and on the output.
    """
    points = _block_boundaries(backbone)
    if modules > len(points):
        raise ValueError(
            f"model.modules={modules} is invalid for backbone {backbone.name}: it has "
            f"{len(points)} insertion points"
        )
    return points[-modules:]


def _describe_points(backbone: TimmBackbone) -> str:
    parts = ["'output'"] + [f"'{name}'" for name in backbone.stage_names]
    for s, stage_name in enumerate(backbone.stage_names):
        stage = backbone.stage(s)
        if isinstance(stage, nn.Sequential):
            last = f"..'{stage_name}.{len(stage) - 1}'" if len(stage) > 1 else ""
            parts.append(f"'{stage_name}.0'{last}")
    return ", ".join(parts)


def resolve_insertion_point(backbone: TimmBackbone, point: str) -> tuple[nn.Module | None, int]:
    """``(module to hook or None for the output, channels there)`` for one insertion point.

    Every block of a (ResNet) stage outputs the stage's channels.
    """
    stage_name, _, block = str(point).partition(".")
    if point == "output":
        return None, backbone.channels[-1]
    if stage_name in backbone.stage_names:
        s = backbone.stage_names.index(stage_name)
        stage = backbone.stage(s)
        if not block:
            return stage, backbone.channels[s]
        if isinstance(stage, nn.Sequential) and block.isdigit() and int(block) < len(stage):
            return stage[int(block)], backbone.channels[s]
    raise ValueError(
        f"model.insert_at: {point!r} is not an insertion point of backbone {backbone.name}; "
        f"allowed: {_describe_points(backbone)} (after that block)"
    )


class PDNHead(SegmentationHead):
    """PDN: diffusion modules in / on the backbone, then the classifier on the network output.

    The final prediction comes from the network output (ResNet res5c) through the classifier,
    as in the paper (Tables 4–5: "confidence maps extracted from ResNet 5c layer"); each
    module's layers add auxiliary logits ``pdn{m}_layer{t}`` (1-based) for intermediate
    supervision.

    Args:
        backbone: the backbone the head sits on (hooks are registered on its blocks).
        num_classes: K.
        neighbors: 8, 24, 48, ... (4E(E+1)); paper rows 8NB and 24NB.
        layers: diffusion layers per module (paper: 4).
        hidden: d (paper: 256).
        conv: ``"channelwise"`` (paper, Table 1) or ``"full"``.
        modules: number of diffusion modules (paper: 1 or 2).
        insert_at: one insertion point per module: ``"output"``, a stage (``"layer3"``: after
            its last block) or ``"<stage>.<i>"`` (after block i, e.g. ``"layer4.1"`` = between
            res5b and res5c). Default: :func:`default_insertion_points`.
        classifier: ``"aspp"`` (DeepLab-v2 ASPP, the paper's base network) or ``"1x1"``.
        dilations: ASPP dilations.
        init_std: Gaussian std of the diffusion taps (paper: variance 0.01 → std 0.1).
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        num_classes: int,
        neighbors: int = 24,
        layers: int = 4,
        hidden: int = 256,
        conv: str = "channelwise",
        modules: int = 1,
        insert_at: Sequence[str] | None = None,
        classifier: str = "aspp",
        dilations: Sequence[int] = (6, 12, 18, 24),
        init_std: float = PAPER_INIT_STD,
    ) -> None:
        super().__init__()
        if modules < 1:
            raise ValueError(f"model.modules={modules} is invalid; allowed: an integer >= 1")
        if classifier not in CLASSIFIERS:
            raise ValueError(
                f"model.classifier={classifier!r} is invalid; allowed: {', '.join(CLASSIFIERS)}"
            )
        if insert_at is None:
            points = default_insertion_points(backbone, modules)
        else:
            points = [insert_at] if isinstance(insert_at, str) else [str(p) for p in insert_at]
            if len(points) != modules:
                raise ValueError(
                    f"model.insert_at={points} names {len(points)} insertion points but "
                    f"model.modules={modules}; give one point per module"
                )
        self.insert_at = points
        self.pdn = nn.ModuleList()
        self._output_modules: list[int] = []
        # Aux logits of the modules run inside the backbone, collected by their hooks during
        # the backbone's forward and handed out by the head's forward.
        self._pending_aux: dict[int, list[Tensor]] = {}
        # Resolve every point before hooking any: a bad one must leave the backbone untouched.
        resolved = [resolve_insertion_point(backbone, point) for point in points]
        for index, (target, channels) in enumerate(resolved):
            self.pdn.append(
                DiffusionModule(channels, num_classes, neighbors, layers, hidden, conv, init_std)
            )
            if target is None:
                self._output_modules.append(index)
            else:
                target.register_forward_hook(functools.partial(self._hook, index))
        in_channels = backbone.channels[-1]
        if classifier == "aspp":
            self.classifier: nn.Module = ASPPClassifier(in_channels, num_classes, dilations)
        else:
            self.classifier = nn.Conv2d(in_channels, num_classes, 1)
            init_normal(self.classifier)

    def diagnostics(self) -> dict[str, float]:
        """Norm of each module's output projection: how much the module writes into the
        backbone stream (0 at init, so it shows whether training puts the module to use)."""
        return {
            f"pdn{index + 1}_out_norm": float(module.proj_out.weight.detach().norm())
            for index, module in enumerate(self.pdn)
        }

    def _run(self, index: int, x: Tensor) -> Tensor:
        out, self._pending_aux[index] = self.pdn[index](x)
        return out

    def _hook(self, index: int, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        # Replaces the block's output by the module's: the rest of the backbone runs on it.
        return self._run(index, output)

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        x = features[-1]
        for index in self._output_modules:
            x = self._run(index, x)
        aux = {
            f"pdn{index + 1}_layer{t}": logits
            for index, layers in sorted(self._pending_aux.items())
            for t, logits in enumerate(layers, start=1)
        }
        self._pending_aux.clear()
        return SegmentationOutput(self.classifier(x), aux=aux)
