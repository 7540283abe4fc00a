"""Callbacks that turn validation / test into pictures and report files.

* :class:`ValidationPictures` (``callbacks.val_pictures``): the first N validation images,
  their ground truth and the prediction, every epoch, to the active loggers: W&B as
  ``wandb.Image`` with ``prediction`` / ``ground_truth`` masks, TensorBoard as one image grid,
  and, when no logger takes images (CSV only), PNGs in ``<run dir>/pictures/epoch<NNN>/``.
  It reuses the predictions ``validation_step`` returns: no extra forward pass.
* :class:`EvalReports` (``callbacks.eval_reports``): the confusion-matrix files of
  :func:`diffusion_seg.plots.write_eval_reports` for the last validation
  (``<run dir>/eval/val/``, rewritten at most once a minute while fitting, and at its end)
  and the test pass (``<run dir>/eval/test/``).
* :class:`PredictionWriter`: label PNGs + overlays of every evaluated image, as ``predict``
  writes them (``eval save_predictions=true``).

Evaluation batches are padded bottom-right to the output stride (image 0 before
normalisation, label 255) and say each image's size inside the padding (``image_size``, from
:class:`~diffusion_seg.data.preprocess.Preprocessor`), so pictures and files have the image's
own size; the task's preprocessor turns the network input back into RGB.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image
from torch import Tensor

from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.models.inference import resize_logits
from diffusion_seg.plots import (
    IGNORE_INDEX,
    colorize,
    overlay,
    palette_for,
    save_prediction,
    side_by_side,
    stack_rows,
    write_eval_reports,
)

log = logging.getLogger(__name__)


def batch_preprocessor(trainer: L.Trainer, pl_module: L.LightningModule) -> Preprocessor:
    """What made the evaluated batches: the task's (:attr:`SegmentationTask.preprocessor
    <diffusion_seg.lightning.task.SegmentationTask.preprocessor>`, the DataModule's); for
    another module the trainer's DataModule's, else the backbone's statistics."""
    found = getattr(pl_module, "preprocessor", None)
    if found is None:
        found = getattr(getattr(trainer, "datamodule", None), "preprocessor", None)
    return Preprocessor.for_backbone(pl_module.net.backbone) if found is None else found  # type: ignore[attr-defined]


def dataset_palette(trainer: L.Trainer, num_classes: int) -> np.ndarray:
    """The evaluated dataset's class colours, else VOC's colour map."""
    palette = getattr(getattr(trainer, "datamodule", None), "palette", None)
    return palette_for(num_classes, palette)


def image_sizes(batch: dict[str, Any]) -> list[tuple[int, int]]:
    """``(h, w)`` of every image of a batch inside its padding: the sizes the evaluation
    pipeline recorded (``image_size``), else the whole tensor (a batch that was not padded)."""
    images = batch["image"]
    sizes = batch.get("image_size")
    if sizes is None:
        return [tuple(images.shape[-2:])] * len(images)
    return [(int(h), int(w)) for h, w in sizes.tolist()]


def _predictions(outputs: Any) -> Tensor | None:
    if isinstance(outputs, dict) and isinstance(outputs.get("pred"), Tensor):
        return outputs["pred"]
    return None


def evaluated_progress(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[int, int]:
    """``(epoch, step)`` of the weights being evaluated, as the metric tables label them
    (:meth:`~diffusion_seg.lightning.task.SegmentationTask.progress`; the trainer's counters
    for another module)."""
    progress = pl_module.progress() if hasattr(pl_module, "progress") else None
    return progress if progress is not None else (trainer.current_epoch, trainer.global_step)


class ValidationPictures(L.Callback):
    """The first ``num_samples`` validation images with ground truth and prediction, every
    epoch, to every logger that takes images (see the module docstring).

    Args:
        num_samples: N, the first N images of the validation set (rank 0's shard under DDP).
        dirpath: where CSV-only runs write PNGs (default ``<trainer.default_root_dir>/pictures``).
        alpha: overlay opacity of the class colours.
    """

    def __init__(self, num_samples: int = 4, dirpath: str | None = None, alpha: float = 0.5) -> None:
        self.num_samples = int(num_samples)
        self.dirpath = dirpath
        self.alpha = alpha
        self._samples: list[dict[str, Any]] = []
        self.written: list[Path] = []  # PNGs written (CSV-only runs), for inspection

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if (trainer.sanity_checking or not trainer.is_global_zero or dataloader_idx != 0
                or len(self._samples) >= self.num_samples):
            return
        images, masks = batch["image"], batch.get("mask")
        wanted = min(len(images), self.num_samples - len(self._samples))
        pred = _predictions(outputs)
        if pred is None:  # a step that returns nothing: one forward pass of the wanted images
            with torch.no_grad():
                logits = pl_module(images[:wanted])
            pred = resize_logits(logits, images.shape[-2:]).argmax(1)
        preprocessor = batch_preprocessor(trainer, pl_module)
        names = batch.get("name") or [f"{batch_idx}_{i}" for i in range(len(images))]
        for i, (h, w) in zip(range(wanted), image_sizes(batch)):
            mask = masks[i] if masks is not None else None
            self._samples.append({
                "name": str(names[i]),
                "rgb": preprocessor.to_rgb(images[i])[:h, :w],
                "pred": pred[i, :h, :w].cpu().numpy().astype(np.uint8),
                "gt": None if mask is None else mask[:h, :w].cpu().numpy().astype(np.uint8),
            })

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self._samples:
            return
        class_names = list(getattr(pl_module, "class_names", []))
        palette = dataset_palette(trainer, len(class_names) or 256)
        epoch, step = evaluated_progress(trainer, pl_module)
        took_images = False
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, class_names, step)
                took_images = True
            elif isinstance(logger, TensorBoardLogger):
                grid = stack_rows([self._strip(s, palette) for s in self._samples])
                logger.experiment.add_image("val/pictures", grid, global_step=step, dataformats="HWC")
                took_images = True
        if not took_images:
            root = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "pictures"
            out = root / f"epoch{epoch:03d}"
            out.mkdir(parents=True, exist_ok=True)
            for i, sample in enumerate(self._samples):
                path = out / f"{i:02d}_{Path(sample['name']).name}.png"
                Image.fromarray(self._strip(sample, palette)).save(path)
                self.written.append(path)
        self._samples = []

    def _strip(self, sample: dict[str, Any], palette: np.ndarray) -> np.ndarray:
        """image | ground truth | prediction | prediction over the image."""
        parts = [sample["rgb"]]
        if sample["gt"] is not None:
            parts.append(colorize(sample["gt"], palette))
        parts += [colorize(sample["pred"], palette), overlay(sample["rgb"], sample["pred"], palette, self.alpha)]
        return side_by_side(*parts)

    def _log_wandb(self, logger: WandbLogger, class_names: Sequence[str], step: int) -> None:
        labels = {i: name for i, name in enumerate(class_names)}
        gt_labels = {**labels, IGNORE_INDEX: "ignore"}
        masks = []
        for sample in self._samples:
            entry = {"prediction": {"mask_data": sample["pred"], "class_labels": labels}}
            if sample["gt"] is not None:
                entry["ground_truth"] = {"mask_data": sample["gt"], "class_labels": gt_labels}
            masks.append(entry)
        logger.log_image(
            key="val/pictures",
            images=[s["rgb"] for s in self._samples],
            step=step,
            masks=masks,
            caption=[s["name"] for s in self._samples],
        )


class EvalReports(L.Callback):
    """Confusion-matrix files (:func:`diffusion_seg.plots.write_eval_reports`) of the last
    validation in ``<dirpath>/val/`` and of the test pass in ``<dirpath>/test/``; rank 0
    writes, from the matrix summed over processes.

    While fitting, the val files are rewritten at most every ``val_every_s`` seconds (their
    figure costs about 0.13 s, 8 % of a 64² DeepLab-v2 pathfinder epoch) and once more when the fit ends
    or stops on an error, so the files left are always the last validation's.

    Args:
        dirpath: default ``<trainer.default_root_dir>/eval``.
        top: number of most-confused pairs listed.
        val_every_s: least seconds between two val rewrites while fitting; 0 = every validation.
    """

    def __init__(self, dirpath: str | None = None, top: int = 20, val_every_s: float = 60.0) -> None:
        if val_every_s < 0:
            raise ValueError(f"callbacks.eval_reports.val_every_s must be >= 0 seconds, got {val_every_s}")
        self.dirpath = dirpath
        self.top = top
        self.val_every_s = val_every_s
        self._val_written_at = -math.inf
        self._val_pending: str | None = None  # the title of a validation not written yet

    def _write(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule, title: str) -> None:
        confmat = getattr(pl_module, "confmats", {}).get(stage)
        if confmat is None:
            return
        root = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "eval"
        write_eval_reports(root / stage, confmat, pl_module.class_names, self.top,  # type: ignore[arg-type]
                           title=f"Confusion matrix, row-normalised ({title})")

    def _title(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        """``"<stage>, epoch E, step S"``, or None where nothing is to be written."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return None
        epoch, step = evaluated_progress(trainer, pl_module)
        return f"{stage}, epoch {epoch}, step {step}"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        title = self._title("val", trainer, pl_module)
        if title is None:
            return
        fitting = trainer.state.fn == "fit"
        if fitting and time.monotonic() - self._val_written_at < self.val_every_s:
            self._val_pending = title
            return
        self._write("val", trainer, pl_module, title)
        self._val_written_at, self._val_pending = time.monotonic(), None

    def _write_pending_val(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_pending is not None:
            self._write("val", trainer, pl_module, self._val_pending)
            self._val_pending = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_pending_val(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write_pending_val(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        title = self._title("test", trainer, pl_module)
        if title is not None:
            self._write("test", trainer, pl_module, title)


class PredictionWriter(L.Callback):
    """Every evaluated image's prediction as ``predict`` writes it (``<name>.png`` palette
    PNG + ``<name>_overlay.jpg``) under ``dirpath``, at the image's size before padding."""

    def __init__(self, dirpath: str | Path, alpha: float = 0.5, overlay: bool = True) -> None:
        self.dirpath = Path(dirpath)
        self.alpha = alpha
        self.overlay = overlay
        self.count = 0

    def _write(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pred = _predictions(outputs)
        if trainer.sanity_checking or pred is None:
            return
        preprocessor = batch_preprocessor(trainer, pl_module)
        palette = dataset_palette(trainer, pl_module.net.num_classes)
        images = batch["image"]
        names = batch.get("name") or [f"batch{batch_idx:05d}_{i}" for i in range(len(images))]
        for i, (h, w) in enumerate(image_sizes(batch)):
            rgb = preprocessor.to_rgb(images[i])[:h, :w] if self.overlay else None
            save_prediction(self.dirpath, str(names[i]), pred[i, :h, :w].cpu().numpy(), palette,
                            rgb=rgb, alpha=self.alpha)
            self.count += 1

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._write(trainer, pl_module, outputs, batch, batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._write(trainer, pl_module, outputs, batch, batch_idx)
