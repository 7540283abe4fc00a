"""The LightningModule: losses, optimisation and metrics around any :class:`Segmentor`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from diffusion_seg.lightning.checkpoint import CONFIG_KEY
from diffusion_seg.lightning.safety import FiniteStepGuard
from diffusion_seg.metrics import SegmentationMetrics, format_table
from diffusion_seg.models.inference import predict
from diffusion_seg.models.losses import cross_entropy
from diffusion_seg.models.segmentor import Segmentor

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

# Epoch metrics come from a torchmetrics state that is already summed across processes, so
# Lightning's advice to add sync_dist=True would only average identical numbers.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed.*")


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
            alone rebuilds the network (:func:`diffusion_seg.lightning.checkpoint.load_segmentor`).
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
        self.step_guard = FiniteStepGuard(nonfinite)
        num_classes = len(self.class_names)
        if num_classes != net.num_classes:
            raise ValueError(f"{num_classes} class names for a {net.num_classes}-class network")
        multi_pass = tuple(self.inference.get("scales", (1.0,))) != (1.0,) or self.inference.get(
            "flip", False
        ) or self.inference.get("mode", "whole") != "whole"
        if eval_aux and multi_pass:
            raise ValueError(
                "task.eval_aux=true evaluates the auxiliary outputs of one whole-image pass; "
                "set task.inference.mode=whole, scales=[1.0], flip=false"
            )
        self.metrics = torch.nn.ModuleDict(
            {stage: SegmentationMetrics(num_classes, ignore_index) for stage in ("val", "test")}
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
        # float32 from the logits on (upsampling and loss), also under bf16 autocast.
        loss_main = cross_entropy(out.logits.float(), target, self.ignore_index)
        loss = loss_main
        terms = {"loss_main": loss_main}
        batch_size = target.shape[0]
        for name, logits in out.aux.items():
            loss_aux = cross_entropy(logits.float(), target, self.ignore_index)
            loss = loss + self.aux_weight * loss_aux
            terms[f"loss_aux/{name}"] = loss_aux
            self.log(f"train/loss_aux/{name}", loss_aux, batch_size=batch_size)
        self.log("train/loss_main", loss_main, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.step_guard.record(loss=loss, **terms)
        return loss

    def _logits_fp32(self, image: Tensor) -> Tensor:
        """Main logits in float32 (bf16 autocast leaves the head's output in bf16): the
        upsampling, the softmax of multi-scale / flip averaging and the loss see these."""
        return self.forward(image).float()

    def _evaluate(self, batch: dict[str, Any], stage: str) -> dict[str, Tensor]:
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
            scores = predict(self._logits_fp32, image, **{**self.inference, "crf": crf}, rgb=rgb)
        single_pass = tuple(self.inference.get("scales", (1.0,))) == (1.0,)
        crf = bool(self.inference.get("crf")) and not self.eval_aux and self.trainer.state.fn != "fit"
        if single_pass and not self.inference.get("flip", False) and not crf:  # scores are logits
            loss = cross_entropy(scores, target, self.ignore_index)
            self.log(f"{stage}/loss", loss, batch_size=target.shape[0], sync_dist=True)
        pred = scores.argmax(1)
        self.metrics[stage].update(pred, target)
        return {"pred": pred}

    def _rgb(self, batch: dict[str, Any]) -> Tensor:
        """The batch's images back in RGB 0..255 (the dense CRF's colour kernel), undoing the
        DataModule's normalisation."""
        datamodule = self.trainer.datamodule
        mean = torch.tensor(datamodule.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(datamodule.std, device=self.device).view(1, 3, 1, 1)
        return (batch["image"].float() * std + mean).mul(255).clamp(0, 255)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "test")

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
            title = f"{title} (epoch {self.current_epoch}, step {self.global_step})"
            rank_zero_info("\n" + format_table(results, self.class_names, title))
        return results

    def _report_stage(self, stage: str) -> None:
        # The dataset-level confusion matrix (summed over processes) of the epoch just ended,
        # kept for the report files (lightning.pictures.EvalReports, the eval command).
        with self.metrics[stage].sync_context():
            self.confmats[stage] = self.metrics[stage].confmat.detach().cpu().clone()
        self._report(self.metrics[stage], stage, f"{stage} metrics")
        for key, metrics in self.aux_metrics.items():
            if key.startswith(f"{stage}/"):
                name = key.split("/", 1)[1]
                self._report(metrics, f"{stage}/aux/{name}", f"{stage} metrics of {name}")

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
        groups = [
            {"params": [p for p in params if p.requires_grad], "lr": lr, "name": name}
            for name, params, lr in (
                ("backbone", list(self.net.backbone_parameters()), base_lr),
                ("new", list(self.net.new_parameters()), base_lr * self.new_lr_mult),
            )
        ]
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
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
