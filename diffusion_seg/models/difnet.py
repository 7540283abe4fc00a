"""DifNet: seed and similarity branches joined by a cascade of random walks.

Jiang et al., "DifNet: Semantic Segmentation by Diffusion Networks", NeurIPS 2018, matching
the authors' published code (github.com/sdujump/DifNet, ``model_difnet.py``) by default::

    x  = ASPP(seed_backbone(I)[-1])             score map, K channels, output stride 8
    M  = H(x)                                   importance map, B×1×h×w, in [0, 1]
    s  = M ⊙ x                                  seed (Sec. 4)
    Ψ_t = maxpool_{h×w}(BN(conv1×1(f_t)))       f_t ∈ {I, layer1, .., layer4} of a 2nd backbone
    P_t = row-softmax(Ψ_tᵀ Ψ_t)                 transition matrix, N×N with N = h·w
    y_0 = s
    y_{t+1} = β_t[μ_t P_t y_t + (1−μ_t) s] + (1−β_t) y_t      Eq. 4–5
    μ_t = σ(−a_t), β_t = σ(−b_t)                    a_t = b_t = 0 at init

The published code builds every P_t densely (O(N²) memory, which caps the input size).
``P_t y_t`` is single-head attention with scale 1 and ``Q = K = Ψ_t``, ``V = y_t``, so the
default path (``diffusion="attention"``) calls :func:`torch.nn.functional.
scaled_dot_product_attention` and never materialises P: memory O(N). ``diffusion="dense"``
keeps the explicit matrix as the reference; :func:`transition_rows` gives chosen rows of P_t
for visualisation without the N×N matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import SegmentationHead, SegmentationOutput
from diffusion_seg.models.layers import ASPPClassifier

# DeepLab-v2's single-branch classifier for ResNets ("LargeFOV": one 3×3 conv, dilation 12)
# is the "no ASPP" alternative of DeepLab-v2, on which DifNet builds (Sec. 5.1): our reading
# of Table 1's DifNet-50-noASPP, which the published code does not contain.
LARGEFOV_DILATION = 12

# Attention kernels want q/k/v widths that are equal (CPU and CUDA flash) and a multiple
# of 8 (CUDA kernels in half precision): both widths are padded with zeros to this multiple.
ATTENTION_WIDTH_MULTIPLE = 8


def walk_levels(walks: int, num_levels: int = 5) -> list[int]:
    """The similarity level feeding each walk: 0 = the input image, 1.. = backbone stages.

    Rule: ``walks`` levels evenly spaced from the image to the deepest stage, rounded half
    up, in shallow-to-deep order (the paper's hierarchy: walk t sees coarser semantics than
    walk t−1, Sec. 5.3). With ``num_levels = 5``:

    * 5 walks: image, layer1, layer2, layer3, layer4 (the paper).
    * 3 walks: image, layer2, layer4 — the paper's ablation "without the 2nd and 4th
      random walks" (Sec. 5.3); 4: image, layer1, layer3, layer4; 2: image, layer4.
    * 1 walk: layer4 alone (the deepest level; its learned μ_5, β_5 are the largest in
      Table 3, i.e. the walk that matters most).
    * more than 5: levels are reused in order, e.g. 7: image, l1, l1, l2, l3, l3, l4.
      Each walk still has its own Ψ_t, a_t and b_t.
    """
    if isinstance(walks, bool) or not isinstance(walks, int) or walks < 1:
        raise ValueError(f"model.walks={walks!r} is invalid; allowed: an integer >= 1")
    if walks == 1:
        return [num_levels - 1]
    last = num_levels - 1
    # round(t * last / (walks − 1)) half up, in exact integer arithmetic
    return [(2 * t * last + walks - 1) // (2 * (walks - 1)) for t in range(walks)]


def _at_least_fp32(x: Tensor) -> Tensor:
    """float32 for half-precision inputs, unchanged for float32 / float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def transition_rows(psi: Tensor, index: Tensor | slice | None = None) -> Tensor:
    """Rows of P = row-softmax(Ψ Ψᵀ) (Sec. 4), computed in float32 at least.

    Args:
        psi: ``B×N×D`` embeddings Ψ_t, one row per node.
        index: which rows (node indices); ``None`` for the whole ``B×N×N`` matrix.

    Returns:
        ``B×M×N`` rows; only ``M×N`` values are built, so a few rows are cheap at any N.
    """
    psi = _at_least_fp32(psi)
    rows = psi if index is None else psi[:, index]
    return torch.softmax(rows @ psi.transpose(1, 2), dim=-1)


