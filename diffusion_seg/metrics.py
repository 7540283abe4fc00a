"""Dataset-level segmentation metrics from one confusion matrix (mmsegmentation's conventions).

The matrix is a torchmetrics state summed across processes, so numbers are exact under DDP as
long as every sample is seen once (see ``ShardSampler`` in the DataModule).

- aAcc: Σ intersection / Σ label pixels.
- IoU_k = I_k / U_k; a class absent from both ground truth and prediction (U_k = 0) is NaN and
  left out of the mean (mIoU).
- Acc_k = I_k / label_k; NaN where the class has no ground-truth pixel, left out of mAcc.

:class:`ContextMetrics` is the pathfinder benchmark's measure of context: the colour
accuracy of path pixels, by distance from the cue and on misleading pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


class SegmentationMetrics(Metric):
    """Confusion matrix over non-ignored pixels → aAcc, mAcc, mIoU, per-class IoU/Acc."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds`` and ``target``: integer label maps of the same shape."""
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} != target {tuple(target.shape)}")
        valid = target != self.ignore_index
        t, p = target[valid], preds[valid]
        # Labels are validated by the data pipeline; this guard turns a stray value into an
        # error instead of a silently corrupted matrix.
        if t.numel() and (int(t.max()) >= self.num_classes or int(t.min()) < 0):
            raise ValueError(
                f"target holds label values outside [0, {self.num_classes}) ∪ "
                f"{{{self.ignore_index}}}: {torch.unique(t).tolist()}"
            )
        k = self.num_classes
        self.confmat += torch.bincount(t * k + p, minlength=k * k).view(k, k)

    def compute(self) -> dict[str, Tensor]:
        return confusion_scores(self.confmat)


def confusion_scores(confmat: Tensor) -> dict[str, Tensor]:
    """aAcc, mAcc, mIoU, per-class IoU and Acc of a K×K confusion matrix (rows: truth)."""
    cm = confmat.double()
    intersection = cm.diag()
    label = cm.sum(1)
    union = label + cm.sum(0) - intersection
    iou = intersection / union  # NaN where the class is absent from both
    acc = intersection / label  # NaN where the class has no ground truth
    return {
        "aAcc": intersection.sum() / label.sum().clamp_min(1),
        "mAcc": acc.nanmean(),
        "mIoU": iou.nanmean(),
        "IoU": iou,
        "Acc": acc,
    }


def _pct(v: Tensor) -> str:
    return "-" if torch.isnan(v) else f"{100 * float(v):6.2f}"


