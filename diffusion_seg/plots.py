"""Files and figures made from predictions and metrics: numpy, PIL and matplotlib only.

No Lightning, no Hydra, no torch required (a CPU tensor is accepted wherever an array is):
``predict``, ``eval``, ``visualize`` and the training callbacks all write through here, so a
label PNG, an overlay or a confusion matrix looks the same whichever command made it.

Evaluation reports (:func:`write_eval_reports`), from one dataset-level confusion matrix
(rows = ground truth, columns = prediction, the ``confmat`` state of
:class:`diffusion_seg.metrics.SegmentationMetrics`):

* ``confusion.csv``: the K×K pixel counts, class names as header row and first column;
* ``confusion.png``: the row-normalised matrix (each row sums to 1: where the pixels of a
  class went) with class names, tick labels shrinking with K (readable at 150 classes),
  and the most confused pairs listed beside it;
* ``confused_pairs.md``: the top-N off-diagonal cells (true → predicted, pixels, share of
  the true class);
* ``per_class.csv``: class, IoU and Acc in % (as the metric tables print them), pixels
  (ground-truth pixels), predicted pixels.

Predictions (:func:`save_prediction`), the layout ``predict`` writes: ``<name>.png`` (palette
PNG of class indices, :func:`diffusion_seg.data.base.save_label_png`), ``<name>_overlay.jpg``
(colours over the image) and optionally ``<name>_prob.png`` (8-bit probability of the winning
class).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from diffusion_seg.data.base import save_label_png, voc_colormap

IGNORE_INDEX = 255
# Ground-truth pixels labelled "ignore" are drawn in this colour.
IGNORE_COLOUR = (255, 255, 255)
CONFUSION_FILES = ("confusion.csv", "confusion.png", "confused_pairs.md", "per_class.csv")


# --------------------------------------------------------------------------- colours


def palette_for(num_classes: int, palette: Any = None) -> np.ndarray:
    """``K×3`` uint8 class colours: ``palette`` if given (at least K rows), else VOC's map."""
    if palette is None:
        return voc_colormap(num_classes)
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) < num_classes:
        palette = np.concatenate([palette, voc_colormap(num_classes)[len(palette):]])
    return palette