def propagate_dense(psi: Tensor, y: Tensor) -> Tensor:
    """``P y`` with P built explicitly (the published code): O(N²) memory, float32 at least
    (autocast off), so it is the reference the attention path is checked against."""
    with torch.autocast(psi.device.type, enabled=False):
        return transition_rows(psi) @ _at_least_fp32(y)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def propagate_attention(psi: Tensor, y: Tensor) -> Tensor:
    """``P y`` as attention ``softmax(Ψ Ψᵀ · 1) y`` without building P: O(N) memory.

    Fast kernels need q, k and v of one width (the CPU flash kernel otherwise falls back,
    silently, to the math kernel, which builds the N×N matrix). Zero columns appended to
    v (K < D) or to Ψ (K > D) change no dot product and no output column we keep.
    Runs in Ψ's dtype (bf16 under autocast on GPU); returns y's dtype.
    """
    width = _round_up(max(psi.shape[-1], y.shape[-1]), ATTENTION_WIDTH_MULTIPLE)
    q = F.pad(psi, (0, width - psi.shape[-1])).unsqueeze(1).contiguous()
    v = F.pad(y.to(psi.dtype), (0, width - y.shape[-1])).unsqueeze(1).contiguous()
    out = F.scaled_dot_product_attention(q, q, v, scale=1.0)
    return out.squeeze(1)[..., : y.shape[-1]].to(y.dtype)


PROPAGATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "attention": propagate_attention,
    "dense": propagate_dense,
}


