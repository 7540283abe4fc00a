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

The gathered form is the faster one on CPU in eager mode, the fused convolution the one for GPU
and under ``torch.compile`` (inductor lowers it to one convolution; the gathered Function's
K² slice additions took 8 minutes to compile and ran 20× slower on CPU, docs/benchmarks.md);
the timings that chose them are in docs/benchmarks.md (Eq. 1: fused convolution vs gathered
taps). Channels-last slows the CPU backward of the
grouped convolution (oneDNN); the gate math keeps the memory format of its input, so a
channels-last input stays channels-last through the module on a GPU.

Placement
---------
The module joins the backbone stream through a residual connection: ``x + W_out·H_depth``
(``W_out`` a 1×1 projection back to the stream's channels, zero-initialised so the pretrained
network is unchanged at step 0). :class:`PDNHead` applies modules at *insertion points*: the
backbone output (``"output"``), the end of a stage (``"layer3"``) or the end of a block
inside a stage (``"layer4.1"``: after res5b, i.e. between res5b and res5c of ResNet-101, the
paper's place in Sec. 5.1). Inside the backbone the block there is wrapped with the module
(:class:`~diffusion_seg.models.backbone.InsertedAfter`); its parameters count as new layers
with the 10× learning rate wherever it sits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import InsertedModulesHead
from diffusion_seg.models.layers import ResidualStack

CONV_TYPES = ("channelwise", "full")
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


def _traced() -> bool:
    """Inside TorchScript tracing, ``torch.export`` or an ONNX export (none of which takes a
    Python autograd function), or ``torch.compile`` (which takes it, but compiles its gathered
    form for minutes into a step 20× slower than the fused convolution's on CPU)."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling()
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
            cuDNN launch on a GPU; compiled and exported graphs always hold the convolution).
            Both give the same gates up to summation order.
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
        if gather and not _traced():  # compiled and exported graphs hold the convolution
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


class DiffusionModule(ResidualStack):
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
        rings = rings_from_neighbors(neighbors)
        super().__init__(
            in_channels, num_classes, hidden, layers,
            lambda: DiffusionLayer(hidden, rings, conv, init_std),
        )
        self.rings = rings

    def initial_state(self, p: Tensor) -> tuple[Tensor, Tensor]:
        # E+1 copies of the projected features, channel-major (c·(E+1) + e), in p's layout;
        # memories zero.
        h = p.unsqueeze(2).expand(-1, -1, self.rings + 1, -1, -1).flatten(1, 2)
        if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
            h = h.contiguous(memory_format=torch.channels_last)
        return h, torch.zeros_like(h)

    def depth(self, state: tuple[Tensor, ...]) -> Tensor:
        return state[0].unflatten(1, (self.hidden, self.rings + 1))[:, :, 0]


def default_insertion_points(backbone: TimmBackbone, modules: int) -> list[str]:
    """The last ``modules`` block boundaries of the backbone, the output included.

    One module sits on the backbone output (works for any backbone and leaves no pretrained
    block behind a freshly initialised module); two modules on ResNet-101 go after res5b
    and after res5c (``["layer4.1", "output"]``: two depths of the last stage); on the tiny
    backbone (one block per stage) after layer3 and on the output.
    """
    points = backbone.insertion_points()
    if modules > len(points):
        raise ValueError(
            f"model.modules={modules} is invalid for backbone {backbone.name}: it has "
            f"{len(points)} insertion points"
        )
    return points[-modules:]


class PDNHead(InsertedModulesHead):
    """PDN: diffusion modules in / on the backbone, then the classifier on the network output.

    The final prediction comes from the network output (ResNet res5c) through the classifier,
    as in the paper (Tables 4–5: "confidence maps extracted from ResNet 5c layer"); each
    module's layers add auxiliary logits ``pdn{m}_layer{t}`` (1-based) for intermediate
    supervision.

    Args:
        backbone: the backbone the head sits on (the blocks at inner points are wrapped).
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
        if modules < 1:
            raise ValueError(f"model.modules={modules} is invalid; allowed: an integer >= 1")
        if insert_at is None:
            points = default_insertion_points(backbone, modules)
        else:
            points = [insert_at] if isinstance(insert_at, str) else [str(p) for p in insert_at]
            if len(points) != modules:
                raise ValueError(
                    f"model.insert_at={points} names {len(points)} insertion points but "
                    f"model.modules={modules}; give one point per module"
                )

        def module(channels: int) -> DiffusionModule:
            return DiffusionModule(channels, num_classes, neighbors, layers, hidden, conv, init_std)

        names = [f"pdn{m}" for m in range(1, modules + 1)]
        super().__init__(backbone, num_classes, points, module, names, classifier, dilations)

    @property
    def pdn(self) -> nn.ModuleList:
        """The diffusion modules in ``insert_at`` order, wherever they sit."""
        return nn.ModuleList(self.inserted_modules())

    def moved_modules(self) -> dict[str, nn.Module]:
        # Up to 79d199a the modules were the head's ModuleList ``pdn``, hooked into the backbone.
        return {f"pdn.{index}": module for index, module in enumerate(self.inserted_modules())}
