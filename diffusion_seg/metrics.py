"""Dataset-level segmentation metrics from one confusion matrix (mmsegmentation's conventions).

The matrix is a torchmetrics state summed across processes, so numbers are exact under DDP as
long as every sample is seen once (see ``ShardSampler`` in the DataModule).

- aAcc: Σ intersection / Σ label pixels.
- IoU_k = I_k / U_k; a class absent from both ground truth and prediction (U_k = 0) is NaN and
  left out of the mean (mIoU).
- Acc_k = I_k / label_k; NaN where the class has no ground-truth pixel, left out of mAcc.
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
        cm = self.confmat.double()
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


def format_table(results: dict[str, Tensor], class_names: Sequence[str], title: str) -> str:
    """Per-class IoU/Acc and the summary as a plain-text table (NaN classes shown as '-')."""

    def pct(v: Tensor) -> str:
        return "-" if torch.isnan(v) else f"{100 * float(v):6.2f}"

    width = max(12, *(len(n) for n in class_names))
    lines = [title, f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    for name, iou, acc in zip(class_names, results["IoU"], results["Acc"]):
        lines.append(f"{name:<{width}}  {pct(iou)}  {pct(acc)}")
    lines.append("-" * (width + 16))
    lines.append(
        f"{'mIoU':<{width}}  {pct(results['mIoU'])}\n{'mAcc':<{width}}  {pct(results['mAcc'])}\n"
        f"{'aAcc':<{width}}  {pct(results['aAcc'])}"
    )
    return "\n".join(lines)
