"""The LightningModule: losses, optimisation and metrics around any :class:`Segmentor`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from diffusion_seg.checkpoints import CONFIG_KEY, checkpoint_progress
from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.lightning.progress import crf_progress
from diffusion_seg.lightning.safety import FiniteStepGuard
from diffusion_seg.metrics import ContextMetrics, SegmentationMetrics, format_context, format_table
from diffusion_seg.models.crf import DenseCRF
from diffusion_seg.models.inference import predict, scores_are_logits
from diffusion_seg.models.losses import cross_entropy, segmentation_loss
from diffusion_seg.models.segmentor import Segmentor

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

# Logged with every val/test table: Lightning takes a logged "step" as the step of that log
# call (metrics.csv's step column, TensorBoard's x axis) and ModelCheckpoint fills a file name's
# {epoch}/{step} from them. They label the weights; they are not metrics.
PROGRESS_KEYS = ("epoch", "step")


class SegmentationTask(L.LightningModule):
    """Trains and evaluates a :class:`Segmentor` (config node ``task``, shared by train and
    eval: ``task.aux_weight=0.4``, ``task.inference.mode=slide``, ...).

    Args:
        net: backbone + head.
        class_names: the K class names (metric table, per-class logging).
        optimizer: factory called with parameter groups, e.g. ``partial(SGD, lr=2.5e-4,
            momentum=0.9, weight_decay=5e-4)``; its ``lr`` is the pretrained backbone's.
            ``None`` for evaluation only.
        scheduler: factory called as ``scheduler(optimizer, total_iters=...)`` and stepped
            every iteration (poly decay, power 0.9, in both papers); ``None`` for constant lr.
        new_lr_mult: learning-rate multiplier of the layers the head adds (both papers: 10×).
        aux_weight: weight of each auxiliary loss (PDN's intermediate supervision).
        ignore_index: label value left out of loss and metrics.
        inference: test-time options for val/test (``mode``, ``crop``, ``stride``,
            ``scales``, ``flip``; see :func:`diffusion_seg.models.inference.predict`).
        channels_last: run the network in channels-last memory format (faster convs on GPU).
        eval_aux: also evaluate every auxiliary output (PDN's per-layer classifiers, DifNet's
            seed) on val/test: metrics ``val/aux/<name>/mIoU`` and a table each — PDN Table 2
            reports the module output per number of layers. Single-scale whole-image only.
        nonfinite: what a step whose loss or gradients are not finite does: ``stop`` the run
            with one line naming the step, the loss terms and the learning rates (nothing is
            saved from it), or ``skip`` that update (:class:`~diffusion_seg.lightning.safety.FiniteStepGuard`).
        run_config: the resolved run configuration, stored in every checkpoint so a checkpoint
            alone rebuilds the network (:func:`diffusion_seg.checkpoints.load_segmentor`).

    Every val/test table, checkpoint name and logged val/test row says which weights it
    measured as ``epoch E, step S``: E training epochs run to their end and S optimizer steps
    taken (:meth:`progress`).
    """

    def __init__(
        self,
        net: Segmentor,
        class_names: Sequence[str],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        new_lr_mult: float = 10.0,
        aux_weight: float = 1.0,
        ignore_index: int = 255,
        inference: dict[str, Any] | None = None,
        channels_last: bool = False,
        eval_aux: bool = False,
        nonfinite: str = "stop",
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.new_lr_mult = new_lr_mult
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.inference = dict(inference or {})
        self.channels_last = channels_last
        self.eval_aux = eval_aux
        self.run_config = run_config
        # (epoch, step) of weights loaded from a checkpoint outside fit (test of the best
        # checkpoint, eval sets it from the file): the trainer's counters are not theirs.
        self.trained_at: tuple[int, int] | None = None
        self.step_guard = FiniteStepGuard(nonfinite)
        num_classes = len(self.class_names)
        if num_classes != net.num_classes:
            raise ValueError(f"{num_classes} class names for a {net.num_classes}-class network")
        one_whole_pass = self.inference.get("mode", "whole") == "whole" and scores_are_logits(
            **{**self.inference, "crf": False})
        if eval_aux and not one_whole_pass:
            raise ValueError(
                "task.eval_aux=true evaluates the auxiliary outputs of one whole-image pass; "
                "set task.inference.mode=whole, scales=[1.0], flip=false"
            )
        if self.inference.get("crf"):
            DenseCRF(**self.inference.get("crf_params", {}))  # bad parameters: one line, now
        self.metrics = torch.nn.ModuleDict(
            {stage: SegmentationMetrics(num_classes, ignore_index) for stage in ("val", "test")}
        )
        # Colour accuracy by distance from the cue, for batches that carry the maps it needs
        # (the pathfinder benchmark's): logged only when such batches were seen.
        self.context_metrics = torch.nn.ModuleDict(
            {stage: ContextMetrics(num_classes, ignore_index=ignore_index) for stage in ("val", "test")}
        )
        # Per-output metrics of the auxiliary classifiers, created at the first evaluation
        # batch (their names are the head's): "<stage>/<aux name>".
        self.aux_metrics = torch.nn.ModuleDict()
        # stage → K×K confusion matrix of the last val/test epoch (rows: ground truth).
        self.confmats: dict[str, Tensor] = {}
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def _image(self, batch: dict[str, Any]) -> Tensor:
        image = batch["image"]
        return image.contiguous(memory_format=torch.channels_last) if self.channels_last else image

    def forward(self, image: Tensor) -> Tensor:
        """Main logits at feature resolution."""
        return self.net(image).logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        target = batch["mask"]
        self.step_guard.before_forward(self.net)
        out = self.net(self._image(batch))
        loss, terms = segmentation_loss(out, target, self.aux_weight, self.ignore_index)
        batch_size = target.shape[0]
        for name, term in terms.items():
            self.log(f"train/{name}", term, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.step_guard.record(loss=loss, **terms)
        return loss

    def _logits_fp32(self, image: Tensor) -> Tensor:
        """Main logits in float32 (bf16 autocast leaves the head's output in bf16): the
        upsampling, the softmax of multi-scale / flip averaging and the loss see these."""
        return self.forward(image).float()

    def _evaluate(self, batch: dict[str, Any], stage: str, batch_idx: int = 0) -> dict[str, Tensor]:
        """Update the stage's metrics; returns ``{"pred": B×H×W class ids}`` (what the
        callbacks get as ``outputs``: pictures, prediction files, no second forward pass)."""
        target = batch["mask"]
        image = self._image(batch)
        if self.eval_aux:
            out = self.net(image)
            scores = predict(lambda _: out.logits.float(), image)
            for name, logits in out.aux.items():
                key = f"{stage}/{name}"
                if key not in self.aux_metrics:
                    self.aux_metrics[key] = SegmentationMetrics(
                        len(self.class_names), self.ignore_index
                    ).to(self.device)
                aux_scores = predict(lambda _, lg=logits: lg.float(), image)
                self.aux_metrics[key].update(aux_scores.argmax(1), target)
        else:
            # The CRF is post-processing of the final network (DeepLab-v2 picks its network,
            # then cross-validates the CRF): validation inside fit, which picks the best
            # checkpoint, runs without it; test, validate and eval runs with it.
            crf = bool(self.inference.get("crf")) and self.trainer.state.fn != "fit"
            rgb = self._rgb(batch) if crf else None
            moving_bar = crf_progress(self.trainer, stage, batch_idx) if crf else None
            scores = predict(self._logits_fp32, image, **{**self.inference, "crf": crf}, rgb=rgb,
                             crf_progress=moving_bar)
        crf = bool(self.inference.get("crf")) and not self.eval_aux and self.trainer.state.fn != "fit"
        if scores_are_logits(**{**self.inference, "crf": crf}):
            loss = cross_entropy(scores, target, self.ignore_index)
            self.log(f"{stage}/loss", loss, batch_size=target.shape[0], sync_dist=True)
        pred = scores.argmax(1)
        self.metrics[stage].update(pred, target)
        if all(key in batch for key in ContextMetrics.batch_keys):
            maps = (batch[key] for key in ContextMetrics.batch_keys)
            self.context_metrics[stage].update(pred, target, *maps)
        return {"pred": pred}

    @property
    def preprocessor(self) -> Preprocessor:
        """What made the batches' images: the DataModule's, else the backbone's statistics."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        found = getattr(datamodule, "preprocessor", None)
        return Preprocessor.for_backbone(self.net.backbone) if found is None else found

    def _rgb(self, batch: dict[str, Any]) -> Tensor:
        """The batch's images back in RGB 0..255 (the dense CRF's colour kernel)."""
        return self.preprocessor.denormalise(batch["image"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "test", batch_idx)

    def _report(self, metrics: SegmentationMetrics, prefix: str, title: str) -> dict[str, Tensor]:
        results = metrics.compute()
        metrics.reset()
        self.log(f"{prefix}/mIoU", results["mIoU"], prog_bar=prefix in ("val", "test"))
        self.log(f"{prefix}/mAcc", results["mAcc"])
        self.log(f"{prefix}/aAcc", results["aAcc"])
        for name, iou in zip(self.class_names, results["IoU"]):
            if not torch.isnan(iou):
                self.log(f"{prefix}/IoU/{name}", iou)
        if not self.trainer.sanity_checking:
            progress = self.progress()
            if progress is not None:
                title = f"{title} (epoch {progress[0]}, step {progress[1]})"
            rank_zero_info("\n" + format_table(results, self.class_names, title))
        return results

    def _report_stage(self, stage: str) -> None:
        # The dataset-level confusion matrix (summed over processes) of the epoch just ended,
        # kept for the report files (lightning.pictures.EvalReports, the eval command).
        with self.metrics[stage].sync_context():
            self.confmats[stage] = self.metrics[stage].confmat.detach().cpu().clone()
        progress = self.progress()
        if progress is not None:
            for key, value in zip(PROGRESS_KEYS, progress):
                self.log(key, float(value))
        self._report(self.metrics[stage], stage, f"{stage} metrics")
        context = self.context_metrics[stage]
        if context.update_count:
            results = context.compute()
            context.reset()
            for name, value in results.items():
                self.log(f"{stage}/{name}", value)
            if not self.trainer.sanity_checking:
                title = f"{stage}: colour of the path pixels called path"
                rank_zero_info("\n" + format_context(results, title))
        for key, metrics in self.aux_metrics.items():
            if key.startswith(f"{stage}/"):
                name = key.split("/", 1)[1]
                self._report(metrics, f"{stage}/aux/{name}", f"{stage} metrics of {name}")

    def progress(self) -> tuple[int, int] | None:
        """``(epoch, step)`` of the weights being evaluated: training epochs run to their end
        and optimizer steps taken (``global_step``). In fit, and after it while no checkpoint
        has been loaded, the trainer's; once a checkpoint is loaded, the checkpoint's; ``None``
        for weights of unknown origin. (Lightning's ``current_epoch`` says 0 at the first
        epoch's validation, as it counts an epoch once its validation is over, and stays the
        trainer's when a checkpoint is tested.)"""
        trainer = self.trainer
        if trainer.state.fn != "fit" and (self.trained_at is not None or trainer.global_step == 0):
            return self.trained_at
        loop = trainer.fit_loop
        epochs = loop.epoch_progress.current.processed
        batches = loop.epoch_loop.batch_progress
        if loop.epoch_progress.current.started > epochs and (
            batches.is_last_batch or batches.current.ready == trainer.num_training_batches
        ):
            epochs += 1  # the validation at an epoch's end, which Lightning counts right after it
        return epochs, trainer.global_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.trained_at = checkpoint_progress(checkpoint)

    def on_train_start(self) -> None:
        self.trained_at = None  # training moves the weights on from any checkpoint loaded

    def on_validation_epoch_end(self) -> None:
        self._report_stage("val")

    def on_test_epoch_end(self) -> None:
        self._report_stage("test")

    def on_train_epoch_end(self) -> None:
        for name, value in self.net.head.diagnostics().items():
            self.log(f"diag/{name}", value)

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is None:
            raise RuntimeError("SegmentationTask was built without an optimizer (eval only)")
        base_lr = self.optimizer_factory.keywords["lr"]  # type: ignore[attr-defined]
        optimizer = self.optimizer_factory(self.net.param_groups(base_lr, self.new_lr_mult))
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(
            optimizer, total_iters=int(self.trainer.estimated_stepping_batches)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After backward (and DDP's all-reduce), before clipping and the update.
        self.step_guard.check(self, optimizer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.run_config