def colorize(label: Any, palette: Any, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``H×W`` class ids → ``H×W×3`` colours; ``ignore_index`` (and any id past the palette)
    → :data:`IGNORE_COLOUR`."""
    label = np.asarray(label).astype(np.int64)
    palette = np.asarray(palette, dtype=np.uint8)
    table = np.zeros((max(256, len(palette)), 3), dtype=np.uint8)
    table[:] = IGNORE_COLOUR
    table[: len(palette)] = palette
    table[ignore_index] = IGNORE_COLOUR
    return table[np.clip(label, 0, len(table) - 1)]


def overlay(rgb: Any, label: Any, palette: Any, alpha: float = 0.5) -> np.ndarray:
    """Class colours blended over the image: ``(1 - alpha) · image + alpha · colour``;
    ignored pixels keep the image."""
    rgb = np.asarray(rgb, dtype=np.float32)
    label = np.asarray(label)
    colours = colorize(label, palette).astype(np.float32)
    blend = (1 - alpha) * rgb + alpha * colours
    blend[label == IGNORE_INDEX] = rgb[label == IGNORE_INDEX]
    return blend.round().clip(0, 255).astype(np.uint8)


def heatmap(values: Any, cmap: str = "viridis") -> np.ndarray:
    """``H×W`` values → ``H×W×3`` colours of ``cmap``, min..max stretched to the full map."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    t = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return (matplotlib.colormaps[cmap](t)[..., :3] * 255).round().astype(np.uint8)


def side_by_side(*images: Any, gap: int = 2) -> np.ndarray:
    """``H×W×3`` images of one height joined left to right with a white gap."""
    arrays = [np.asarray(i, dtype=np.uint8) for i in images]
    height = max(a.shape[0] for a in arrays)
    parts: list[np.ndarray] = []
    for a in arrays:
        if a.shape[0] < height:
            a = np.pad(a, ((0, height - a.shape[0]), (0, 0), (0, 0)), constant_values=255)
        if parts:
            parts.append(np.full((height, gap, 3), 255, dtype=np.uint8))
        parts.append(a)
    return np.concatenate(parts, axis=1)


def stack_rows(rows: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Images stacked top to bottom (padded to the widest, white)."""
    width = max(r.shape[1] for r in rows)
    parts: list[np.ndarray] = []
    for r in rows:
        if r.shape[1] < width:
            r = np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
        if parts:
            parts.append(np.full((gap, width, 3), 255, dtype=np.uint8))
        parts.append(r)
    return np.concatenate(parts, axis=0)


# --------------------------------------------------------------------------- predictions


def prediction_paths(out_dir: Path, name: str, overlay: bool = True, probability: bool = False) -> list[Path]:
    """The files :func:`save_prediction` writes for sample ``name`` (may contain ``/``)."""
    base = Path(out_dir) / name
    paths = [base.with_name(base.name + ".png")]
    if overlay:
        paths.append(base.with_name(base.name + "_overlay.jpg"))
    if probability:
        paths.append(base.with_name(base.name + "_prob.png"))
    return paths


def save_prediction(
    out_dir: Path,
    name: str,
    label: Any,
    palette: Any,
    rgb: Any | None = None,
    alpha: float = 0.5,
    probability: Any | None = None,
) -> list[Path]:
    """Write the prediction of one image: ``<name>.png`` (palette PNG of class indices),
    ``<name>_overlay.jpg`` when ``rgb`` is given, ``<name>_prob.png`` when ``probability``
    (``H×W`` in 0..1: the winning class's probability) is given. Returns the files."""
    label = np.asarray(label)
    paths = prediction_paths(out_dir, name, rgb is not None, probability is not None)
    save_label_png(paths[0], label.astype(np.uint8), np.asarray(palette, dtype=np.uint8))
    k = 1
    if rgb is not None:
        Image.fromarray(overlay(rgb, label, palette, alpha)).save(paths[k], quality=90)
        k += 1
    if probability is not None:
        prob = (np.asarray(probability, dtype=np.float32).clip(0, 1) * 255).round().astype(np.uint8)
        Image.fromarray(prob, mode="L").save(paths[k])
    return paths


# --------------------------------------------------------------------------- evaluation reports


@dataclass(frozen=True)
class ConfusedPair:
    """``pixels`` of class ``true`` predicted as ``predicted`` (``share`` of ``true``'s pixels)."""

    true: str
    predicted: str
    pixels: int
    share: float


def _confmat(confmat: Any, class_names: Sequence[str]) -> np.ndarray:
    cm = np.asarray(confmat, dtype=np.int64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {k} class names")
    return cm


def row_normalised(confmat: Any) -> np.ndarray:
    """Each row divided by its sum (classes with no ground truth: a row of zeros)."""
    cm = np.asarray(confmat, dtype=np.float64)
    totals = cm.sum(1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def per_class(confmat: Any, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of ``per_class.csv``: IoU and Acc as in :mod:`diffusion_seg.metrics` (NaN where
    undefined), ground-truth and predicted pixel counts."""
    cm = _confmat(confmat, class_names).astype(np.float64)
    inter, label, pred = np.diag(cm), cm.sum(1), cm.sum(0)
    union = label + pred - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / label
    return [
        {"class": n, "IoU": float(i), "Acc": float(a), "pixels": int(p), "predicted": int(q)}
        for n, i, a, p, q in zip(class_names, iou, acc, label, pred)
    ]


def confused_pairs(confmat: Any, class_names: Sequence[str], top: int = 20) -> list[ConfusedPair]:
    """The ``top`` largest off-diagonal cells of the row-normalised matrix (the share of a
    class's pixels that went to another class), ties broken by pixel count; empty cells are
    left out."""
    cm = _confmat(confmat, class_names)
    share = row_normalised(cm)
    np.fill_diagonal(share, 0)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.lexsort((-off.ravel(), -share.ravel()))[:top]
    pairs = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] == 0:
            break
        pairs.append(ConfusedPair(class_names[t], class_names[p], int(off[t, p]), float(share[t, p])))
    return pairs


def _percent(fraction: float) -> str:
    return "nan" if np.isnan(fraction) else f"{100 * fraction:.4f}"


def write_confusion_csv(path: Path, confmat: Any, class_names: Sequence[str]) -> Path:
    cm = _confmat(confmat, class_names)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, cm):
            writer.writerow([name, *row.tolist()])
    return path


def write_per_class_csv(path: Path, confmat: Any, class_names: Sequence[str]) -> Path:
    """IoU and Acc in percent, like every metric table the commands print (the header says so)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "IoU (%)", "Acc (%)", "pixels", "predicted"])
        for row in per_class(confmat, class_names):
            writer.writerow([row["class"], _percent(row["IoU"]), _percent(row["Acc"]), row["pixels"],
                             row["predicted"]])
    return path


def write_confused_pairs(path: Path, confmat: Any, class_names: Sequence[str], top: int = 20) -> Path:
    pairs = confused_pairs(confmat, class_names, top)
    lines = [
        f"# Most confused class pairs (top {top})",
        "",
        "Pixels of the true class predicted as another class, from the dataset-level confusion "
        "matrix (ignored pixels left out), ranked by share = part of the true class's pixels.",
        "",
        "| # | true | predicted | pixels | share |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {i} | {p.true} | {p.predicted} | {p.pixels} | {100 * p.share:.2f}% |"
              for i, p in enumerate(pairs, start=1)]
    if not pairs:
        lines.append("| – | no confusion | | | |")
    path.write_text("\n".join(lines) + "\n")
    return path


def confusion_figure(confmat: Any, class_names: Sequence[str], top: int = 20, title: str = "") -> Figure:
    """The row-normalised confusion matrix with class names and, on the right, the ``top``
    most confused pairs. Tick labels shrink with K (9 pt up to ~40 classes, under 5 pt at 150) while
    the canvas grows with it, so every name stays legible; cells carry their percentage up to
    K = 15."""
    cm = _confmat(confmat, class_names)
    k = len(class_names)
    norm = row_normalised(cm)
    side = float(np.clip(1.5 + 0.1 * k, 4.0, 17))  # inches of the matrix
    tick_pt = float(np.clip(0.6 * side * 72 / max(k, 1), 3, 9))  # ~60% of a cell's height
    fig = Figure(figsize=(side + 4.2, side + 1.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax, table = fig.subplots(1, 2, width_ratios=[side, 3.6])
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(k), labels=class_names, rotation=90, fontsize=tick_pt)
    ax.set_yticks(range(k), labels=class_names, fontsize=tick_pt)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    ax.tick_params(length=1.5 if k > 40 else 3.5, pad=1)
    if k <= 15:
        for t in range(k):
            for p in range(k):
                if cm[t].sum() > 0:
                    v = norm[t, p]
                    ax.text(p, t, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.5 else "black")
    cbar = fig.colorbar(image, ax=ax, shrink=0.6, pad=0.01)
    cbar.ax.tick_params(labelsize=7)
    cbar.set_label("share of the true class", fontsize=8)
    fig.suptitle(title or f"Confusion matrix, row-normalised ({k} classes)", fontsize=11)

    table.axis("off")
    pairs = confused_pairs(cm, class_names, top)
    width = 16
    lines = [f"Top {len(pairs)} confused pairs", "(true → predicted: share)", ""]
    for i, p in enumerate(pairs, start=1):
        lines.append(f"{i:>2}. {p.true[:width]} → {p.predicted[:width]}: {100 * p.share:.1f}%")
    if not pairs:
        lines.append("(none)")
    table.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace",
               fontsize=7, transform=table.transAxes)
    return fig


def write_eval_reports(
    out_dir: str | Path, confmat: Any, class_names: Sequence[str], top: int = 20, title: str = ""
) -> list[Path]:
    """Write :data:`CONFUSION_FILES` into ``out_dir`` (created); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cm = _confmat(confmat, class_names)
    written = [
        write_confusion_csv(out_dir / "confusion.csv", cm, class_names),
        out_dir / "confusion.png",
        write_confused_pairs(out_dir / "confused_pairs.md", cm, class_names, top),
        write_per_class_csv(out_dir / "per_class.csv", cm, class_names),
    ]
    fig = confusion_figure(cm, class_names, top, title)
    fig.savefig(out_dir / "confusion.png", dpi=120 if len(class_names) <= 60 else 150)
    return written


def read_confusion_csv(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``confusion.csv`` back into class names and the K×K counts."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    names = rows[0][1:]
    return names, np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)
