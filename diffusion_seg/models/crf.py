"""Fully connected CRF with Gaussian edge potentials, exact mean-field inference (Krähenbühl and
Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials", NIPS 2011)
— DeepLab-v2's post-processing (Chen et al., TPAMI 2017, Sec. 3.3; 4773 ms per image in PDN's
Table 3).

Model (K&K Eq. 1–3): unary ψ_u(x_i) = −log P(x_i) from the network's softmax, Potts
compatibility μ(l, l') = [l ≠ l'] and two kernels on pixel positions p and RGB colours I::

    k(i, j) = w1·exp(−|p_i − p_j|²/2θα² − |I_i − I_j|²/2θβ²)    appearance (bilateral)
            + w2·exp(−|p_i − p_j|²/2θγ²)                         smoothness

Mean-field update (K&K Algorithm 1; with Potts, the labels' common term cancels in the
normalisation)::

    Q_i(l) ∝ exp(−ψ_u(l) + Σ_m w_m·Q̃_i^m(l)),   Q̃_i^m(l) = Σ_{j≠i} k_m(f_i, f_j)·Q_j(l)

``normalize=False`` is that equation. ``normalize=True`` (default) is what the released code
computes and what DeepLab's parameters were tuned with: K&K's ``PottsPotential`` divides each
pixel's filtered value by the same filter applied to ones (per-pixel normalisation, the j = i
term included, as the lattice filter keeps it), so Q̃_i^m = Σ_j k_m Q_j / Σ_j k_m.

Exact, without an N×N matrix
----------------------------
The filters are computed exactly, not with the permutohedral lattice of the released code:

* appearance kernel — one ``scaled_dot_product_attention`` call per iteration. With features
  f = (p/θα, I/θβ), k_ij = exp(−|f_i − f_j|²/2) = exp(f_i·f_j − |f_i|²/2 − |f_j|²/2).
  Queries q_i = [f_i, 1, |f_i|²/2], keys k_j = [f_j, −|f_j|²/2, 0] plus one dummy key
  [0, 0, 1] whose value is [0…0, 1] (values v_j = [Q_j, 0]); with scale 1 the softmax weight
  of key j relative to the dummy is exactly k_ij, so out_i = [Σ_j k_ij Q_j, 1] / (Σ_j k_ij + 1).
  The flash kernel needs q, k, v of one width: all are zero-padded (zeros change no dot
  product). It never builds the N×N matrix (memory O(N)), but its work is O(N²) per iteration.
* smoothness kernel — a pure position Gaussian, separable: G_H·Q·G_W with the H×H and W×W
  1-D Gaussian matrices (exact, O(N·(H + W)) work).

Features are centred (the mean colour, the image centre) before the dot products: distances
do not change, the float32 rounding of the large |f|² terms shrinks. Everything runs in
float32 (float64 when ``probs`` is float64). Accuracy of the float32 appearance filter against
float64 (colours 0–255 drawn uniformly, the worst case for the |f|² terms): relative error
≤ 5e-4 at θβ = 3, ≤ 1.3e-4 at θβ = 5; in float64 it is exact to rounding.

Cost (CPU, 1 thread, K = 21, batch 1)
-------------------------------------
Process CPU time; memory = peak RSS increase during one iteration, inputs excluded.

=========  ==================================  =====================
size       time, 10 iterations                 memory, one iteration
=========  ==================================  =====================
321×321    185 s (18.5 s per iteration)        —
384×384    —                                   148 MiB
512×512    1170 s (117 s per iteration)        222 MiB
1024×1024  ≈ 5 h (31 min per iteration)        ≈ 0.8 GiB
=========  ==================================  =====================

The 1024² numbers come from partial runs: the time is 1024 × that of the attention for 1024
of its query rows, the memory was read with the attention's arithmetic cut to those rows and
every tensor at full size (that method reads 258 MiB at 512²). Memory is O(N), about 0.9 KB per pixel (q, k, v and the output
padded to 24 columns, plus a few K-channel maps); the time is the attention's O(N²) work —
DeepLab's permutohedral lattice is O(N) and approximate (4773 ms per image in PDN's Table 3).
float64 costs 2–3× the float32 time. Exact inference at full image resolution is therefore a
GPU job or one for small images (e.g. at the logits' resolution).

DeepLab's parameters
--------------------
Defaults: DeepLab-v2's ResNet-101 VOC setting — 10 iterations, bi_w = 4, bi_xy_std = 67,
bi_rgb_std = 3, pos_w = 3, pos_xy_std = 1 (the values in the DeepLab-v2 ResNet-101 port's
VOC config). DeepLab's (v1) DeepLab-CRF-LargeFOV used bi_w = 4, bi_xy_std = 121,
bi_rgb_std = 5, pos_w = 3, pos_xy_std = 3; its CRF script ships bi_xy_std = 49, bi_rgb_std = 5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_params(
    iterations: int,
    bilateral_weight: float,
    bilateral_xy_std: float,
    bilateral_rgb_std: float,
    gaussian_weight: float,
    gaussian_xy_std: float,
) -> None:
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"crf.iterations={iterations} is invalid; allowed: an integer >= 0")
    weights = (("bilateral_weight", bilateral_weight), ("gaussian_weight", gaussian_weight))
    for key, value in weights:
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"crf.{key}={value} is invalid; allowed: a finite number >= 0")
    for key, value in (
        ("bilateral_xy_std", bilateral_xy_std),
        ("bilateral_rgb_std", bilateral_rgb_std),
        ("gaussian_xy_std", gaussian_xy_std),
    ):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"crf.{key}={value} is invalid; allowed: a finite number > 0")


def _check_inputs(probs: Tensor, image: Tensor) -> None:
    if probs.dim() != 4 or not probs.is_floating_point():
        raise ValueError(
            "dense_crf: probs must be a floating-point B×K×H×W tensor of softmax "
            f"probabilities, got {probs.dtype} of shape {tuple(probs.shape)}"
        )
    batch, _, height, width = probs.shape
    if tuple(image.shape) != (batch, 3, height, width):
        raise ValueError(
            f"dense_crf: image must be B×3×H×W RGB in 0..255 matching probs, i.e. "
            f"{(batch, 3, height, width)}, got {tuple(image.shape)}"
        )
    if bool((probs < 0).any()):
        raise ValueError("dense_crf: probs must be non-negative (softmax probabilities)")


def _appearance_features(image: Tensor, xy_std: float, rgb_std: float) -> Tensor:
    """``B×N×5`` centred features (y/θα, x/θα, R/θβ, G/θβ, B/θβ), raster order."""
    batch, _, height, width = image.shape
    ys = (torch.arange(height, dtype=image.dtype, device=image.device) - (height - 1) / 2) / xy_std
    xs = (torch.arange(width, dtype=image.dtype, device=image.device) - (width - 1) / 2) / xy_std
    positions = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(1, -1, 2)
    colours = image.flatten(2).transpose(1, 2)
    colours = (colours - colours.mean(1, keepdim=True)) / rgb_std
    return torch.cat([positions.expand(batch, -1, -1), colours], -1)


class _GaussianFilter:
    """Exact ``Σ_j exp(−|f_i − f_j|²/2)·v_j`` (j = i included) for fixed features f, by one
    attention call with a dummy key (module docstring). Queries and keys are built once."""

    def __init__(self, features: Tensor, value_width: int) -> None:
        batch, _, dims = features.shape
        half_sq = features.square().sum(-1, keepdim=True) / 2
        ones, zeros = torch.ones_like(half_sq), torch.zeros_like(half_sq)
        queries = torch.cat([features, ones, half_sq], -1)
        keys = torch.cat([features, -half_sq, zeros], -1)
        dummy = features.new_zeros(batch, 1, dims + 2)
        dummy[..., -1] = 1.0
        keys = torch.cat([keys, dummy], 1)
        # One width for q, k and v (the CPU flash kernel's condition), a multiple of 8.
        self.width = 8 * math.ceil(max(dims + 2, value_width + 1) / 8)
        self.queries = F.pad(queries, (0, self.width - dims - 2)).unsqueeze(1)
        self.keys = F.pad(keys, (0, self.width - dims - 2)).unsqueeze(1)

    def __call__(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """``values`` B×N×K → (B×N×K filtered values, B×N×1 kernel sums Σ_j k_ij)."""
        batch, _, classes = values.shape
        rows = F.pad(values, (0, self.width - classes))
        dummy = values.new_zeros(batch, 1, self.width)
        dummy[..., classes] = 1.0
        rows = torch.cat([rows, dummy], 1).unsqueeze(1)
        out = F.scaled_dot_product_attention(self.queries, self.keys, rows, scale=1.0)[:, 0]
        inverse = out[..., classes : classes + 1]  # 1 / (Σ_j k_ij + 1)
        return out[..., :classes] / inverse, 1.0 / inverse - 1.0


def _gaussian_matrix(size: int, std: float, like: Tensor) -> Tensor:
    """``size×size`` matrix exp(−(a − b)²/2σ²), one axis of the separable smoothness kernel."""
    coords = torch.arange(size, dtype=like.dtype, device=like.device)
    return torch.exp(-(coords[:, None] - coords[None, :]).square() / (2 * std * std))


def dense_crf(
    probs: Tensor,
    image: Tensor,
    iterations: int = 10,
    bilateral_weight: float = 4.0,
    bilateral_xy_std: float = 67.0,
    bilateral_rgb_std: float = 3.0,
    gaussian_weight: float = 3.0,
    gaussian_xy_std: float = 1.0,
    normalize: bool = True,
) -> Tensor:
    """Mean-field inference of the fully connected CRF (module docstring).

    Args:
        probs: ``B×K×H×W`` softmax probabilities (the unary is −log probs).
        image: ``B×3×H×W`` RGB, 0..255 (uint8 or float), at the resolution of ``probs``.
        iterations: mean-field iterations (DeepLab: 10).
        bilateral_weight, bilateral_xy_std, bilateral_rgb_std: w1, θα, θβ of the appearance
            kernel (DeepLab's bi_w, bi_xy_std, bi_rgb_std).
        gaussian_weight, gaussian_xy_std: w2, θγ of the smoothness kernel (pos_w, pos_xy_std).
        normalize: per-pixel normalised filters as in the released code (default), or the
            paper's unnormalised sums over j ≠ i.

    Returns:
        ``B×K×H×W`` marginals Q, float32 (float64 for float64 ``probs``).
    """
    _check_params(
        iterations,
        bilateral_weight,
        bilateral_xy_std,
        bilateral_rgb_std,
        gaussian_weight,
        gaussian_xy_std,
    )
    _check_inputs(probs, image)
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    _, classes, height, width = probs.shape
    log_p = probs.to(dtype).clamp_min(torch.finfo(dtype).tiny).log()
    appearance = None
    if bilateral_weight > 0:
        features = _appearance_features(image.to(dtype), bilateral_xy_std, bilateral_rgb_std)
        appearance = _GaussianFilter(features, classes)
    g_h = _gaussian_matrix(height, gaussian_xy_std, log_p)
    g_w = _gaussian_matrix(width, gaussian_xy_std, log_p)
    g_sums = g_h.sum(1)[:, None] * g_w.sum(1)[None, :]
    q = torch.softmax(log_p, 1)
    for _ in range(iterations):
        # smoothness: separable position Gaussian, G_H·Q·G_W (j = i included)
        smooth = g_h @ q @ g_w
        smooth = smooth / g_sums if normalize else smooth - q
        message = gaussian_weight * smooth
        if appearance is not None:
            rows = q.flatten(2).transpose(1, 2)  # B×N×K
            sums, totals = appearance(rows)
            sums = sums / totals if normalize else sums - rows
            message = message + bilateral_weight * sums.transpose(1, 2).reshape(q.shape)
        q = torch.softmax(log_p + message, 1)
    return q


@dataclass(frozen=True)
class DenseCRF:
    """Parameters of :func:`dense_crf` (DeepLab-v2 ResNet-101 defaults); call it on
    ``(probs, image)``."""

    iterations: int = 10
    bilateral_weight: float = 4.0
    bilateral_xy_std: float = 67.0
    bilateral_rgb_std: float = 3.0
    gaussian_weight: float = 3.0
    gaussian_xy_std: float = 1.0
    normalize: bool = True

    def __post_init__(self) -> None:
        _check_params(
            self.iterations,
            self.bilateral_weight,
            self.bilateral_xy_std,
            self.bilateral_rgb_std,
            self.gaussian_weight,
            self.gaussian_xy_std,
        )

    def __call__(self, probs: Tensor, image: Tensor) -> Tensor:
        return dense_crf(probs, image, **asdict(self))
