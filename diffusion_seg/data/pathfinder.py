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
light grey, noise, width (5 px) and length, whatever its class. A *cued* path starts at a
small coloured square, the cue (8 px): red, green or blue, drawn independently per path.
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
pixels: 0.5 % of those 0–2 cells from their cue, 42 % at 4–6 cells, 56 % at 6–8 cells
(20 % / 26 % / 40 % with ``interleave=1``).

The difficulty knob
-------------------
``max_distance`` (cells, default 8): every path is a walk of exactly ``max_distance`` steps
of one cell beyond its cue, drawn smooth (corners rounded, nodes jittered by ``jitter`` px),
so along-path distances from the cue spread uniformly over ``[0, max_distance]`` cells and
no pixel is farther. 2 keeps every pixel next to its cue (within reach of any head); 8 puts
half of the path pixels 4–8 cells away. ``distance`` (per pixel, px, measured along the
cell path) comes with :meth:`PathfinderDataset.sample` so metrics can be binned by it.

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

Measured (tiny ``test_resnet`` backbone, output stride 8, from scratch; 64 px, 512 training
images, 30 epochs of batch 16, SGD 0.01 / new layers ×10, poly; 128 val images; 1 CPU
thread; accuracy of the path pixels 4–8 cells from their cue, two training seeds)::

    head                 max_distance=2  max_distance=8  far-pixel acc  misleading
                         mIoU            mIoU            (chance 33)    far pixels
    DeepLab-v2           66.4            44.1 / 43.2     28.8 / 28.2    25
    FCN                  76.0            50.5 / 50.9     32.2 / 32.6    24
    PDN (24NB, 4×64)     71.5            54.9 / 54.3     44.3 / 42.5    30–32
    DifNet (no M)        -               51.4            43.6           33

Near, the fixed-window FCN is the best head; at 8 cells both propagating heads lead on far
pixels by 11–16 points, and per-distance accuracy decays much more slowly for them
(PDN 85 → 40 % from 1–2 to 6–8 cells, FCN 85 → 25 %). On misleading pixels every head is
at or below chance at this budget: the propagating heads spread the cue's colour around it
rather than along its path; that is what the misleading-pixel accuracy is there to show.

Generation is deterministic: sample ``i`` of split ``s`` with ``sample_seed`` is always the
same image, on any machine, with any number of workers. Pure numpy, ~1.5 ms per sample at the
defaults (1.4 ms at 96 px); nothing is written to disk.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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
MAX_WIDTH = CELL - 1


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
    nodes: np.ndarray, jitter: np.ndarray, origin: float, canvas: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of a curve through the cell centres (+ jitter) on a ``canvas×canvas`` grid
    whose cell (0, 0) starts at pixel ``origin``: flat indices, along-path distance of each
    (px from the first node, that of the nearest point of the centre line, measured along
    the cell path: the end is at exactly ``8·(len(nodes) - 1)`` px) and the start point.
    The canvas must have room for the whole curve (no clipping here)."""
    points = _smooth(nodes * CELL + origin + (CELL - 1) / 2 + jitter)
    seg = np.sqrt((np.diff(points, axis=0) ** 2).sum(1))
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    # Centre line every px (every 0.5 px for width 1: no gaps at corners).
    t = np.arange(0.0, arc[-1], 0.5 if width == 1 else 1.0)
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
        flat, t, start = _trace(nodes, jit, pad + offset, canvas, width)
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
        width: path width in px (1..7).
        jitter: random offset of the path's nodes from the cell centres, px (0..2).
        cue_size: side of the cue square, px (1..12).
        ignore_near: path pixels closer than this to their cue along the path (cells) are
            ignored (255), as the cue squares always are.
        distractor_label: ``background`` (distractors are class 0) or ``ignore`` (255).
        interleave: keep the best of this many layouts for "another path's cue is nearer
            than the own one" (1: plain random layout).
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
        }
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int, override_classes: Sequence[int] | None = None) -> PathfinderSample:
        """The full :class:`PathfinderSample` of ``index`` (with distances and curve ids);
        ``override_classes`` forces the cued curves' classes, all else unchanged."""
        seed = [self.sample_seed, SPLIT_OFFSETS[self.split], index]
        return render(seed, classes=override_classes, **self.options)

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``H×W×3`` uint8 and label ``H×W`` uint8 of sample ``index``."""
        s = self.sample(index)
        return s.image, s.label

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        image, label = self.generate(index)
        return apply_transform(self.transform, image, label, f"{self.split}_{index:05d}")
