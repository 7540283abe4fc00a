"""A CSV logger that survives resuming a run in place."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class AppendingExperimentWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` and appends to it (Lightning's writer deletes it)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose log continues across ``resume=<run dir>``: a resumed run's rows are
    appended after the first run's instead of replacing them."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        # The task logs the evaluated weights' epoch with each val/test table, a float like
        # every logged value; the column keeps the integers Lightning writes in the other rows.
        if isinstance(metrics.get("epoch"), float) and metrics["epoch"].is_integer():
            metrics = {**metrics, "epoch": int(metrics["epoch"])}
        super().log_metrics(metrics, step)

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