def format_table(results: dict[str, Tensor], class_names: Sequence[str], title: str) -> str:
    """Per-class IoU/Acc and the summary as a plain-text table (NaN classes shown as '-')."""
    width = max(12, *(len(n) for n in class_names))
    lines = [title, f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    for name, iou, acc in zip(class_names, results["IoU"], results["Acc"]):
        lines.append(f"{name:<{width}}  {_pct(iou)}  {_pct(acc)}")
    lines.append("-" * (width + 16))
    lines.append(
        f"{'mIoU':<{width}}  {_pct(results['mIoU'])}\n{'mAcc':<{width}}  {_pct(results['mAcc'])}\n"
        f"{'aAcc':<{width}}  {_pct(results['aAcc'])}"
    )
    return "\n".join(lines)


# Bins of the along-path distance from the cue (feature-map cells; the last bin is open):
# "d0-2", "d2-4", "d4-6", "d6+".
DISTANCE_EDGES = (0.0, 2.0, 4.0, 6.0)
# Finer bins inside the open last one, for paths longer than the default 8 cells (the long
# geometry, conf/study/builtin_long_paths.yaml: 24 cells at 128²): "d6-12", "d12-18", "d18+",
# reported beside "d6+" only when a pixel 12+ cells from its cue was seen, so runs on shorter
# paths log exactly the keys they always did.
LONG_EDGES = (12.0, 18.0)
# Path pixels at least this many cells from their cue are "far" (the README's far pixels,
# ``+dataset.ignore_near=4``).
FAR_CELLS = 4.0


def _bin_names(edges: Sequence[float]) -> list[str]:
    return [f"d{a:g}-{b:g}" for a, b in zip(edges, edges[1:])] + [f"d{edges[-1]:g}+"]


class ContextMetrics(Metric):
    """Context, not geometry: the colour accuracy of the labelled path pixels a head calls
    "path" (the confusion restricted to the path classes), overall, by along-path distance
    from the cue and on the *misleading* pixels (whose straight-line nearest cue has another
    class, :meth:`diffusion_seg.data.pathfinder.PathfinderSample.nearest_cue_class`).

    mIoU on the pathfinder benchmark is mostly path edges against output-stride-8 logits
    (issue 20: FCN's errors near the cue are path ↔ background, almost never a wrong colour);
    these numbers leave the edges out. Labels: ``background`` is the one non-path class, every
    other class a path colour; chance on colour is ``1 / (num_classes - 1)``.

    ``compute`` returns, for each group ``""`` (all), ``/d0-2`` … ``/d6+`` (with
    ``/d6-12`` … ``/d18+`` beside them when a path pixel 12+ cells from its cue was seen:
    :data:`LONG_EDGES`), ``/misleading`` and ``/far_misleading`` (misleading and ≥
    :data:`FAR_CELLS` cells from the cue), and ``/beyond_reach`` when a pixel of the
    ``beyond_reach`` map was seen (own cue outside a receptive field: the dataset's
    ``reach_px``; a network of that field is blind to their cue, so it can only guess):

    - ``color_acc<group>``: correct colour / labelled path pixels called path (NaN if none);
    - ``path_recall<group>``: labelled path pixels called path / labelled path pixels
      (the geometry part: how much of the path the head finds at all);
    - ``color_n<group>``: the number of pixels behind ``color_acc`` (to weight or read it).

    and ``grid_mIoU``: the mIoU scored at the feature grid, prediction and label both taken
    at the pixel nearest each cell's centre (``cell`` px per cell from the image's corner,
    the backbone's output stride). Output-stride-8 logits, upsampled bilinearly, cannot draw
    a path's corners and ends within a cell, so pixel mIoU has a ceiling below 100 even for a
    head whose every cell is right (the flood oracle's, ``python -m diffusion_seg.bench
    oracle``); scored per cell, a right head reaches 100. With ``dataset.width=8
    dataset.jitter=0 dataset.round_corners=false`` every cell is wholly one class.
    """

    full_state_update = False
    higher_is_better = True
    # The batch keys (besides the label) that :meth:`update` takes, in order.
    batch_keys = ("cue_distance", "misleading", "beyond_reach")

    def __init__(
        self,
        num_classes: int,
        background: int = 0,
        ignore_index: int = 255,
        edges: Sequence[float] = DISTANCE_EDGES,
        far: float = FAR_CELLS,
        cell: int = 8,
    ) -> None:
        super().__init__()
        if list(edges) != sorted(edges) or far not in edges:
            raise ValueError(f"distance bin edges {list(edges)} must be sorted and hold far={far}")
        self.num_classes = num_classes
        self.background = background
        self.ignore_index = ignore_index
        self.bin_names = _bin_names(edges)
        self.far_bin = list(edges).index(far)
        self.cell = cell
        long_edges = [e for e in LONG_EDGES if e > edges[-1]]
        self.long_names = _bin_names([edges[-1], *long_edges])
        all_edges = [*edges, *long_edges]
        self.register_buffer("edges", torch.tensor(all_edges, dtype=torch.float32), persistent=False)
        # [not misleading / misleading, distance bin, (labelled, called path, right colour)]
        self.add_state(
            "counts", torch.zeros(2, len(all_edges), 3, dtype=torch.long), dist_reduce_fx="sum"
        )
        # the path pixels beyond reach: (labelled, called path, right colour)
        self.add_state("beyond_counts", torch.zeros(3, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "grid_confmat", torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, preds: Tensor, target: Tensor, distance: Tensor, misleading: Tensor,
               beyond_reach: Tensor | None = None) -> None:
        """``preds``, ``target``: class maps; ``distance``: along-path distance from the cue
        in cells (any value off the paths); ``misleading``, ``beyond_reach``: bool maps
        (``None``: no pixel is beyond reach); all the same shape."""
        maps = (preds, target, distance, misleading) + ((beyond_reach,) if beyond_reach is not None else ())
        shapes = {tuple(t.shape) for t in maps}
        if len(shapes) != 1:
            raise ValueError(f"preds, target, distance, misleading and beyond_reach differ in shape: {shapes}")
        centre = self.cell // 2
        cell_label = target[..., centre::self.cell, centre::self.cell]
        cell_pred = preds[..., centre::self.cell, centre::self.cell]
        valid = cell_label != self.ignore_index
        k = self.num_classes
        self.grid_confmat += torch.bincount(
            cell_label[valid] * k + cell_pred[valid], minlength=k * k
        ).view(k, k)
        path = (target != self.ignore_index) & (target != self.background)
        label, pred = target[path], preds[path]
        # bucketize(right=True) - 1: the bin whose [low, high) holds the distance.
        bins = (torch.bucketize(distance[path].float(), self.edges, right=True) - 1).clamp_min(0)
        group = misleading[path].long() * len(self.edges) + bins
        size = 2 * len(self.edges)
        called = pred != self.background
        beyond = beyond_reach[path] if beyond_reach is not None else None
        for column, keep in enumerate((None, called, pred == label)):
            index = group if keep is None else group[keep]
            self.counts[..., column] += torch.bincount(index, minlength=size).view(2, -1)
            if beyond is not None:
                self.beyond_counts[column] += (beyond if keep is None else beyond & keep).sum()

    def compute(self) -> dict[str, Tensor]:
        c = self.counts.double()
        groups = {"": c.sum((0, 1))}
        last = len(self.bin_names) - 1  # the open last bin holds every long one
        groups |= {f"/{name}": c[:, i].sum(0) for i, name in enumerate(self.bin_names[:-1])}
        groups[f"/{self.bin_names[-1]}"] = c[:, last:].sum((0, 1))
        if c[:, last + 1:, 0].sum() > 0:  # a pixel beyond the first long edge: paths > 12 cells
            groups |= {f"/{name}": c[:, last + i].sum(0) for i, name in enumerate(self.long_names)}
        groups |= {"/misleading": c[1].sum(0), "/far_misleading": c[1, self.far_bin:].sum(0)}
        if self.beyond_counts[0] > 0:
            groups["/beyond_reach"] = self.beyond_counts.double()
        results = {"grid_mIoU": confusion_scores(self.grid_confmat)["mIoU"]}
        for suffix, (labelled, called, right) in groups.items():
            results[f"color_acc{suffix}"] = right / called  # NaN (0/0) when none is called path
            results[f"path_recall{suffix}"] = called / labelled
            results[f"color_n{suffix}"] = called
        return results


def format_context(results: dict[str, Tensor], title: str) -> str:
    """The colour accuracies of :class:`ContextMetrics` as a plain-text table (NaN as '-')."""
    lines = [title, f"{'path pixels':<16}  {'colour':>6}  {'found':>6}  {'n':>8}", "-" * 42]
    for key, acc in results.items():
        if key.startswith("color_acc"):
            suffix = key[len("color_acc"):]
            name = suffix.lstrip("/") or "all"
            recall, n = results[f"path_recall{suffix}"], int(results[f"color_n{suffix}"])
            lines.append(f"{name:<16}  {_pct(acc):>6}  {_pct(recall):>6}  {n:>8}")
    lines += ["-" * 42, f"{'mIoU at the feature grid':<26}  {_pct(results['grid_mIoU']):>6}"]
    return "\n".join(lines)
