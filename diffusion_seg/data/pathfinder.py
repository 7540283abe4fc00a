"""Built-in benchmark where context has to travel: cue-coloured paths (Pathfinder-like).

Model: Pathfinder (Linsley et al., "Learning long-range spatial dependencies with horizontal
gated recurrent units", NeurIPS 2018), the image task of Long Range Arena (Tay et al., "Long
Range Arena: A Benchmark for Efficient Transformers", ICLR 2021): whether two dots are joined
by a curve among distractor curves can only be decided by carrying information *along* the
curve; a feed-forward detector of local features cannot do it. Here the same principle is a
dense labelling task whose difficulty is one number, the distance the information must
travel, in cells of the backbone's output-stride-8 feature map.

The task
--------
Each ``size×size`` image (default 64) holds ``num_paths`` paths (default 3) and
``num_distractors`` distractor paths (default 0) on grey noise. Every path has the same
light grey, noise, width and length, whatever its class (the benchmark draws whole cells,
below). A *cued* path starts at a coloured square, the cue (8 px): red, green or blue,
drawn independently per path.
Every pixel of the path has the cue's class::

    0 background   1 red_path   2 green_path   3 blue_path

Distractor paths have no cue and are background (``distractor_label="background"``, so
"no cue at my other end" must travel too) or ignored (``"ignore"``).

Why a local classifier cannot solve far pixels
----------------------------------------------
Layout, jitter and noise come from random streams that never see the classes
(:func:`render` spawns them apart), so changing a path's class changes the pixels of its cue
square and nothing else: the patch around any path pixel without a cue in it is identical,
pixel for pixel, for every class (``tests/test_pathfinder.py`` checks it). The only evidence
for a pixel's class is the cue at the other end of *its own* path. Paths are self-avoiding
walks on the feature grid (1 cell = 8 px) with at least one empty cell between two paths and
between non-consecutive parts of one path, so at 1/8 resolution connectivity is exact:
along-path distance is geodesic distance on the feature grid and information never has to
jump a gap. A head that propagates information (PDN's stacked ConvLSTMs, DifNet's random
walks) can carry the cue's colour to far pixels; a head with a fixed window on the feature
map (DeepLab-v2's ASPP sees the cell itself and cells 6+ away; FCN a 3×3 window) cannot.

Propagating *along* the path is more than spreading around the cue: with ``interleave=k``
(default 4) each image keeps the best of k layouts for "the straight-line nearest cue is
another path's", so far pixels often sit closer to another path's cue than to their own.
:meth:`PathfinderSample.nearest_cue_class` marks the *misleading* pixels, whose nearest cue
has another class: isotropic spread or a big receptive field gets them wrong, only
following the path gets them right. At the defaults they are 30 % of the labelled path
pixels: 1 % of those 0–2 cells from their cue, 19 % at 2–4, 43 % at 4–6, 55 % at 6–8 cells
(21 % overall, 1 / 11 / 29 / 42 % with ``interleave=1``).

The difficulty knob
-------------------
``max_distance`` (cells, default 8): every path is a walk of exactly ``max_distance`` steps
of one cell beyond its cue, so along-path distances from the cue spread uniformly over
``[0, max_distance]`` cells and no pixel is farther. 2 keeps every pixel next to its cue
(within reach of any head); 8 puts half of the path pixels 4–8 cells away. ``distance``
(per pixel, px, measured along the cell path) comes with :meth:`PathfinderDataset.sample`.

Geometry: whole cells
---------------------
The benchmark's config (``conf/dataset/pathfinder.yaml``: ``width=8``, ``jitter=0``,
``round_corners=false``, :data:`WHOLE_CELLS`) makes a path exactly the feature cells of
its walk, so every cell is wholly one class and output-stride-8 logits can draw the labels.
The arguments' defaults stay the thin smooth curves of the first version (``width=5``,
``jitter=1``, rounded corners), so configs stored in earlier checkpoints render as they
trained. Thin curves put most of mIoU on path edges finer than a cell: near the cue
(``max_distance=2``) an FCN head reached 74.9 mIoU with 99.4 % of the path pixels it found
given the right colour; with whole cells the same run reaches 91.4 (table below).
Bilinear upsampling of cell logits still rounds the corners and ends
of a path, so pixel mIoU stays below 100 even for a head with every cell right: the flood
oracle (:func:`flood_oracle`) scores 92.5 near and 94.6 far. The metrics of
:class:`diffusion_seg.metrics.ContextMetrics` therefore come with every evaluation:

Context metrics
---------------
``__getitem__`` adds two maps, transformed with the label (flips move them):
``cue_distance`` (along-path distance from the cue, cells; -1 off the paths) and
``misleading``. From them the task logs, at val and test, the colour accuracy of the path
pixels a head calls path, overall, by distance from the cue (0–2, 2–4, 4–6, 6+ cells) and
on the misleading pixels (all, and ≥ 4 cells from the cue), with their counts and the path
recall, plus ``grid_mIoU``, the mIoU scored once per feature cell (every cell right = 100).
Chance on colour is 33 %; on misleading pixels "the colour of the nearest cue" scores 0.

Labels and the ignore zone
--------------------------
The cue squares are always 255 (ignore): the one place where the class is visible locally.
Path pixels closer than ``ignore_near`` cells to their cue along the path are 255 too
(default 0: they are what teaches the network what the cue means). ``ignore_near`` changes
labels only, never images: evaluating a model trained with 0 on the same split with
``ignore_near=4`` gives the mIoU of the far pixels alone.

Clutter
-------
``num_paths`` (cued paths per image), ``num_distractors`` (uncued paths, same look and
length), ``crossings`` (``False``: paths never touch; ``True``: paths are laid out
independently and may cross, touch or run alongside, shared pixels are ignored and
propagation can leak from one path into another, the harder Pathfinder-like setting),
``interleave`` (see above; 1 = plain random layout), ``noise`` (std of the Gaussian pixel
noise on everything, grey levels), ``width`` and ``jitter``. All paths of an image must fit
on the ``size/8``-cell grid: at 64 px, 3 paths of 8 cells fit; more clutter or longer paths
need 96–128 px (a layout that does not fit raises ``ValueError`` naming the options).

Measured (issue 20; whole cells; tiny ``test_resnet`` backbone, output stride 8, from
scratch; 512 training images of 64², batch 16, SGD 0.01 / new layers ×10, poly; best
checkpoint by val mIoU, test split of 128 images; one seed). Near (``max_distance=2``),
20 epochs, pixel / grid mIoU and colour accuracy of the path pixels::

    flood oracle      92.5 / 100   100        PDN (24NB, 4×64)  85.9 / 91.6  96.5
    FCN               91.4 / 99.9  100        DeepLab-v2        79.3 / 86.1  96.2
    LG-LSTM           89.7 / 96.9  98.4

Far (``max_distance=8``), colour accuracy by cells from the cue and on far misleading
pixels (chance 33), with the grid mIoU::

    head              epochs  0–2   2–4   4–6   6+    far misleading  grid mIoU
    flood oracle      -       100   100   100   100   100             100
    FCN               20      99    84    55    42    36              62.7
    FCN               60      100   95    83    69    67              80.7
    FCN               120     100   96    92    79    81              87.4
    DeepLab-v2        20      96    69    52    50    42              58.3
    DeepLab-v2        60      99    94    82    70    67              78.1
    PDN (24NB, 4×64)  20      98    79    58    49    40              63.9
    PDN (24NB, 4×64)  60      100   100   99    93    94              96.3
    PDN (8NB, 8×64)   20      63    45    41    41    36              47.4
    LG-LSTM           20      99    85    66    60    51              71.4
    LG-LSTM           60      100   100   98    92    94              95.9
    DifNet (seed)     20      98    87    78    74    67              77.0
    DifNet (seed)     60      100   97    93    89    88              90.2

Far from the cue every head needs more than the 20 epochs near pixels need. PDN and
LG-LSTM follow their own path at 60 epochs (flat from about epoch 40: 94 % on far
misleading pixels, where "the nearest cue's colour" scores 0; DifNet 88); the
fixed-window heads stay at 67 % at 60 epochs and FCN levels off near 80 % at 120: the dilated backbone itself
carries some context along the paths. Eight 8NB PDN layers at the shared learning rate
destabilise after 2 epochs and stay low. The texture-pretrained start
(``backbone=tiny_textures``) did not help at 20 epochs (far misleading: FCN 35, PDN 39,
LG-LSTM 39), and DifNet's published defaults collapse to background from it too.

Generation is deterministic: sample ``i`` of split ``s`` with ``sample_seed`` is always the
same image, on any machine, with any number of workers. Pure numpy, ~2 ms per sample at the
defaults on an idle core; nothing is written to disk. ``cache=True`` keeps the rendered
samples in memory, so later epochs only flip them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from torch.utils.data import Dataset

from diffusion_seg.data.base import Transform, apply_transform

CLASS_NAMES = ("background", "red_path", "green_path", "blue_path")
NUM_CUE_CLASSES = len(CLASS_NAMES) - 1
PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 60], [60, 90, 230]], dtype=np.uint8)
# Cue colour of class k is CUE_COLOURS[k - 1].
CUE_COLOURS = np.array([[220, 30, 30], [30, 200, 30], [40, 60, 230]], dtype=np.float32)
BACKGROUND_LEVEL = 70.0
CURVE_LEVEL = 190.0
CELL = 8  # px per feature-map cell (backbone output stride 8)
IGNORE = 255
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}
DISTRACTOR_LABELS = ("background", "ignore")
# Preference for going straight over turning, at each step of a walk.
PERSISTENCE = 2.0
MAX_LAYOUT_TRIES = 200
_STEPS = ((0, 1), (1, 0), (0, -1), (-1, 0))
# Up to a whole cell: at width 8 with jitter 0 and square corners a path is exactly its cells.
MAX_WIDTH = CELL
# A feature cell holds a curve, for the flood oracle, when at least this fraction of its
# pixels is curve: a path's own cells are mostly covered, while the corner of a wide path may
# clip a neighbouring cell by a pixel or two (not a connection).
ORACLE_CELL_FILL = 0.25
# The benchmark's geometry (conf/dataset/pathfinder.yaml): every path exactly its cells.
WHOLE_CELLS = {"width": CELL, "jitter": 0.0, "round_corners": False}


@dataclass
class PathfinderSample:
    """One rendered sample.

    Attributes:
        image: ``H×W×3`` uint8.
        label: ``H×W`` uint8: 0 background, 1..3 the curve class, 255 ignore.
        distance: ``H×W`` float32, along-path distance in px from the curve's start (the
            cue centre for a cued curve) for every curve pixel; -1 elsewhere.
        path_id: ``H×W`` int16: 0 background, ``1..num_paths`` the cued curves,
            ``num_paths+1..`` the distractors (the last curve drawn where curves overlap).
        cue: ``H×W`` bool, the cue squares.
        classes: the class (1..3) of each cued curve.
        nodes: the feature-grid cells ``(row, col)`` of every curve, cued curves first.
        cue_centres: ``num_paths×2`` float, the centre ``(y, x)`` (px) of each cue.
    """

    image: np.ndarray
    label: np.ndarray
    distance: np.ndarray
    path_id: np.ndarray
    cue: np.ndarray
    classes: np.ndarray
    nodes: list[np.ndarray]
    cue_centres: np.ndarray

    def nearest_cue_class(self) -> np.ndarray:
        """``H×W`` uint8: the class of the cue nearest to each pixel in straight line.

        Labelled path pixels where this differs from the label are the *misleading* ones:
        there, "spread the colour of the nearby cue" (isotropic diffusion, or a big
        receptive field) gives the wrong class and only following the path gives the right
        one. Accuracy on them is the strict measure of propagation *along* the object."""
        size = self.label.shape[0]
        yy, xx = np.mgrid[0:size, 0:size]
        c = self.cue_centres
        d = (yy[..., None] - c[:, 0]) ** 2 + (xx[..., None] - c[:, 1]) ** 2
        return self.classes[d.argmin(-1)].astype(np.uint8)

    def own_cue_offset(self, cue_size: int) -> np.ndarray:
        """``H×W`` float: for every pixel of a cued curve, the Chebyshev distance in px to the
        nearest pixel of its own cue square (drawn as :func:`render` draws it); -1 elsewhere.
        A network whose output at a pixel reads the input within ``r`` px of it (its
        receptive field, square) cannot see the cue of a pixel whose offset exceeds ``r``."""
        size = self.label.shape[0]
        rows, cols = np.arange(size)[:, None], np.arange(size)[None, :]
        offset = np.full((size, size), -1.0, dtype=np.float32)
        for k, (y, x) in enumerate(self.cue_centres):
            y0, x0 = round(y - cue_size / 2 + 0.5), round(x - cue_size / 2 + 0.5)
            dy = np.maximum(np.maximum(y0 - rows, rows - (y0 + cue_size - 1)), 0)
            dx = np.maximum(np.maximum(x0 - cols, cols - (x0 + cue_size - 1)), 0)
            own = self.path_id == k + 1
            offset[own] = np.maximum(dy, dx)[own]
        return offset


@functools.lru_cache(maxsize=16)
def _grid_tables(grid: int) -> tuple[list[list[int]], list[list[int]]]:
    """For cell ids ``y·grid + x``: the neighbour in each of the 4 directions of ``_STEPS``
    (-1 off the grid) and the 8-neighbourhood (the cell included)."""
    moves, halo = [], []
    for y in range(grid):
        for x in range(grid):
            moves.append(
                [
                    (y + dy) * grid + x + dx if 0 <= y + dy < grid and 0 <= x + dx < grid else -1
                    for dy, dx in _STEPS
                ]
            )
            halo.append(
                [
                    (y + dy) * grid + x + dx
                    for dy in (-1, 0, 1)
                    for dx in (-1, 0, 1)
                    if 0 <= y + dy < grid and 0 <= x + dx < grid
                ]
            )
    return moves, halo


def _walk(
    rng: np.random.Generator,
    steps: int,
    blocked: bytearray,
    grid: int,
    tries: int = 20,
) -> list[int] | None:
    """A self-avoiding walk of ``steps`` unit steps on the ``grid×grid`` cell grid (cell ids
    ``y·grid + x``) avoiding the cells flagged in ``blocked``; no node is 8-adjacent to an
    earlier node of the walk but its two predecessors (so the walk never touches itself at
    cell resolution). ``None`` if no try succeeds."""
    moves, halo = _grid_tables(grid)
    free = [c for c in range(grid * grid) if not blocked[c]]
    if not free:
        return None
    for _ in range(tries):
        start, direction = int(rng.integers(len(free))), int(rng.integers(4))
        draws = rng.random(steps).tolist()
        path = [free[start]]
        own = bytearray(grid * grid)  # 8-neighbourhoods of path[:-2]
        for step in range(steps):
            if len(path) >= 3:
                for c in halo[path[-3]]:
                    own[c] = 1
            options, weights = [], []
            for turn in (0, 1, 3):  # straight, left, right (no U-turn)
                d = (direction + turn) % 4
                cell = moves[path[-1]][d]
                if cell < 0 or blocked[cell] or own[cell]:
                    continue
                options.append((d, cell))
                weights.append(PERSISTENCE if turn == 0 else 1.0)
            if not options:
                break
            pick = draws[step] * sum(weights)
            k = 0
            while k < len(options) - 1 and pick >= weights[k]:
                pick -= weights[k]
                k += 1
            direction, cell = options[k]
            path.append(cell)
        if len(path) == steps + 1:
            return path
    return None


def layout(
    rng: np.random.Generator,
    grid: int,
    curves: int,
    steps: int,
    crossings: bool = False,
) -> list[np.ndarray]:
    """Cell paths (``(steps+1)×2`` arrays of ``(row, col)``) of ``curves`` walks of
    ``steps`` steps on a ``grid×grid`` cell grid.

    Without crossings each walk avoids the 8-neighbourhood of every earlier one (at least one
    empty cell between two curves). Raises ``ValueError`` if the curves do not fit."""
    _, halo = _grid_tables(grid)
    for _ in range(MAX_LAYOUT_TRIES):
        blocked = bytearray(grid * grid)
        paths = []
        for _ in range(curves):
            path = _walk(rng, steps, blocked, grid)
            if path is None:
                break
            paths.append(path)
            if not crossings:
                for cell in path:
                    for c in halo[cell]:
                        blocked[c] = 1
        if len(paths) == curves:
            return [np.stack(np.divmod(np.array(p), grid), axis=1) for p in paths]
    raise ValueError(
        f"cannot lay out {curves} curves of {steps} cells on a {grid}×{grid} cell grid "
        f"({grid * CELL} px); lower dataset.max_distance, dataset.num_paths or "
        "dataset.num_distractors, or raise dataset.size"
    )


def proximity_conflict(cued: Sequence[np.ndarray]) -> float:
    """Fraction of the nodes of the cued paths (cue excluded) whose nearest cue in straight
    line is another path's: how often "take the colour of the nearest cue" is misled."""
    starts = np.stack([p[0] for p in cued]).astype(np.float64)
    nodes = np.concatenate([p[1:] for p in cued]).astype(np.float64)
    owner = np.repeat(np.arange(len(cued)), [len(p) - 1 for p in cued])
    d = ((nodes[:, None, :] - starts[None]) ** 2).sum(-1)
    d[np.arange(len(nodes)), owner] -= 1e-6  # ties go to the own cue
    return float((d.argmin(1) != owner).mean())


