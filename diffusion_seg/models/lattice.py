"""Permutohedral lattice filtering in torch (Adams, Baek and Davis, "Fast High-Dimensional
Filtering Using the Permutohedral Lattice", Eurographics 2010), as Krähenbühl and Koltun's
dense CRF uses it (NIPS 2011, Sec. 4). The construction follows their released
``permutohedral.cpp`` (pydensecrf) step by step: the same elevation and scaling, rounding to
the nearest remainder-0 point, ranks, barycentric weights, [1/2, 1, 1/2] blur along each of
the d + 1 lattice directions and slicing constant 1/(1 + 2^−d).

The filter approximates ``out_i = c·Σ_j exp(−|f_i − f_j|²/2)·v_j`` (j = i included) for
``N`` points with ``d``-dimensional features f, in three linear steps:

* **splat** — each point lies in one simplex of the lattice A*_d (scaled so that the blur
  has unit standard deviation in feature units; Adams et al. Sec. 3.1–3.2); its value is
  added to the simplex's d + 1 vertices with its barycentric weights.
* **blur** — along each lattice direction in turn, every vertex adds half of each of its two
  neighbours' values (Sec. 3.3). Only vertices some point splatted to exist; a missing
  neighbour counts as zero.
* **slice** — each point reads its d + 1 vertices back with the same weights.

The scale c is not a constant: mass blurred towards a missing vertex is lost, so on image
features (a 2-D surface in 5-D) c varies from pixel to pixel (measured 0.2–0.8 for the CRF's
appearance features). The CRF therefore only uses the lattice normalised — divided by the
same filter applied to ones — which cancels c where it varies slowly (``crf.py``).

Implementation: the lattice is built once per set of features (one mean-field run); the
vertices are found with ``torch.unique`` on an integer code of their coordinates (the
released code uses a hash table), which also numbers them in code order: blur neighbours
differ by a constant code, so their rows are read in increasing order (on CPU, measured,
as fast as a bandwidth-reducing reverse Cuthill–McKee numbering). Splat,
each blur direction and slice are then fixed sparse matrices (CSR: splat M×N, blur M×M
with ≤ 3 entries per row, slice N×M with d + 1), and one filtering is a few sparse-dense
products: no Python loop over points or vertices, batched (the images of a batch are
disjoint blocks), on any device, differentiable with respect to the values (the matrices
are constants of the features). Work and memory are O(N·d·K) for K value channels.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor


class PermutohedralLattice:
    """The lattice of a batch of feature sets; call it on values to filter them.

    Args:
        features: ``B×N×d`` positions in feature space, already divided by the kernel's
            standard deviations. The filter's matrices take its dtype (float32 or float64)
            and device; the lattice geometry is computed in float64.
    """

    def __init__(self, features: Tensor) -> None:
        if features.dim() != 3 or not features.is_floating_point():
            raise ValueError(
                f"PermutohedralLattice: features must be a float B×N×d tensor, got "
                f"{features.dtype} of shape {tuple(features.shape)}"
            )
        batch, points, dims = features.shape
        self.shape = (batch, points)
        device, step = features.device, dims + 1
        weights, quotients = _simplices(features.double())

        # One integer per vertex: (image, remainder, quotients of the first d coordinates)
        # in mixed radix; ``torch.unique`` numbers the vertices (the released code hashes).
        flat_q = quotients.reshape(-1, dims)
        low, high = flat_q.min(0).values, flat_q.max(0).values
        radix = [batch, step, *(high - low + 1).tolist()]
        if math.prod(radix) >= 2**62:
            raise ValueError(
                "PermutohedralLattice: the features span too many lattice cells to index "
                f"(radix {radix}); divide them by larger standard deviations"
            )
        places = torch.tensor([math.prod(radix[i + 1 :]) for i in range(len(radix))],
                              device=device)

        def encode(image: Tensor, remainder: Tensor, q: Tensor) -> Tensor:
            return image * places[0] + remainder * places[1] + ((q - low) * places[2:]).sum(-1)

        entries = torch.arange(batch * points * step, device=device)
        codes = encode(entries // (points * step), entries % step, flat_q)
        unique, inverse = torch.unique(codes, sorted=True, return_inverse=True)
        vertices = len(unique)

        # Blur neighbours along direction j (permutohedral.cpp): n1 = v − (1, …, 1) +
        # (d + 1)·e_j in R^(d+1), n2 = v + (1, …, 1) − (d + 1)·e_j, so n2(n1(v)) = v. In
        # quotients, n1 has remainder r − 1 and adds e_j (j < d; the last coordinate is
        # implied by Σx = 0), one less everywhere when r wraps from 0 to d: its code is the
        # vertex's plus a constant of (j, wrap). It is missing where a quotient would leave
        # the range the features span or where no point splats to it.
        one_entry = torch.empty(vertices, dtype=torch.long, device=device)
        one_entry[inverse] = entries
        wraps = one_entry % step == 0
        unit = torch.cat([places[2:], places.new_zeros(1)])  # code of e_j, none for j = d
        shift = torch.stack([unit - places[1], unit + dims * places[1] - places[2:].sum()])
        code = unique + shift.T[:, wraps.long()]  # (d+1)×M
        vertex_q = flat_q[one_entry]
        at_high = torch.cat([vertex_q == high, wraps.new_zeros(vertices, 1)], 1).T
        at_low = (vertex_q == low).long()
        low_elsewhere = at_low.sum(1) - torch.cat([at_low, at_low.new_zeros(vertices, 1)], 1).T
        inside = torch.where(wraps, low_elsewhere == 0, ~at_high)
        at = torch.searchsorted(unique, code).clamp_max(vertices - 1)
        found = inside & (unique[at] == code)
        n1 = torch.where(found, at, vertices)
        n2 = torch.full_like(n1, vertices)
        direction, vertex = found.nonzero(as_tuple=True)
        n2[direction, at[direction, vertex]] = vertex

        offsets = inverse.view(batch * points, step)
        weights = weights.reshape(batch * points, step).to(features.dtype)
        self.vertices = vertices
        # Splat (M×N): each vertex's entries in point order (a stable sort by vertex).
        by_vertex = torch.sort(inverse, stable=True).indices
        self.splat = _csr(torch.bincount(inverse, minlength=vertices), by_vertex // step,
                          weights.flatten()[by_vertex], (vertices, batch * points))
        # Blur, two directions per matrix (one product over both: the same entries, half
        # the passes over the M×K values; 20 % faster at 321²).
        blurs = [_blur_matrix(n1[j], n2[j], features.dtype) for j in range(step)]
        self.blur = [blurs[j + 1] @ blurs[j] if j + 1 < step else blurs[j]
                     for j in range(0, step, 2)]
        # Slice (N×M) with the released code's constant 1/(1 + 2^−d).
        offsets, by_column = torch.sort(offsets, dim=1)
        alpha = 1.0 / (1.0 + 2.0**-dims)
        self.slice = _csr(torch.full((batch * points,), step, device=device), offsets.flatten(),
                          alpha * weights.gather(1, by_column).flatten(),
                          (batch * points, vertices))

    def __call__(self, values: Tensor) -> Tensor:
        """``values`` ``B×N×K`` → ``B×N×K`` filtered, in the lattice's dtype (float32 also
        under autocast: sparse products have no low-precision kernels)."""
        batch, points = self.shape
        dtype = self.slice.dtype
        with torch.autocast(values.device.type, enabled=False):
            x = self.splat @ values.reshape(batch * points, -1).to(dtype)
            for matrix in self.blur:
                x = matrix @ x
            return (self.slice @ x).view(batch, points, -1)


def _simplices(features: Tensor) -> tuple[Tensor, Tensor]:
    """For each point of ``B×N×d`` float64 features, the simplex it lies in: the
    ``B×N×(d+1)`` barycentric weights of its vertices and their ``B×N×(d+1)×d`` quotients
    (vertex r has every coordinate ≡ r mod d + 1: its first d coordinates are
    ``r + (d + 1)·quotient``). Adams et al. Sec. 3.1–3.2; permutohedral.cpp, ``init``."""
    *_, dims = features.shape
    device, step = features.device, dims + 1
    # Elevation onto Σx = 0 in R^(d+1) ("E", p. 5), scaled so that the blur has unit
    # standard deviation in feature units (p. 6): orthonormal columns times √(2/3)·(d + 1).
    inv_std = math.sqrt(2.0 / 3.0) * step
    elevate = torch.zeros(dims, step, dtype=torch.float64, device=device)
    for i in range(dims):
        elevate[i, : i + 1] = 1.0
        elevate[i, i + 1] = -(i + 1.0)
        elevate[i] *= inv_std / math.sqrt((i + 1) * (i + 2))
    elevated = features @ elevate

    # The nearest remainder-0 point (every coordinate a multiple of d + 1), ties downwards.
    down = torch.floor(elevated / step) * step
    up = down + step
    rem0 = torch.where(up - elevated < elevated - down, up, down)
    # rank[i]: how many coordinates have a larger residual, ties counted for the earlier
    # index (as permutohedral.cpp's pairwise comparison does); then the point is brought
    # back onto Σx = 0.
    residual = elevated - rem0
    larger = residual[..., None, :] > residual[..., :, None]  # [i, j]: residual j > i
    earlier = torch.ones(step, step, dtype=torch.bool, device=device).tril(-1)  # j < i
    tied = (residual[..., None, :] == residual[..., :, None]) & earlier
    rank = (larger | tied).sum(-1)
    rank = rank + (rem0.sum(-1, keepdim=True) / step).round().long()
    below, above = rank < 0, rank > dims
    rank = rank + step * below - step * above
    rem0 = rem0 + step * below - step * above

    # Barycentric weights (p. 10): vertex d − rank[i] gains, d − rank[i] + 1 loses.
    residual = (elevated - rem0) / step
    bary = torch.zeros(*rank.shape[:-1], step + 1, dtype=torch.float64, device=device)
    bary.scatter_add_(-1, dims - rank, residual)
    bary.scatter_add_(-1, dims - rank + 1, -residual)
    bary[..., 0] += 1.0 + bary[..., step]

    # Vertex r = rem0 + canonical[r][rank], canonical[r][k] = r if k <= d − r else r − (d + 1):
    # its quotient is rem0/(d + 1), less one where rank + r > d.
    r = torch.arange(step, device=device)[:, None]
    base = (rem0[..., :dims] / step).round().long()[..., None, :]
    quotients = base - (rank[..., None, :dims] + r > dims).long()
    return bary[..., :step], quotients


def _csr(counts: Tensor, cols: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR matrix from the entry count of each row and the rows' entries, in order."""
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, size)


def _blur_matrix(n1: Tensor, n2: Tensor, dtype: torch.dtype) -> Tensor:
    """``M×M`` blur along one direction: 1 on the diagonal, 1/2 for each present neighbour
    (``n1``, ``n2``: M ids each, ``M`` where missing, so missing ones sort last)."""
    vertices = len(n1)
    index = torch.arange(vertices, device=n1.device)
    first = torch.minimum(torch.minimum(n1, n2), index)
    last = torch.maximum(torch.maximum(n1, n2), index)
    cols = torch.stack([first, n1 + n2 + index - first - last, last], 1)  # sorted per row
    values = torch.where(cols == index[:, None], 1.0, 0.5).to(dtype)
    keep = cols < vertices
    return _csr(keep.sum(1), cols[keep], values[keep], (vertices, vertices))