class ImportanceHead(nn.Sequential):
    """H of Sec. 4, as in the published code: three BN→ReLU→conv5×5 (no bias) blocks
    K→8→4→1, then a sigmoid. M = H(x) rescales each node's influence on the diffusion."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (8, 4, 1)) -> None:
        layers: list[nn.Module] = []
        channels = num_classes
        for width in widths:
            layers += [
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(channels, width, 5, padding=2, bias=False),
            ]
            channels = width
        layers.append(nn.Sigmoid())
        super().__init__(*layers)


class RandomWalk(nn.Module):
    """One ⊕_t (Fig. 1b): Ψ_t from a similarity feature, then Eq. 5.

    Ψ_t is conv1×1 (with bias) → BN → adaptive max pool to the seed grid, no ReLU, as in
    the published code (PyTorch default init there, kept here). μ_t = σ(−a_t) and
    β_t = σ(−b_t) with a_t = b_t = 0 at init (both 0.5), the code's parameterisation.
    """

    def __init__(self, in_channels: int, psi_channels: int = 64) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Conv2d(in_channels, psi_channels, 1), nn.BatchNorm2d(psi_channels)
        )
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))

    @property
    def mu(self) -> Tensor:
        return torch.sigmoid(-self.a)

    @property
    def beta(self) -> Tensor:
        return torch.sigmoid(-self.b)

    def similarity(self, feature: Tensor, size: tuple[int, int]) -> Tensor:
        """Ψ_t as ``B×N×D`` tokens (row i = node i of the ``size`` grid, row-major)."""
        psi = F.adaptive_max_pool2d(self.embed(feature), size)
        return psi.flatten(2).transpose(1, 2)

    def forward(self, y: Tensor, seed: Tensor, psi: Tensor, diffusion: str = "attention") -> Tensor:
        """Eq. 5, y_{t+1} = β_t[μ_t P_t y_t + (1−μ_t) s] + (1−β_t) y_t, on B×N×K tokens."""
        mu, beta = self.mu, self.beta
        walked = PROPAGATORS[diffusion](psi, y)
        return beta * (mu * walked + (1 - mu) * seed) + (1 - beta) * y


def cascade(
    walks: Sequence[RandomWalk], seed: Tensor, psis: Sequence[Tensor], diffusion: str = "attention"
) -> list[Tensor]:
    """y_0 = s, then one ⊕_t per (walk, Ψ_t) pair (Eq. 5) on ``B×N×K`` tokens; returns
    y_1 .. y_T. The recurrence runs in float32 (y is small, N×K) whatever the autocast
    dtype of Ψ, so the mixing with μ_t, β_t does not round to bf16 walk after walk."""
    seed = _at_least_fp32(seed)
    outputs, y = [], seed
    for walk, psi in zip(walks, psis):
        y = walk(y, seed, psi, diffusion)
        outputs.append(y)
    return outputs


def similarity_backbone_config(
    seed_config: Mapping[str, Any], option: str | Mapping[str, Any] | None
) -> dict[str, Any]:
    """Constructor kwargs of the similarity backbone.

    ``None``: a clone of the seed backbone (same depth and weights source, output stride 8
    as in the published code, whose second ResNet is dilated like the first). A name:
    that timm model with the seed backbone's other settings (no weights file: the seed's
    belongs to another architecture). A mapping: TimmBackbone kwargs over the seed's.
    """
    config = dict(seed_config)
    if option is None:
        return config
    if isinstance(option, str):
        option = {"name": option}
    if not isinstance(option, Mapping):
        raise ValueError(
            f"model.similarity_backbone={option!r} is invalid; allowed: null (clone the "
            "backbone), a timm model name, or a mapping of TimmBackbone arguments"
        )
    option = dict(option)
    if option.get("name", config["name"]) != config["name"] and "weights" not in option:
        config["weights"] = None
    config.update(option)
    return config


# Seed-classifier initialisations (DifNetHead's ``seed_init``).
SEED_INITS = ("published", "normal")


class DifNetHead(SegmentationHead):
    """DifNet head (Fig. 1a) on a Segmentor's backbone, which is the seed branch's.

    Args:
        backbone: the seed backbone (output stride 8 in the paper).
        num_classes: K.
        walks: number of random walks T; which similarity level feeds which walk follows
            :func:`walk_levels` (5: image, layer1..layer4).
        aspp: DeepLab-v2 ASPP seed classifier (``dilations``); ``False`` is the paper's
            "noASPP" row: one 3×3 conv with dilation 12 (DeepLab-v2 LargeFOV).
        dilations: ASPP dilations.
        importance: learn the importance map M (s = M ⊙ x); ``False`` ablates it (s = x).
        similarity_backbone: ``None`` (clone of ``backbone.config``), a timm model name, or
            a mapping of :class:`TimmBackbone` arguments; see
            :func:`similarity_backbone_config`. Its parameters are pretrained ones
            (:meth:`pretrained_parameters`).
        psi_channels: width D of Ψ_t (64 in the paper's code).
        diffusion: ``"attention"`` (P·y by fused attention kernels, O(N) memory) or
            ``"dense"`` (explicit P, O(N²), the published code's way).
        seed_loss: add the score map x as auxiliary logits ``"seed"`` (deep supervision of
            the seed branch). Off by default: the published code supervises only the output.
        seed_init: initialisation of the seed classifier. ``"published"``: what the
            published code's classifier ends up with — it sets N(0, 0.01), but is built
            before the ResNet's init loop, which re-draws every conv weight from
            N(0, 2 / (k·k·out_channels)) (He, fan-out; std 0.103 for K = 21) and leaves
            PyTorch's default bias. ``"normal"``: N(0, 0.01) weights and zero bias, the
            code's stated intent and DeepLab-v2's classifier init.
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        num_classes: int,
        walks: int = 5,
        aspp: bool = True,
        dilations: Sequence[int] = (6, 12, 18, 24),
        importance: bool = True,
        similarity_backbone: str | Mapping[str, Any] | None = None,
        psi_channels: int = 64,
        diffusion: str = "attention",
        seed_loss: bool = False,
        seed_init: str = "published",
    ) -> None:
        super().__init__()
        if seed_init not in SEED_INITS:
            raise ValueError(
                f"model.seed_init={seed_init!r} is invalid; allowed: {', '.join(SEED_INITS)}"
            )
        if diffusion not in PROPAGATORS:
            raise ValueError(
                f"model.diffusion={diffusion!r} is invalid; allowed: {', '.join(PROPAGATORS)}"
            )
        if isinstance(psi_channels, bool) or not isinstance(psi_channels, int) or psi_channels < 1:
            raise ValueError(f"model.psi_channels={psi_channels!r} is invalid; allowed: int >= 1")
        self.diffusion = diffusion
        self.seed_loss = seed_loss
        self.classifier = ASPPClassifier(
            backbone.channels[-1], num_classes, tuple(dilations) if aspp else (LARGEFOV_DILATION,)
        )
        if seed_init == "published":
            for conv in self.classifier.branches:
                conv.reset_parameters()  # PyTorch's default bias, as the code leaves it
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.importance = ImportanceHead(num_classes) if importance else None
        sim_config = similarity_backbone_config(backbone.config, similarity_backbone)
        # levels: the input image, then every stage the similarity backbone returns
        self.levels = walk_levels(walks, 1 + len(sim_config["out_indices"]))
        self.similarity = TimmBackbone(**sim_config)
        level_channels = [sim_config["in_chans"], *self.similarity.channels]
        self.walks = nn.ModuleList(
            RandomWalk(level_channels[lv], psi_channels) for lv in self.levels
        )

    def seed_branch(self, feature: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Score map x, importance map M (``None`` when ablated) and seed s = M ⊙ x."""
        score = self.classifier(feature)
        if self.importance is None:
            return score, None, score
        importance = self.importance(score)
        return score, importance, importance * score

    def similarities(self, image: Tensor, size: tuple[int, int]) -> list[Tensor]:
        """Ψ_t (``B×N×D``) of every walk on the ``size`` grid: walk t reads level
        ``self.levels[t]`` of (image, stage features of the similarity backbone)."""
        levels = [image, *self.similarity(image)]
        return [walk.similarity(levels[lv], size) for walk, lv in zip(self.walks, self.levels)]

    def diffuse(self, seed: Tensor, psis: Sequence[Tensor]) -> list[Tensor]:
        """The cascade (Eq. 5) on ``B×N×K`` seed tokens; returns y_1 .. y_T."""
        return cascade(self.walks, seed, psis, self.diffusion)

    def forward(self, features: list[Tensor], image: Tensor) -> SegmentationOutput:
        score, importance, seed = self.seed_branch(features[-1])
        b, k, h, w = seed.shape
        psis = self.similarities(image, (h, w))
        tokens = self.diffuse(seed.flatten(2).transpose(1, 2), psis)
        maps = [y.transpose(1, 2).reshape(b, k, h, w) for y in tokens]
        extras = {"score": score, "seed": seed}
        if importance is not None:
            extras["importance"] = importance
        extras.update({f"walk_{t}": m for t, m in enumerate(maps, start=1)})
        aux = {"seed": score} if self.seed_loss else {}
        return SegmentationOutput(maps[-1], aux=aux, extras=extras)

    def diagnostics(self) -> dict[str, float]:
        """μ_t and β_t of every walk (the paper's Table 3), 1-based like ⊕_1..⊕_T."""
        stats: dict[str, float] = {}
        for t, walk in enumerate(self.walks, start=1):
            stats[f"mu_{t}"] = walk.mu.item()
            stats[f"beta_{t}"] = walk.beta.item()
        return stats

    def pretrained_parameters(self) -> Iterator[nn.Parameter]:
        """The similarity backbone's (ImageNet-pretrained, backbone learning rate)."""
        return self.similarity.parameters()
