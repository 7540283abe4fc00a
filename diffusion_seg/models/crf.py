"""Fully connected CRF with Gaussian edge potentials, mean-field inference (Krähenbühl and
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

Normalisation (``normalize``), with K_m the kernel matrix (j = i included) and
D_m = diag(K_m·1) its row sums:

* ``after`` (default) — Q̃^m = D_m⁻¹·K_m·Q: each pixel's filtered value divided by the same
  filter applied to ones. The released code's ``NORMALIZE_AFTER``, which DeepLab's CRF uses
  and its parameters were tuned with.
* ``symmetric`` — Q̃^m = D_m^−½·K_m·D_m^−½·Q: ``NORMALIZE_SYMMETRIC``, the default of the
  released code's Python binding (pydensecrf).
* ``none`` — K&K's equation above, unnormalised, j ≠ i (exact backend only: the lattice's
  unnormalised sums are off by a factor that varies from pixel to pixel, see ``lattice.py``).

``true`` / ``false`` (the values of earlier configs) mean ``after`` / ``none``.

Backends (``backend``; same parameters, same normalisations)
-----------------------------------------------------------
* ``exact`` — the filters computed exactly (below): O(N²) work per iteration, O(N) memory.
* ``lattice`` — the appearance kernel by the permutohedral lattice (Adams et al. 2010, as
  the released code does it; :mod:`diffusion_seg.models.lattice`), O(N·d·K) per iteration,
  in torch: batched, on any device (one thread on CPU: :func:`_one_cpu_thread`), under
  autocast (computed in float32), differentiable with respect to ``probs`` (a CRF-as-RNN
  layer can train through it). The smoothness kernel is the exact separable Gaussian
  truncated at 4θγ (dropped weights < e⁻⁸ of the centre's), where the released code uses a
  second lattice: exact where it is cheap.
* ``pydensecrf2`` — the released C++ code (Krähenbühl's ``densecrf`` through the
  ``pydensecrf2`` package, installed by ``make setup`` where it builds; the ``crf`` extra):
  CPU, one image at a time, float32, colours rounded to uint8, not differentiable.
* ``auto`` — ``lattice`` on CPU; on CUDA whichever of ``exact`` and ``lattice`` runs a call
  faster, measured on the first call of each (classes, ~pixels) size and remembered.

Exact, without an N×N matrix
----------------------------
The exact backend computes the filters exactly, not with the permutohedral lattice:

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

The lattice against the exact backend
-------------------------------------
On natural-looking scenes (:func:`diffusion_seg.bench.crf.scene`: textured regions with
colour gradients and soft edges, DeepLab-like scores from output stride 8; DeepLab's
parameters, 10 iterations, 21 classes; the CRF changes 7–20 % of the labels), labels agree
98.8–99.7 % at 40² and 99.1–99.3 % at 64² (5 scenes each), 98.7–99.5 % at 96² (5),
99.4–99.7 % at 161² (3), 99.77 % at 321² (1); the marginals differ by 0.0013 or less on
average, 0.016 or less at the 99th percentile. pydensecrf2 (the released lattice) on the
same scenes: 98.6–99.7, 98.8–99.4, 98.9–99.5, 99.3–99.6 and 99.77 %, mean agreement within
0.1 % of ours at every size: the same algorithm, equally close (tests/test_crf.py). Time
and memory: README, "Dense CRF" (``python -m diffusion_seg.bench crf``).

Cost of the exact backend (CPU, 1 thread, K = 21, batch 1)
----------------------------------------------------------
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

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_seg.errors import ConfigError
from diffusion_seg.models.lattice import PermutohedralLattice

BACKENDS = ("auto", "exact", "lattice", "pydensecrf2")
NORMALIZATIONS = ("after", "symmetric", "none")
KEY = "task.inference.crf_params"  # where the parameters live in the config
TRUNCATE = 4.0  # the lattice backend's smoothness kernel, in θγ
Progress = Callable[[float], None]


def _normalization(normalize: str | bool) -> str:
    """``normalize`` as one of :data:`NORMALIZATIONS` (``True``/``False``: earlier configs)."""
    if isinstance(normalize, bool):
        return "after" if normalize else "none"
    return normalize


def _check_params(
    iterations: int,
    bilateral_weight: float,
    bilateral_xy_std: float,
    bilateral_rgb_std: float,
    gaussian_weight: float,
    gaussian_xy_std: float,
    normalize: str | bool,
    backend: str,
) -> None:
    if not isinstance(iterations, int) or iterations < 0:
        raise ConfigError(f"{KEY}.iterations={iterations} is invalid; allowed: an integer >= 0")
    weights = (("bilateral_weight", bilateral_weight), ("gaussian_weight", gaussian_weight))
    for key, value in weights:
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{KEY}.{key}={value} is invalid; allowed: a finite number >= 0")
    for key, value in (
        ("bilateral_xy_std", bilateral_xy_std),
        ("bilateral_rgb_std", bilateral_rgb_std),
        ("gaussian_xy_std", gaussian_xy_std),
    ):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{KEY}.{key}={value} is invalid; allowed: a finite number > 0")
    if backend not in BACKENDS:
        raise ConfigError(f"{KEY}.backend={backend!r} is invalid; allowed: {', '.join(BACKENDS)}")
    mode = _normalization(normalize)
    if mode not in NORMALIZATIONS:
        raise ConfigError(
            f"{KEY}.normalize={normalize!r} is invalid; allowed: {', '.join(NORMALIZATIONS)}"
        )
    if mode == "none" and backend != "exact":
        raise ConfigError(
            f"{KEY}.normalize=none needs {KEY}.backend=exact (backend={backend}): the lattice's "
            "unnormalised sums are off by a factor that varies per pixel; use normalize=after"
        )
    if backend == "pydensecrf2" and _pydensecrf() is None:
        raise ConfigError(
            f"{KEY}.backend=pydensecrf2 needs the pydensecrf2 package, which is not installed "
            "(pip install 'diffusion-seg[crf]'; it builds from source); or use backend=lattice"
        )


def _pydensecrf() -> object | None:
    """The ``pydensecrf.densecrf`` module of the ``pydensecrf2`` package, or ``None``."""
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError:
        return None
    return densecrf


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


# Kernels: ``kernel(q)`` is Σ_j k(i, j)·q_j (j = i included) for B×H×W×K maps (classes
# last: the lattice's rows, a channels-last view for the convolutions, a fast softmax), and
# ``kernel.totals`` the B×H×W×1 row sums Σ_j k(i, j) (None until known).


class _ExactAppearance:
    """The appearance kernel, exact (one attention call; its row sums come with it)."""

    def __init__(self, image: Tensor, xy_std: float, rgb_std: float, classes: int) -> None:
        self.filter = _GaussianFilter(_appearance_features(image, xy_std, rgb_std), classes)
        self.totals: Tensor | None = None

    def __call__(self, q: Tensor) -> Tensor:
        sums, totals = self.filter(q.flatten(1, 2))
        self.totals = totals.view(*q.shape[:3], 1)
        return sums.view(q.shape)


class _LatticeAppearance:
    """The appearance kernel by the permutohedral lattice (built once per image batch)."""

    def __init__(self, image: Tensor, xy_std: float, rgb_std: float) -> None:
        self.lattice = PermutohedralLattice(_appearance_features(image, xy_std, rgb_std))
        self.totals = self(image.new_ones(image.shape[0], *image.shape[2:], 1))

    def __call__(self, q: Tensor) -> Tensor:
        return self.lattice(q.flatten(1, 2)).view(q.shape)


def _gaussian(offsets: Tensor, std: float) -> Tensor:
    """exp(−offset²/2σ²): one axis of the separable smoothness kernel."""
    return torch.exp(-offsets.square() / (2 * std * std))


class _Smoothness:
    """The smoothness kernel, separable: G_H·Q·G_W with the full H×H and W×W Gaussian
    matrices (exact, O(N·(H + W))), or with ``truncate`` their band |a − b| <= ⌈4θγ⌉ as two
    depthwise convolutions (O(N·θγ))."""

    def __init__(self, like: Tensor, std: float, truncate: bool) -> None:
        _, height, width, _ = like.shape
        self.truncate = truncate
        self.radii = [min(math.ceil(TRUNCATE * std), size - 1) for size in (height, width)]
        if truncate:
            self.g_h, self.g_w = (
                _gaussian(torch.arange(-r, r + 1, dtype=like.dtype, device=like.device), std)
                for r in self.radii
            )
        else:
            self.g_h, self.g_w = (
                _gaussian(coords[:, None] - coords[None, :], std)
                for coords in (torch.arange(size, dtype=like.dtype, device=like.device)
                               for size in (height, width))
            )
        self.totals = self(like.new_ones(1, height, width, 1))

    def __call__(self, q: Tensor) -> Tensor:
        maps = q.permute(0, 3, 1, 2)  # B×K×H×W, channels-last in memory
        if not self.truncate:
            return (self.g_h @ maps @ self.g_w).permute(0, 2, 3, 1)
        classes = maps.shape[1]
        r_h, r_w = self.radii
        out = F.conv2d(maps, self.g_h.view(1, 1, -1, 1).expand(classes, 1, -1, 1),
                       padding=(r_h, 0), groups=classes)
        out = F.conv2d(out, self.g_w.view(1, 1, 1, -1).expand(classes, 1, 1, -1),
                       padding=(0, r_w), groups=classes)
        return out.permute(0, 2, 3, 1)


def _message(kernel: _ExactAppearance | _LatticeAppearance | _Smoothness, q: Tensor,
             mode: str) -> Tensor:
    """Q̃ of one kernel under the normalisation ``mode`` (module docstring)."""
    if mode == "symmetric":
        if kernel.totals is None:  # the exact appearance kernel learns them by filtering
            kernel(q[..., :1].new_ones(q[..., :1].shape))
        scale = kernel.totals.rsqrt()
        return kernel(q * scale).mul_(scale)
    # In place on the filter's fresh output (no backward needs it): 513² × 150 classes fits
    # in 2 GB with fewer B×H×W×K temporaries.
    return kernel(q).div_(kernel.totals) if mode == "after" else kernel(q).sub_(q)


def _mean_field(log_p: Tensor, image: Tensor, crf: DenseCRF, mode: str, lattice: bool,
                progress: Progress | None) -> Tensor:
    """K&K Algorithm 1 with the exact filters or the lattice (module docstring)."""
    log_p = log_p.permute(0, 2, 3, 1).contiguous()  # B×H×W×K
    kernels = []
    if crf.gaussian_weight > 0:
        kernels.append((crf.gaussian_weight, _Smoothness(log_p, crf.gaussian_xy_std, truncate=lattice)))
    if crf.bilateral_weight > 0:
        appearance = (_LatticeAppearance(image, crf.bilateral_xy_std, crf.bilateral_rgb_std) if lattice
                      else _ExactAppearance(image, crf.bilateral_xy_std, crf.bilateral_rgb_std,
                                            log_p.shape[-1]))
        kernels.append((crf.bilateral_weight, appearance))
    q = torch.softmax(log_p, -1)
    for step in range(crf.iterations):
        logits = log_p.clone()
        for weight, kernel in kernels:
            logits.add_(_message(kernel, q, mode), alpha=weight)
        q = torch.softmax(logits, -1)
        if progress is not None:
            progress((step + 1) / crf.iterations)
    return q.permute(0, 3, 1, 2).contiguous()


def _released_code(log_p: Tensor, image: Tensor, crf: DenseCRF, mode: str,
                   progress: Progress | None) -> Tensor:
    """The same inference by pydensecrf2 (the released C++ code), one image at a time."""
    densecrf = _pydensecrf()
    normalization = {"after": densecrf.NORMALIZE_AFTER,
                     "symmetric": densecrf.NORMALIZE_SYMMETRIC}[mode]
    batch, classes, height, width = log_p.shape
    unaries = (-log_p).float().reshape(batch, classes, -1).cpu().numpy()
    rgb = image.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty((batch, classes, height * width), dtype=np.float32)
    for b in range(batch):
        model = densecrf.DenseCRF2D(width, height, classes)
        model.setUnaryEnergy(np.ascontiguousarray(unaries[b]))
        if crf.gaussian_weight > 0:
            model.addPairwiseGaussian(sxy=crf.gaussian_xy_std, compat=crf.gaussian_weight,
                                      normalization=normalization)
        if crf.bilateral_weight > 0:
            model.addPairwiseBilateral(sxy=crf.bilateral_xy_std, srgb=crf.bilateral_rgb_std,
                                       rgbim=np.ascontiguousarray(rgb[b]), compat=crf.bilateral_weight,
                                       normalization=normalization)
        q, scratch1, scratch2 = model.startInference()
        for step in range(crf.iterations):
            model.stepInference(q, scratch1, scratch2)
            if progress is not None:
                progress((b * crf.iterations + step + 1) / (batch * crf.iterations))
        out[b] = np.asarray(q)
    return torch.from_numpy(out).view(batch, classes, height, width).to(log_p.device)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device | None) -> Iterator[None]:
    """The lattice backend on CPU runs on one thread (the process's count is restored after).
    Most of its time is in MKL's sparse products, which gain nothing from a second thread,
    and its many mid-sized ops wait for every thread: with two threads on 2 cores while
    other processes (or the DataLoader's workers) kept the second core busy, a 161² call
    took 0.4–2.6 s against 0.14–0.21 s on one thread (measured, 12 interleaved rounds)."""
    threads = torch.get_num_threads()
    if device is None or device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# (device, classes, log2 of the pixel count) → the faster backend on that CUDA device.
_FASTER: dict[tuple[str, int, int], str] = {}


def _faster_on_cuda(run: Callable[[bool, bool], Tensor], probs: Tensor) -> Tensor:
    """``auto`` on CUDA: the first call of a size runs both backends, timed (no progress
    reports), and keeps the result of the faster, which later calls of that size use.
    ``run(lattice, report)`` runs one backend."""
    batch, classes, height, width = probs.shape
    key = (str(probs.device), classes, round(math.log2(batch * height * width)))
    if key in _FASTER:
        return run(_FASTER[key] == "lattice", True)
    results, seconds = {}, {}
    for name in ("exact", "lattice"):
        torch.cuda.synchronize(probs.device)
        start = time.perf_counter()
        results[name] = run(name == "lattice", False)
        torch.cuda.synchronize(probs.device)
        seconds[name] = time.perf_counter() - start
    _FASTER[key] = min(seconds, key=seconds.get)
    return results[_FASTER[key]]


def dense_crf(
    probs: Tensor,
    image: Tensor,
    iterations: int = 10,
    bilateral_weight: float = 4.0,
    bilateral_xy_std: float = 67.0,
    bilateral_rgb_std: float = 3.0,
    gaussian_weight: float = 3.0,
    gaussian_xy_std: float = 1.0,
    normalize: str | bool = "after",
    backend: str = "exact",
    progress: Progress | None = None,
) -> Tensor:
    """Mean-field inference of the fully connected CRF (module docstring).

    Args:
        probs: ``B×K×H×W`` softmax probabilities (the unary is −log probs).
        image: ``B×3×H×W`` RGB, 0..255 (uint8 or float), at the resolution of ``probs``.
        iterations: mean-field iterations (DeepLab: 10).
        bilateral_weight, bilateral_xy_std, bilateral_rgb_std: w1, θα, θβ of the appearance
            kernel (DeepLab's bi_w, bi_xy_std, bi_rgb_std).
        gaussian_weight, gaussian_xy_std: w2, θγ of the smoothness kernel (pos_w, pos_xy_std).
        normalize: ``after`` (the released code's per-pixel normalisation, default),
            ``symmetric`` or ``none`` (the paper's unnormalised sums over j ≠ i).
        backend: ``exact``, ``lattice``, ``pydensecrf2`` or ``auto`` (module docstring).
        progress: called with the fraction of the work done after every iteration (a
            progress bar that moves while a batch is in the CRF).

    Returns:
        ``B×K×H×W`` marginals Q, float32 (float64 for float64 ``probs``, except with
        ``pydensecrf2``), computed in that precision also under autocast.
    """
    crf = DenseCRF(iterations, bilateral_weight, bilateral_xy_std, bilateral_rgb_std,
                   gaussian_weight, gaussian_xy_std, normalize, backend)  # checks them
    _check_inputs(probs, image)
    mode = _normalization(normalize)
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    with torch.autocast(probs.device.type, enabled=False):
        log_p = probs.to(dtype).clamp_min(torch.finfo(dtype).tiny).log()
        image = image.to(dtype)
        if backend == "pydensecrf2":
            return _released_code(log_p, image, crf, mode, progress)

        def run(lattice: bool, report: bool) -> Tensor:
            with _one_cpu_thread(probs.device if lattice else None):
                return _mean_field(log_p, image, crf, mode, lattice, progress if report else None)

        if backend == "auto" and probs.device.type == "cuda":
            return _faster_on_cuda(run, probs)
        return run(backend in ("lattice", "auto"), True)


@dataclass(frozen=True)
class DenseCRF:
    """Parameters of :func:`dense_crf` (DeepLab-v2 ResNet-101 defaults); call it on
    ``(probs, image)``. Constructing one checks the parameters (``task.inference.crf_params``
    at start-up)."""

    iterations: int = 10
    bilateral_weight: float = 4.0
    bilateral_xy_std: float = 67.0
    bilateral_rgb_std: float = 3.0
    gaussian_weight: float = 3.0
    gaussian_xy_std: float = 1.0
    normalize: str | bool = "after"
    backend: str = "exact"

    def __post_init__(self) -> None:
        _check_params(*asdict(self).values())

    def __call__(self, probs: Tensor, image: Tensor, progress: Progress | None = None) -> Tensor:
        return dense_crf(probs, image, **asdict(self), progress=progress)