def _smooth(points: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Chaikin corner cutting, endpoints kept."""
    for _ in range(iterations):
        a, b = points[:-1], points[1:]
        cut = np.empty((2 * len(a), 2))
        cut[0::2] = 0.75 * a + 0.25 * b
        cut[1::2] = 0.25 * a + 0.75 * b
        points = np.concatenate([points[:1], cut, points[-1:]])
    return points


def _trace(
    nodes: np.ndarray,
    jitter: np.ndarray,
    origin: float,
    canvas: int,
    width: int,
    round_corners: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of a curve through the cell centres (+ jitter) on a ``canvas×canvas`` grid
    whose cell (0, 0) starts at pixel ``origin``: flat indices, along-path distance of each
    (px from the first node, that of the nearest point of the centre line, measured along
    the cell path: the end is at exactly ``8·(len(nodes) - 1)`` px) and the start point.
    The canvas must have room for the whole curve (no clipping here). ``round_corners``
    cuts the corners (Chaikin); without it the curve goes straight from cell to cell."""
    points = nodes * CELL + origin + (CELL - 1) / 2 + jitter
    if round_corners:
        points = _smooth(points)
    seg = np.sqrt((np.diff(points, axis=0) ** 2).sum(1))
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    # Centre line every px (every 0.5 px for width 1: no gaps at corners), up to the last
    # node's centre itself (without it a whole-cell path ends a pixel short of its cell).
    t = np.append(np.arange(0.0, arc[-1], 0.5 if width == 1 else 1.0), arc[-1])
    y = np.rint(np.interp(t, arc, points[:, 0]) - (0.5 if width % 2 == 0 else 0.0))
    x = np.rint(np.interp(t, arc, points[:, 1]) - (0.5 if width % 2 == 0 else 0.0))
    # Distances along the cell path: the drawn arc (a little shorter after corner rounding,
    # a little longer with jitter) rescaled to exactly len(nodes) - 1 cells.
    t = t * ((len(nodes) - 1) * CELL / arc[-1])
    # A width×width square stamped along the centre line (pixel r covers [r-0.5, r+0.5)).
    span = np.arange(-((width - 1) // 2), width // 2 + 1)
    stamp = (span[:, None] * canvas + span[None, :]).ravel()
    flat = ((y * canvas + x).astype(np.int64)[:, None] + stamp[None, :]).ravel()
    # np.unique's index is the first occurrence (stable sort): the smallest distance.
    flat, first = np.unique(flat, return_index=True)
    return flat, t[first // len(stamp)].astype(np.float32), points[0]


def check_options(
    size: int,
    max_distance: int,
    num_paths: int,
    num_distractors: int,
    width: int,
    jitter: float,
    cue_size: int,
    distractor_label: str,
    interleave: int,
) -> None:
    """Raise ``ValueError`` naming the first option out of range (``dataset.<name>``)."""
    limits = {
        "size": (size, 32, None),
        "max_distance": (max_distance, 1, None),
        "num_paths": (num_paths, 1, None),
        "num_distractors": (num_distractors, 0, None),
        "width": (width, 1, MAX_WIDTH),
        # Up to a quarter cell, so that paths stay about a cell apart.
        "jitter": (jitter, 0, CELL / 4),
        # Up to 1.5 cells, so that a cue never reaches another path.
        "cue_size": (cue_size, 1, CELL * 3 // 2),
        "interleave": (interleave, 1, None),
    }
    for name, (value, low, high) in limits.items():
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"{low}..{high}"
            raise ValueError(f"dataset.{name}={value} is invalid; allowed: {allowed}")
    if distractor_label not in DISTRACTOR_LABELS:
        raise ValueError(
            f"dataset.distractor_label={distractor_label!r} is invalid; allowed: "
            f"{', '.join(DISTRACTOR_LABELS)}"
        )


def render(
    seed: Sequence[int] | int,
    size: int = 64,
    max_distance: int = 8,
    num_paths: int = 3,
    num_distractors: int = 0,
    crossings: bool = False,
    noise: float = 20.0,
    width: int = 5,
    jitter: float = 1.0,
    cue_size: int = 8,
    ignore_near: float = 0.0,
    distractor_label: str = "background",
    interleave: int = 4,
    round_corners: bool = True,
    classes: Sequence[int] | None = None,
) -> PathfinderSample:
    """Render one sample from ``seed`` (anything ``np.random.SeedSequence`` takes).

    ``classes`` (one value in 1..3 per cued curve) forces the curve classes; every other
    random draw (layout, jitter, noise) comes from streams independent of the classes, so
    forcing them changes the cue squares and the labels and nothing else. See the module
    docstring for the other arguments.
    """
    check_options(
        size=size, max_distance=max_distance, num_paths=num_paths,
        num_distractors=num_distractors, width=width, jitter=jitter, cue_size=cue_size,
        distractor_label=distractor_label, interleave=interleave,
    )
    geometry_ss, noise_ss, class_ss = np.random.SeedSequence(seed).spawn(3)
    geometry = np.random.default_rng(geometry_ss)
    drawn = np.random.default_rng(class_ss).integers(1, NUM_CUE_CLASSES + 1, size=num_paths)
    if classes is not None:
        forced = np.asarray(classes, dtype=np.int64).reshape(-1)
        if forced.shape != (num_paths,) or not ((forced >= 1) & (forced <= 3)).all():
            raise ValueError(f"classes={list(forced)} must be {num_paths} values in 1..3")
        drawn = forced
    grid = size // CELL
    offset = (size - grid * CELL) / 2
    curves = num_paths + num_distractors
    paths, conflict = [], -1.0
    for _ in range(interleave):
        candidate = layout(geometry, grid, curves, max_distance, crossings)
        score = proximity_conflict(candidate[:num_paths]) if interleave > 1 else 0.0
        if score > conflict:
            paths, conflict = candidate, score
    jitters = [geometry.uniform(-jitter, jitter, size=(len(p), 2)) for p in paths]

    # Draw on a canvas padded by `pad` px on each side (curves may poke out by the jitter and
    # half the width), then crop.
    pad = CELL + int(np.ceil(jitter))
    canvas = size + 2 * pad
    inner = (slice(pad, pad + size), slice(pad, pad + size))
    pixels = canvas * canvas
    grey = np.full(pixels, BACKGROUND_LEVEL, dtype=np.float32)
    label = np.zeros(pixels, dtype=np.uint8)
    distance = np.full(pixels, -1.0, dtype=np.float32)
    path_id = np.zeros(pixels, dtype=np.int16)
    covered = np.zeros(pixels, dtype=np.int8)
    starts = []
    for k, (nodes, jit) in enumerate(zip(paths, jitters)):
        flat, t, start = _trace(nodes, jit, pad + offset, canvas, width, round_corners)
        starts.append(start)
        covered[flat] += 1
        grey[flat] = CURVE_LEVEL
        distance[flat] = t
        path_id[flat] = k + 1
        if k < num_paths:
            label[flat] = np.where(t < ignore_near * CELL, IGNORE, drawn[k]).astype(np.uint8)
        else:
            label[flat] = 0 if distractor_label == "background" else IGNORE
    label[covered > 1] = IGNORE
    image = np.repeat(grey.reshape(canvas, canvas, 1), 3, axis=2)
    label = label.reshape(canvas, canvas)
    cue = np.zeros((canvas, canvas), dtype=bool)
    half = cue_size / 2
    for k in range(num_paths):
        y, x = starts[k]
        y0, x0 = int(round(y - half + 0.5)), int(round(x - half + 0.5))
        window = (slice(y0, y0 + cue_size), slice(x0, x0 + cue_size))
        image[window] = CUE_COLOURS[drawn[k] - 1]
        label[window] = IGNORE
        cue[window] = True
    noise_field = np.random.default_rng(noise_ss).standard_normal((size, size, 3), dtype=np.float32)
    image = image[inner]
    image += noise * noise_field
    return PathfinderSample(
        image=np.clip(image, 0, 255, out=image).astype(np.uint8),
        label=label[inner].copy(),
        distance=distance.reshape(canvas, canvas)[inner].copy(),
        path_id=path_id.reshape(canvas, canvas)[inner].copy(),
        cue=cue[inner].copy(),
        classes=drawn,
        nodes=paths,
        cue_centres=np.array(starts[:num_paths], dtype=np.float64).reshape(-1, 2) - pad,
    )


def flood_oracle(sample: PathfinderSample) -> np.ndarray:
    """The non-learned reference: each cue's class flooded along its own path on the
    feature grid (1 cell = 8 px from the image's corner, as the backbone's output-stride-8
    map), ``⌈size/8⌉²`` uint8 class ids, 0 where no flood reaches.

    It reads what a propagating head could know at that resolution and nothing more: which
    cells a drawn curve covers (at least :data:`ORACLE_CELL_FILL` of their pixels, cued and
    distractor curves alike) and the cue's colour (the class of ``cue_centres[k]``'s curve).
    A cue's class fills the 4-connected component of covered cells holding its cue; labels
    are never read. Where one component holds several cues (``crossings=True``) the first
    cue drawn wins. Upsampled like a head's logits, it shows whether the far pixels are
    solvable at the benchmark's resolution (``python -m diffusion_seg.bench oracle``)."""
    size = sample.path_id.shape[0]
    grid = -(-size // CELL)
    drawn = np.zeros((grid * CELL, grid * CELL), dtype=bool)
    drawn[:size, :size] = sample.path_id > 0
    covered = drawn.reshape(grid, CELL, grid, CELL).mean((1, 3)) >= ORACLE_CELL_FILL
    components, _ = ndimage.label(covered)  # 4-connectivity
    flooded = np.zeros((grid, grid), dtype=np.uint8)
    for (y, x), cls in reversed(list(zip(sample.cue_centres, sample.classes))):
        component = components[int(y) // CELL, int(x) // CELL]
        if component:
            flooded[components == component] = cls
    return flooded


class PathfinderDataset(Dataset):
    """Cue-coloured paths whose class must be carried along the path (module docstring).

    Args:
        split: ``train``, ``val`` or ``test`` (disjoint random streams).
        length: number of training samples.
        eval_length: number of samples in ``val`` / ``test`` (default: ``length``).
        size: image side in pixels (64–128 keeps CPU training fast).
        sample_seed: base seed of the images; ``(sample_seed, split, index)`` fixes a
            sample (the run's own seed does not change the data).
        max_distance: THE difficulty knob: length of every path beyond its cue, in
            feature-map cells of 8 px.
        num_paths: cued paths per image (class of each uniform in red/green/blue).
        num_distractors: uncued paths per image (same length and look).
        crossings: let paths cross / touch (shared pixels ignored); default keeps one empty
            cell between paths.
        noise: std of the pixel noise (grey levels) on everything.
        width: path width in px (1..8).
        jitter: random offset of the path's nodes from the cell centres, px (0..2).
        cue_size: side of the cue square, px (1..12).
        ignore_near: path pixels closer than this to their cue along the path (cells) are
            ignored (255), as the cue squares always are.
        reach_px: mark the path pixels whose own cue lies more than this many px away
            (Chebyshev, to the nearest cue pixel: :meth:`PathfinderSample.own_cue_offset`)
            as ``beyond_reach`` for :class:`~diffusion_seg.metrics.ContextMetrics`; set it to
            a network's receptive field (FCN on the tiny backbone: 102 px, measured with the
            bilinear upsampling, ``tests/test_pathfinder.py``) and that network cannot see
            their cue. 0: none is marked.
        distractor_label: ``background`` (distractors are class 0) or ``ignore`` (255).
        interleave: keep the best of this many layouts for "another path's cue is nearer
            than the own one" (1: plain random layout).
        round_corners: cut the corners of the paths (``False``: straight from cell to cell;
            with ``width=8`` and ``jitter=0`` a path then covers exactly its cells).
        cache: keep every rendered sample (before the transform) in memory, so later epochs
            only augment: samples are deterministic, and rendering is most of the data
            time (about 36 kB per 64² sample; a DataLoader worker keeps its own cache, so use
            it with ``num_workers=0`` or persistent workers). With ``fresh_samples`` only
            the first epoch's images are kept (the later ones are never seen twice).
        fresh_samples: training split only: train on new images every epoch. Index
            ``e·length + i`` is image i of epoch e (the datamodule's
            :class:`~diffusion_seg.lightning.datamodule.NewSamplesEachEpoch` sampler draws
            them); epoch 0 is the fixed set of ``length`` images, so the two modes differ
            only in whether later epochs repeat it. ``False``: every epoch repeats it, and a
            head can learn those images by heart (issue 20: on 256 images at 128² every head
            coloured 93–100 % of the far misleading training pixels right, 38–60 % of the
            test ones).
        transform: albumentations pipeline.
    """

    class_names = list(CLASS_NAMES)
    num_classes = len(CLASS_NAMES)
    palette = PALETTE

    def __init__(
        self,
        split: str = "train",
        length: int = 768,
        eval_length: int | None = None,
        size: int = 64,
        sample_seed: int = 0,
        max_distance: int = 8,
        num_paths: int = 3,
        num_distractors: int = 0,
        crossings: bool = False,
        noise: float = 20.0,
        width: int = 5,
        jitter: float = 1.0,
        cue_size: int = 8,
        ignore_near: float = 0.0,
        distractor_label: str = "background",
        interleave: int = 4,
        round_corners: bool = True,
        cache: bool = False,
        fresh_samples: bool = False,
        reach_px: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if split not in SPLIT_OFFSETS:
            raise ValueError(
                f"dataset split {split!r} is not one of {sorted(SPLIT_OFFSETS)} for the "
                "pathfinder dataset"
            )
        check_options(
            size=size, max_distance=max_distance, num_paths=num_paths,
            num_distractors=num_distractors, width=width, jitter=jitter, cue_size=cue_size,
            distractor_label=distractor_label, interleave=interleave,
        )
        self.split = split
        self.length = length if split == "train" or eval_length is None else eval_length
        self.fresh_samples = fresh_samples and split == "train"
        if reach_px < 0:
            raise ValueError(f"dataset.reach_px={reach_px} is invalid: a distance in px, >= 0 (0: off)")
        self.reach_px = int(reach_px)
        self.size = size
        self.sample_seed = sample_seed
        self.options: dict[str, Any] = {
            "size": size,
            "max_distance": int(max_distance),
            "num_paths": int(num_paths),
            "num_distractors": int(num_distractors),
            "crossings": bool(crossings),
            "noise": float(noise),
            "width": int(width),
            "jitter": float(jitter),
            "cue_size": int(cue_size),
            "ignore_near": float(ignore_near),
            "distractor_label": distractor_label,
            "interleave": int(interleave),
            "round_corners": bool(round_corners),
        }
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] | None = (
            {} if cache else None
        )

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int, override_classes: Sequence[int] | None = None) -> PathfinderSample:
        """The full :class:`PathfinderSample` of ``index`` (with distances and curve ids);
        ``override_classes`` forces the cued curves' classes, all else unchanged. Index
        ``e·length + i`` (``fresh_samples``) is image i of epoch e."""
        epoch, index = divmod(index, self.length)
        seed = [self.sample_seed, SPLIT_OFFSETS[self.split], index] + ([epoch] if epoch else [])
        return render(seed, classes=override_classes, **self.options)

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``H×W×3`` uint8 and label ``H×W`` uint8 of sample ``index``."""
        s = self.sample(index)
        return s.image, s.label

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``image``, ``mask`` and ``name`` as every dataset gives them, plus what the context
        metrics need (:class:`diffusion_seg.metrics.ContextMetrics`), transformed with the
        label: ``cue_distance`` (float, along-path distance from the cue in feature cells,
        -1 off the paths), ``misleading`` (bool, labelled path pixels whose nearest cue in
        straight line has another class) and ``beyond_reach`` (bool, labelled path pixels
        whose own cue lies beyond ``reach_px``)."""
        if index < 0 or (index >= self.length and not self.fresh_samples):
            raise IndexError(f"index {index} out of range for {self.length} samples")
        cache = self._cache if index < self.length else None  # later epochs' images: once
        arrays = cache.get(index) if cache is not None else None
        if arrays is None:
            arrays = self._arrays(index)
            if cache is not None:
                cache[index] = arrays
        image, label, maps = arrays
        item = apply_transform(self.transform, image, label, f"{self.split}_{index:05d}", maps)
        for key in ("misleading", "beyond_reach"):
            item[key] = item[key].bool()
        return item

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Image, label and the context maps of sample ``index``, before the transform."""
        s = self.sample(index)
        path = (s.label >= 1) & (s.label <= NUM_CUE_CLASSES)
        maps = {
            "cue_distance": np.where(s.distance >= 0, s.distance / CELL, -1.0).astype(np.float32),
            "misleading": (path & (s.nearest_cue_class() != s.label)).astype(np.uint8),
            "beyond_reach": (path & (s.own_cue_offset(self.options["cue_size"]) > self.reach_px)
                             if self.reach_px > 0 else np.zeros_like(path)).astype(np.uint8),
        }
        return s.image, s.label, maps
