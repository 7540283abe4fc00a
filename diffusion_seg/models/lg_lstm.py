"""LG-LSTM — Local-Global LSTM (Liang et al., "Semantic Object Parsing with Local-Global Long
Short-Term Memory", CVPR 2016), as the PDN paper counts it and uses it as a baseline (PDN,
Zhang et al., Pattern Recognition 2019: Sec. 4.3, Table 1; "LG-LSTM (Res101)" in Tables 3–5).

Structure
---------
An LG-LSTM layer updates, at every site p of the ``h×w`` grid, eight *spatial* LSTMs (one per
neighbour direction δ_n, n = 1..8) and one *depth* LSTM, each with its own hidden and memory
map (d channels each). All nine read one input vector per site::

    x_p = [h_s^1(p + δ_1), ..., h_s^8(p + δ_8), h_d(p)]      local: 9·d
        ⊕ flatten(pool_{G×G}(h_d))                            global: G²·d (w/ G only)

the hidden state each of the 8 neighbours sends along its direction, the site's own depth
hidden state and, with the global term, the depth hidden map of the whole image pooled into a
G×G grid (G = 3: 9·d more inputs). Every gate is fully connected over these inputs (PDN
Sec. 4.3: LG-LSTM's parameters grow with d² because it "exploits the fully connected operation
in each LSTM"). The eight spatial LSTMs share one weight set (PDN Sec. 4: "the parameters of
each LSTM are shared, thus the information that each site passes to all of its neighbors is
equivalent"), so their gates are equal at a site. Spatial LSTM n takes its previous memory from
the neighbour it reads (p + δ_n), as a multi-dimensional (Grid) LSTM carries the cell along each
dimension: that is what keeps "distinct hidden and memory cells of each position for each
dimension" (LG-LSTM abstract) with shared gates. Then, for every LSTM::

    m' = f ⊙ m_prev + i ⊙ g,    h' = o ⊙ tanh(m')      (σ for i, f, o; tanh for g)

The counts below fix the inputs and the weight sharing; two details are our choice, as PDN
does not give them: the neighbour's memory as a spatial LSTM's previous cell (above), and the
grid pooling (max by default, ``global_pool="avg"`` for average).

How PDN's Table 1 counts map onto this (weights only; biases, 8·d per layer, are not in the
table and not in :func:`lstm_weight_count`)::

    w/o G:  5 × 2 × 4 × (9 × d²)  = 360·d²
    w/ G:   5 × 2 × 4 × (18 × d²) = 720·d²  (2,949,120 at d = 64, PDN's "2949K")
            |   |   |    |
            |   |   |    inputs × outputs of one gate: 9·d local (8 neighbours + own depth
            |   |   |    hidden) [+ 9·d global: the 3×3 grid] → d, fully connected
            |   |   4 gates (i, f, o, g)
            |   2 weight sets per layer: the shared spatial LSTM and the depth LSTM
            5 layers: the first factor is the layer count in every row of the table (PDN's
              own 4 × 2 × 4 × (9·d) is 4 layers × 2 LSTMs; Sec. 4.3: "4 stacked LSTM layers
              ... less than the previous works"), and the receptive-field entry
              [s·(9 − 1) + r]² − r² is 4 one-site steps, counted as layers − 1 like PDN's own
              4-layer 8NB entry (7 − 1 = 2·3)

Here: one 1×1 convolution per layer (8·d ← 9·d: the 4 gates of both LSTMs, 72·d²) and, with
G, one linear map of the pooled grid (8·d ← G²·d, 72·d² at G = 3) added as a per-image bias.
The eight neighbour maps (hidden and memory) are shifted into place by one depthwise 3×3
convolution with fixed one-hot kernels (zero outside the image): no loop over sites or
directions, only over layers. The gate math runs in the dtype of the convolution output, so
the module works under CPU/GPU autocast in bfloat16.

Placement and outputs
---------------------
As PDN's modules (the same frame, :class:`~diffusion_seg.models.layers.ResidualStack`, and
head base, :class:`~diffusion_seg.models.heads.InsertedModulesHead`): the projected feature
map is the first layer's nine hidden maps (memories zero), the module joins the backbone
stream through a zero-initialised residual ``x + W_out·h_d`` at one insertion point (the
backbone output by default), the DeepLab-v2 ASPP classifier reads the network output, and
every layer's depth hidden map gets a 1×1 classifier for intermediate supervision,
``lg_layer{t}`` (LG-LSTM supervises every layer with a pixel-wise cross-entropy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import InsertedModulesHead
from diffusion_seg.models.layers import ResidualStack, init_normal

GLOBAL_POOLS = ("max", "avg")
# The 8 neighbour offsets (dy, dx): the 3×3 window in raster order without its centre.
NEIGHBOR_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def neighbor_shift_kernel(channels_per_direction: int) -> Tensor:
    """Depthwise ``(8·c)×1×3×3`` kernel whose channel block n is one-hot at δ_n: a convolution
    with it (padding 1) moves map n so that site p holds the value at p + δ_n (zero outside)."""
    kernel = torch.zeros(len(NEIGHBOR_OFFSETS), 3, 3)
    for n, (dy, dx) in enumerate(NEIGHBOR_OFFSETS):
        kernel[n, 1 + dy, 1 + dx] = 1.0
    return kernel.repeat_interleave(channels_per_direction, dim=0).unsqueeze(1)


class LGLSTMLayer(nn.Module):
    """One LG-LSTM layer: 8 spatial LSTMs with shared weights and one depth LSTM.

    States: ``h_s, m_s`` are ``B×(8·d)×h×w`` (direction-major: channel ``n·d + c``),
    ``h_d, m_d`` are ``B×d×h×w``.

    Args:
        hidden: d.
        global_grid: G of the global term (0: none, LG-LSTM "w/o G").
        global_pool: ``"max"`` or ``"avg"`` pooling of the depth hidden map into the G×G grid.
    """

    def __init__(self, hidden: int, global_grid: int = 3, global_pool: str = "max") -> None:
        super().__init__()
        self.hidden = hidden
        self.global_grid = global_grid
        self.global_pool = global_pool
        directions = len(NEIGHBOR_OFFSETS)
        # Output channels: [spatial i, f, o, g | depth i, f, o, g], d each.
        self.gates = nn.Conv2d((directions + 1) * hidden, 8 * hidden, 1)
        init_normal(self.gates)
        self.global_gates: nn.Linear | None = None
        if global_grid:
            grid_inputs = global_grid * global_grid * hidden
            self.global_gates = nn.Linear(grid_inputs, 8 * hidden, bias=False)
            nn.init.normal_(self.global_gates.weight, mean=0.0, std=0.01)
        # Shifts hidden and memory maps of all 8 directions in one call.
        self.register_buffer("shift", neighbor_shift_kernel(2 * hidden), persistent=False)

    def forward(
        self, h_s: Tensor, m_s: Tensor, h_d: Tensor, m_d: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        d = self.hidden
        directions = len(NEIGHBOR_OFFSETS)
        # Direction n of site p reads the hidden state and the memory of neighbour p + δ_n:
        # channel block n of [h_s | m_s] (2·d channels) is moved by δ_n in one depthwise conv.
        pairs = torch.cat([h_s.unflatten(1, (directions, d)), m_s.unflatten(1, (directions, d))], 2)
        pairs = pairs.flatten(1, 2)
        shifted = F.conv2d(pairs, self.shift.to(pairs.dtype), padding=1, groups=pairs.shape[1])
        h_in, m_prev = shifted.unflatten(1, (directions, 2, d)).unbind(2)
        # Gates of both LSTMs from the 9·d local inputs (+ the G²·d global ones).
        z = self.gates(torch.cat([h_in.flatten(1, 2), h_d], 1))
        if self.global_gates is not None:
            pool = F.adaptive_max_pool2d if self.global_pool == "max" else F.adaptive_avg_pool2d
            z = z + self.global_gates(pool(h_d, self.global_grid).flatten(1))[:, :, None, None]
        spatial, depth = z.unflatten(1, (2, 4, d)).unbind(1)
        zi, zf, zo, zg = spatial.unbind(1)
        # The shared spatial gates act on the 8 directions' own memories (broadcast over n).
        written = torch.sigmoid(zi) * torch.tanh(zg)
        m_s = m_prev * torch.sigmoid(zf).unsqueeze(1) + written.unsqueeze(1)
        h_s = torch.tanh(m_s) * torch.sigmoid(zo).unsqueeze(1)
        zi, zf, zo, zg = depth.unbind(1)
        m_d = m_d * torch.sigmoid(zf) + torch.sigmoid(zi) * torch.tanh(zg)
        h_d = torch.tanh(m_d) * torch.sigmoid(zo)
        return h_s.flatten(1, 2), m_s.flatten(1, 2), h_d, m_d


class LGLSTMModule(ResidualStack):
    """A stack of LG-LSTM layers on a feature map, with per-layer auxiliary classifiers.

    ``x`` (C channels) → 1×1 projection to d → the first layer's nine hidden maps (memories
    zero) → ``layers`` LG-LSTM layers → ``x + W_out·h_d`` (residual, ``W_out`` zero at init so
    the pretrained network is unchanged at step 0). Each layer's depth hidden map goes through
    its own 1×1 classifier.

    Args:
        in_channels: C.
        num_classes: K of the auxiliary classifiers.
        layers: LG-LSTM layers (PDN's count: 5).
        hidden: d (LG-LSTM: 64).
        global_grid: G (3: LG-LSTM's 3×3 grid, "w/ G"); 0 or ``None``: local only ("w/o G").
        global_pool: ``"max"`` or ``"avg"``.

    ``forward(x) -> (x + W_out·h_d, [aux logits of layer 1..layers])``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        layers: int = 5,
        hidden: int = 64,
        global_grid: int | None = 3,
        global_pool: str = "max",
    ) -> None:
        if global_grid is not None and (not isinstance(global_grid, int) or global_grid < 0):
            raise ValueError(
                f"model.global_grid={global_grid} is invalid; allowed: null or 0 (local only, "
                "LG-LSTM 'w/o G'), or an integer >= 1 (3: LG-LSTM's 3×3 grid, 'w/ G')"
            )
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(
                f"model.global_pool={global_pool!r} is invalid; allowed: {', '.join(GLOBAL_POOLS)}"
            )
        super().__init__(
            in_channels, num_classes, hidden, layers,
            lambda: LGLSTMLayer(hidden, global_grid or 0, global_pool),
        )

    def initial_state(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # (h_s, m_s, h_d, m_d): the projection is every hidden map, memories zero.
        h_s = p.repeat(1, len(NEIGHBOR_OFFSETS), 1, 1)
        return h_s, torch.zeros_like(h_s), p, torch.zeros_like(p)

    def depth(self, state: tuple[Tensor, ...]) -> Tensor:
        return state[2]


def lstm_weight_count(module: LGLSTMModule) -> int:
    """Gate weights of all LSTMs (local and global, biases excluded): the quantity of PDN's
    Table 1, 360·d² (w/o G) or 720·d² (w/ G, G = 3) for 5 layers."""
    count = 0
    for layer in module.layers:
        count += layer.gates.weight.numel()
        if layer.global_gates is not None:
            count += layer.global_gates.weight.numel()
    return count


class LGLSTMHead(InsertedModulesHead):
    """LG-LSTM baseline: one LG-LSTM module on / in the backbone, then the classifier on the
    network output (as PDN's heads, so the two compare on the same base network). Auxiliary
    logits ``lg_layer{t}`` (1-based) come from every layer's depth hidden map.

    Args:
        backbone: the backbone the head sits on (the block at an inner point is wrapped).
        num_classes: K.
        layers: LG-LSTM layers (PDN's Table 1 count: 5).
        hidden: d (LG-LSTM's setting: 64).
        global_grid: 3 (LG-LSTM "w/ G", 720·d² gate weights) or 0 / ``None`` ("w/o G", 360·d²).
        global_pool: ``"max"`` or ``"avg"`` pooling into the G×G grid.
        insert_at: ``"output"`` (default), a stage (``"layer3"``: after its last block) or
            ``"<stage>.<i>"`` (after block i), as PDN's ``insert_at``.
        classifier: ``"aspp"`` (DeepLab-v2 ASPP) or ``"1x1"``.
        dilations: ASPP dilations.
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        num_classes: int,
        layers: int = 5,
        hidden: int = 64,
        global_grid: int | None = 3,
        global_pool: str = "max",
        insert_at: str = "output",
        classifier: str = "aspp",
        dilations: Sequence[int] = (6, 12, 18, 24),
    ) -> None:
        def module(channels: int) -> LGLSTMModule:
            return LGLSTMModule(channels, num_classes, layers, hidden, global_grid, global_pool)

        super().__init__(
            backbone, num_classes, [str(insert_at)], module, ["lg"], classifier, dilations
        )

    @property
    def lg(self) -> LGLSTMModule:
        """The LG-LSTM module, wherever it sits."""
        return self.inserted_modules()[0]

    def moved_modules(self) -> dict[str, nn.Module]:
        # Up to 79d199a the module was the head's child ``lg``, hooked into the backbone.
        return {"lg": self.lg}
