"""A progress bar that moves while one batch is in the dense CRF.

Lightning's bar counts batches, so a batch that spends seconds in the CRF (many iterations,
large images, the exact backend on a CPU) left it standing at ``0.00it/s`` with no time
left until the batch ended. :func:`crf_progress` gives the CRF a callback that sets the bar
to ``batch_idx + fraction done``: the bar, its rate and its estimate of the time left follow
the CRF's iterations, and Lightning sets the whole count again when the batch ends. Both of
Lightning's bars: rich (the default where ``rich`` is installed, as here) and tqdm.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


def crf_progress(trainer: L.Trainer, stage: str, batch_idx: int) -> Callable[[float], None]:
    """The CRF's progress callback for batch ``batch_idx`` of ``stage`` (``val`` or
    ``test``); it does nothing without a bar (disabled, or not one of Lightning's)."""
    callback = trainer.progress_bar_callback

    def update(fraction: float) -> None:
        done = batch_idx + fraction
        if isinstance(callback, RichProgressBar):
            task = getattr(callback, f"{stage}_progress_bar_id", None)
            if callback.is_enabled and callback.progress is not None and task is not None:
                callback.progress.update(task, completed=done)
                callback.refresh()
        elif isinstance(callback, TQDMProgressBar):
            bar = getattr(callback, f"_{stage}_progress_bar", None)
            if bar is not None and not bar.disable:
                bar.n = round(done, 2)  # tqdm prints the count as it is: hundredths of a batch
                bar.refresh()

    return update
