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

Implementation: two exact forms of Eq. 1
----------------------------------------
The hidden state of a layer is one tensor ``B×(d·(E+1))×h×w`` ordered channel-major (index
``c·(E+1) + e``). The stored parameters are the ring taps alone (``taps``, exactly the Table 1
count, ordered ring by ring), so the taps off the rings are not parameters: weight decay or
momentum can never make them drift from zero. Eq. 1 is computed in one of two forms:

* **fused convolution** (GPU; ``conv="full"``): the gates of all E+1 LSTMs are *one* grouped
  convolution with ``groups = d`` for the paper's channel-wise filters (group c reads channel
  c of the E+1 hidden groups and writes the 4·(E+1) gate pre-activations of channel c). Its
  ``(2E+1)×(2E+1)`` kernel is assembled at every call by an ``index_copy`` of the taps into
  zeros; (E+1)·K² multiply-adds per gate output, of which only K² are on a ring.
* **gathered taps** (CPU, channel-wise filters; ``DiffusionLayer.gather_taps``): every pixel's
  K² on-ring inputs (the centre of group 0, the 8 taps of ring 1 from group 1, the 16 of ring
  2 from group 2, ...) are gathered once into a ``d × K² × (B·h·w)`` tensor, and the gates are
  one batched matrix product per channel (``taps[c]``, 4(E+1) × K²). K² multiply-adds per
  gate output, none on the zeros; its backward (:class:`_GatheredRingGates`) is two batched
  products and K² shifted additions, recomputing the gathered inputs instead of storing them.

Measured on CPU (AMD EPYC, 2 threads, glibc malloc keeping freed memory — see
:mod:`diffusion_seg.runtime`), Eq. 1 of one layer, d = 256, 41×41 grid, batch 1, ms:

=================================================  ===========  ================
formulation                                         forward      forward+backward
=================================================  ===========  ================
8NB: fused grouped convolution                      3.7          16.4
8NB: gathered taps (kept on CPU)                    3.2          10.9
24NB: fused grouped convolution                     12.7         51
24NB: one depthwise convolution per ring, summed    15.5         46–54
24NB: gathered taps (kept on CPU)                   7.7          25–28
48NB: one depthwise convolution per ring, summed    36.5         114
48NB: gathered taps (kept on CPU)                   16.7         50
=================================================  ===========  ================

