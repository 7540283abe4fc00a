"""End-of-epoch report of the samples skipped under ``on_bad_sample=skip``.

The DataLoader workers that meet a bad file cannot report it: their counters die with
them, and there may be eight of them. Instead each sample carries the messages of the bad
files skipped to produce it (``batch["skipped"]``, see :mod:`diffusion_seg.data.base`);
this callback runs in the main process, collects them batch by batch, and at the end of
every train / validation / test epoch logs one warning listing each bad file once, and the
count as ``data/skipped_<stage>``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class BadSampleReport(L.Callback):
    """Collect ``batch["skipped"]`` and report it once per epoch (module docstring).

    ``reports`` keeps every report made (stage, epoch, messages) for inspection."""

    def __init__(self) -> None:
        self._epoch: dict[str, dict[str, None]] = {}
        self.reports: list[tuple[str, int, list[str]]] = []

    def collect(self, stage: str, batch: Any) -> None:
        if not isinstance(batch, dict) or "skipped" not in batch:
            return
        seen = self._epoch.setdefault(stage, {})
        for entry in batch["skipped"]:
            for message in filter(None, entry.split("\n")):
                seen.setdefault(message, None)  # a dict keeps first-seen order, once each

    def report(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if stage not in self._epoch:  # no batch carried "skipped": policy is "error"
            return
        messages = list(self._epoch.pop(stage))
        if trainer.sanity_checking:
            return
        if messages:
            self.reports.append((stage, trainer.current_epoch, messages))
            log.warning(
                "%s epoch %d (rank %d): skipped %d bad sample(s) (on_bad_sample=skip):\n  %s",
                stage,
                trainer.current_epoch,
                trainer.global_rank,
                len(messages),
                "\n  ".join(messages),
            )
        pl_module.log(
            f"data/skipped_{stage}",
            float(len(messages)),
            reduce_fx="sum",
            sync_dist=trainer.world_size > 1,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.collect("train", batch)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.collect("val", batch)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.collect("test", batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.report("train", trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.report("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.report("test", trainer, pl_module)