oneDNN's grouped convolution with 4(E+1) outputs per group computes its weight gradient at
about 10 GFLOP/s (26 of the 33 ms of the 5×5 ring's backward); the batched products of the
gathered form run that step in 5 ms. On the tiny setting (batch 16, d = 64, 8×8 grid, 1
thread) the gathered form is 9.3 ms against 12.1 ms at 24NB. Channels-last slows the CPU
backward of the grouped convolution (oneDNN); the gate math keeps the memory format of its
input, so a channels-last input stays channels-last through the module on a GPU.

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


def ring_tap_positions(rings: int) -> tuple[tuple[int, int, int], ...]:
    """``(input group e, row, column)`` in the ``(2E+1)×(2E+1)`` window of every stored tap,
    in the stored order (ring by ring, raster inside a ring): the tap reads group e."""
    size = 2 * rings + 1
    index = ring_tap_index(rings).tolist()
    return tuple((i // (size * size), i % (size * size) // size, i % size) for i in index)


def _exporting() -> bool:
    """Inside TorchScript tracing, ``torch.export`` or an ONNX export (none of which takes a
    Python autograd function)."""
    return (torch.jit.is_tracing() or torch.compiler.is_exporting()
            or torch.onnx.is_in_onnx_export())


class _GatheredRingGates(torch.autograd.Function):
    """Eq. 1 for channel-wise ring filters as one batched product per channel (the gathered
    form of the module docstring).

    ``h``: ``B×(d·(E+1))×H×W`` (channel ``c·(E+1) + e``); ``taps``: ``(G·d)×1×K²`` with
    G = 4(E+1) (output channel ``c·G + j``); ``bias``: ``G·d``; ``positions``:
    :func:`ring_tap_positions` of E. Returns the ``B×(G·d)×H×W`` pre-activations.
    """

    @staticmethod
    def gather(h: Tensor, positions: tuple[tuple[int, int, int], ...], rings: int) -> Tensor:
        """``d × K² × (B·H·W)``: every channel's input under every tap, at every pixel."""
        height, width = h.shape[-2:]
        padded = F.pad(h, (rings,) * 4).unflatten(1, (-1, rings + 1)).transpose(0, 1)
        # padded: [d, B, E+1, H+2E, W+2E]; tap (e, y, x) reads group e shifted by (y, x).
        inputs = [padded[:, :, e, y : y + height, x : x + width] for e, y, x in positions]
        return torch.stack(inputs, 1).flatten(2)

    @staticmethod
    def forward(ctx: Any, h: Tensor, taps: Tensor, bias: Tensor,
                positions: tuple[tuple[int, int, int], ...]) -> Tensor:
        batch, _, height, width = h.shape
        rings = math.isqrt(len(positions)) // 2
        channels = h.shape[1] // (rings + 1)
        weights = taps.view(channels, -1, len(positions))  # [d, G, K²]
        gathered = _GatheredRingGates.gather(h, positions, rings)
        z = torch.baddbmm(bias.view(channels, -1, 1), weights, gathered)  # [d, G, B·H·W]
        ctx.save_for_backward(h, taps)
        ctx.positions, ctx.rings = positions, rings
        device = h.device.type  # the backward computes in the forward's autocast dtype
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        # [d·G, B, H, W] → [B, d·G, H, W]: a view (contiguous for batch 1)
        return z.view(-1, batch, height, width).transpose(0, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        h, taps = ctx.saved_tensors
        positions, rings = ctx.positions, ctx.rings
        channels = h.shape[1] // (rings + 1)
        weights = taps.view(channels, -1, len(positions))
        grad = grad.transpose(0, 1).reshape(channels, weights.shape[1], -1)  # [d, G, B·H·W]
        device, dtype, enabled = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _GatheredRingGates.gradients(ctx, grad, h, weights, positions, rings)

    @staticmethod
    def gradients(ctx: Any, grad: Tensor, h: Tensor, weights: Tensor,
                  positions: tuple[tuple[int, int, int], ...], rings: int
                  ) -> tuple[Tensor | None, ...]:
        batch, _, height, width = h.shape
        channels = weights.shape[0]
        grad_h = grad_taps = grad_bias = None
        if ctx.needs_input_grad[1]:  # recomputed: storing it would cost K²× the input
            gathered = _GatheredRingGates.gather(h, positions, rings)
            grad_taps = torch.bmm(grad, gathered.transpose(1, 2)).view(-1, 1, len(positions))
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(2).flatten()
        if ctx.needs_input_grad[0]:
            grad_inputs = torch.bmm(weights.transpose(1, 2), grad)  # [d, K², B·H·W]
            grad_inputs = grad_inputs.unflatten(2, (batch, height, width))
            padded = h.new_zeros(channels, batch, rings + 1, height + 2 * rings,
                                 width + 2 * rings)
            for tap, (e, y, x) in enumerate(positions):  # the gather's adjoint
                padded[:, :, e, y : y + height, x : x + width] += grad_inputs[:, tap]
            inner = padded[..., rings : rings + height, rings : rings + width]
            grad_h = inner.transpose(0, 1).flatten(1, 2)  # [B, d·(E+1), H, W]
        return grad_h, grad_taps, grad_bias, None


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
        gather_taps: compute Eq. 1 in the gathered-taps form (channel-wise filters only)
            instead of the fused convolution; ``None``: gathered on CPU, fused elsewhere (one
            cuDNN launch on a GPU; exports always hold the convolution). Both give the same
            gates up to summation order.
    """

    def __init__(
        self,
        hidden: int,
        rings: int,
        conv: str = "channelwise",
        init_std: float = PAPER_INIT_STD,
        gather_taps: bool | None = None,
    ) -> None:
        super().__init__()
        if conv not in CONV_TYPES:
            raise ValueError(f"model.conv={conv!r} is invalid; allowed: {', '.join(CONV_TYPES)}")
        if gather_taps and conv != "channelwise":
            raise ValueError("gather_taps=True needs conv='channelwise' (one filter per channel)")
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
        # Plain ints (not a buffer): the gathered form slices with them, torch.compile sees
        # constants.
        self.tap_positions = ring_tap_positions(rings)
        self.gather_taps = gather_taps
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

    def gates(self, h: Tensor) -> Tensor:
        """Eq. 1: the pre-activations of all gates of all E+1 LSTMs, ``B×(4(E+1)d)×h×w``."""
        gather = self.gather_taps
        if gather is None:
            gather = h.device.type == "cpu" and self.groups == self.hidden
        if gather and not _exporting():  # exported graphs hold the portable convolution
            return _GatheredRingGates.apply(h, self.taps, self.bias, self.tap_positions)
        return F.conv2d(h, self.kernel(), self.bias, padding=self.rings, groups=self.groups)

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
