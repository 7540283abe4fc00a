"""Runs that survive: a checkpoint at the current step when the run is told to stop, and no
update — and no checkpoint — from non-finite numbers.

- :class:`RunGuard` (a callback ``diffusion_seg.train`` always installs): on SIGTERM (scancel,
  preemption), SIGUSR1 / SIGUSR2 (SLURM's advance notice; submitit's requeue signal) or a first
  Ctrl-C, the run finishes the training step it is in, writes ``checkpoints/last.ckpt``
  (atomically, like every checkpoint) and stops with exit status 128 + the signal number;
  ``resume=<run dir>`` — or the requeued / relaunched job, by itself — continues from that step.
  Under submitit the job is then requeued by submitit's own handler. It also refuses to write
  any checkpoint holding a non-finite weight, so a NaN never replaces a good checkpoint.
- :class:`FiniteStepGuard` (used by :class:`~diffusion_seg.lightning.task.SegmentationTask`,
  ``task.nonfinite``): before every optimizer step, a non-finite loss or gradient either stops
  the run with one line naming the step, the loss terms and the learning rates (``stop``, the
  default), or drops that update — weights, optimizer state and BatchNorm statistics stay as
  they were (``skip``).
- :func:`cluster_plugins`: Lightning's SLURM auto-requeue off where submitit handles requeueing.

Lightning's own SIGTERM handling (``_SignalConnector``) only sets a flag and ends ``fit`` with
exit status 0, saving nothing; the guard's handlers replace it for the training loop (they are
installed once Lightning has registered its own, and Lightning puts the previous handlers back
when ``fit`` ends). SLURM signals every process of a job step, DataLoader workers included:
a worker that died of it would crash the main process mid-step (PyTorch's SIGCHLD check), and
one that inherited submitit's handler would requeue the job itself. So the guard makes the
DataLoader workers ignore these signals (:class:`IgnoreStopSignals`, wrapped around each
loader's ``worker_init_fn``): the main process decides when the run stops, and its loaders
shut the workers down.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from diffusion_seg.errors import UserError
from diffusion_seg.jobs import LAST

log = logging.getLogger("diffusion_seg")

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(UserError, FloatingPointError):
    """A non-finite loss, gradient or weight; the message names the step and the numbers."""


class Interrupted(Exception):
    """Raised at the end of a training step after a stop signal, once ``last.ckpt`` is saved."""

    def __init__(self, signum: int, ckpt_path: Path, epoch: int, step: int, chained: Any = None) -> None:
        self.signum, self.ckpt_path, self.epoch, self.step = signum, ckpt_path, epoch, step
        self.chained = chained
        super().__init__(f"{signal_name(signum)} at epoch {epoch}, step {step}: saved {ckpt_path}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def run_chained_handler(self) -> None:
        """Hand over to the handler the guard replaced when it is submitit's: it requeues the
        job (global rank 0) and exits; elsewhere it returns."""
        if self.chained is not None:
            self.chained(self.signum, None)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stop_signals() -> list[signal.Signals]:
    """SIGTERM, SIGINT, SIGUSR1, SIGUSR2 and submitit's requeue signal
    (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    names = ["SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}"]
    found: list[signal.Signals] = []
    for name in names:
        sig = getattr(signal, name, None)
        if sig is not None and sig not in found:
            found.append(sig)
    return found


def _is_submitit_handler(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return owner is not None and type(owner).__module__.startswith("submitit")


def _in_dataloader_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


class IgnoreStopSignals:
    """A DataLoader ``worker_init_fn``: the worker ignores :func:`stop_signals` (PyTorch's own
    SIGTERM handler would kill it), then runs the loader's own ``worker_init_fn``."""

    def __init__(self, init_fn: Any = None) -> None:
        self.init_fn = init_fn

    def __call__(self, worker_id: int) -> None:
        for sig in stop_signals():
            signal.signal(sig, signal.SIG_IGN)
        if self.init_fn is not None:
            self.init_fn(worker_id)


def shield_workers(loaders: Any) -> Any:
    """``loaders`` (a DataLoader, or a list / dict of them) with :class:`IgnoreStopSignals`
    around each ``worker_init_fn``."""
    if isinstance(loaders, torch.utils.data.DataLoader):
        if loaders.num_workers > 0 and not isinstance(loaders.worker_init_fn, IgnoreStopSignals):
            loaders.worker_init_fn = IgnoreStopSignals(loaders.worker_init_fn)
    elif isinstance(loaders, (list, tuple)):
        for loader in loaders:
            shield_workers(loader)
    elif isinstance(loaders, dict):
        for loader in loaders.values():
            shield_workers(loader)
    return loaders


class _ShieldedLoaders:
    """A DataModule's ``*_dataloader`` method whose loaders get :func:`shield_workers`."""

    def __init__(self, method: Any) -> None:
        self.method = self.__wrapped__ = method  # __wrapped__: Lightning's is_overridden()

    def __call__(self) -> Any:
        return shield_workers(self.method())


class RunGuard(L.Callback):
    """Checkpoint-and-stop on signals; no checkpoint from non-finite weights (module docstring).

    Args:
        ckpt_dir: where ``last.ckpt`` goes (the run's ``checkpoints/``).
    """

    def __init__(self, ckpt_dir: str | Path) -> None:
        self.ckpt_path = Path(ckpt_dir) / LAST
        self.received: int | None = None
        self._pending: Interrupted | None = None
        self._replaced: dict[int, Any] = {}

    # -- signals -------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        if _in_dataloader_worker():  # a forked worker: the main process decides
            return
        if self.received is None:
            self.received = signum
            hint = " (Ctrl-C again to stop at once, without it)" if signum == signal.SIGINT else ""
            log.warning(
                "Received %s: saving %s at the end of this training step, then stopping%s",
                signal_name(signum), self.ckpt_path, hint,
            )
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def install(self) -> None:
        """Replace the handlers of :func:`stop_signals` (main thread only; idempotent)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in stop_signals():
            current = signal.getsignal(sig)
            if current == self._handle or current == signal.SIG_IGN:  # e.g. SIGINT of a background job
                continue
            self._replaced[sig] = current
            signal.signal(sig, self._handle)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # In every process (also after ddp_spawn), before any loader is built.
        datamodule = trainer.datamodule
        if datamodule is not None:
            for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
                method = getattr(datamodule, name, None)
                if method is not None and not isinstance(method, _ShieldedLoaders):
                    setattr(datamodule, name, _ShieldedLoaders(method))

    # Lightning registers its handlers right before the sanity check / the first epoch.
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()
        if trainer.global_step and trainer.is_global_zero:
            log.info("Training continues at epoch %d, step %d", trainer.current_epoch, trainer.global_step)

    def _agreed_signal(self, trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        """The signal any process received (all ranks stop at the same step)."""
        signum = self.received or 0
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([signum], device=pl_module.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Saved where Lightning's own step checkpoints are (a mid-epoch checkpoint resumes at
        # the next batch); the run stops at the next hook, once Lightning has logged this step.
        if self._pending is None:
            signum = self._agreed_signal(trainer, pl_module)
            if signum:
                self._pending = self._save(trainer, signum)

    def _raise_pending(self, *_: Any, **__: Any) -> None:
        if self._pending is not None:
            stop, self._pending = self._pending, None
            raise stop

    # The first hook after a step's bookkeeping, whatever comes next; the guard runs before the
    # checkpoint callbacks, so an epoch-end checkpoint is not written over the mid-epoch one.
    on_train_batch_start = _raise_pending
    on_validation_start = _raise_pending
    on_train_epoch_end = _raise_pending
    on_train_end = _raise_pending

    def stop_if_signalled(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After ``fit``: a signal that came during the last validation (no training step was
        left to act on it) stops the run here, before the test pass."""
        self._raise_pending()
        signum = self._agreed_signal(trainer, pl_module)
        if signum:
            raise self._save(trainer, signum)

    def _save(self, trainer: L.Trainer, signum: int) -> Interrupted:
        trainer.save_checkpoint(self.ckpt_path)
        previous = self._replaced.get(signum)
        return Interrupted(
            signum, self.ckpt_path, trainer.current_epoch, trainer.global_step,
            chained=previous if _is_submitit_handler(previous) else None,
        )

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = first_nonfinite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise NonFiniteError(
                f"non-finite weights at step {trainer.global_step} (epoch {trainer.current_epoch}): "
                f"{bad} holds NaN or inf. Not writing a checkpoint: the checkpoints on disk keep "
                "the last finite weights. Lower optimizer.lr (or set task.nonfinite=skip)."
            )


def first_nonfinite(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first floating-point tensor with a NaN or inf, else ``None``."""
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


class FiniteStepGuard:
    """``task.nonfinite``: what a step with a non-finite loss or gradient does.

    The task calls :meth:`before_forward` at the start of ``training_step``, :meth:`record`
    with its loss terms, and :meth:`check` from ``on_before_optimizer_step`` (after backward and
    the DDP all-reduce, before clipping and the update).
    """

    def __init__(self, policy: str = "stop") -> None:
        if policy not in NONFINITE_POLICIES:
            raise ValueError(
                f"task.nonfinite={policy!r} is not supported; allowed values: {list(NONFINITE_POLICIES)}"
            )
        self.policy = policy
        self.skipped = 0
        self._terms: dict[str, Tensor] = {}
        self._buffers: list[tuple[Tensor, Tensor]] = []

    def before_forward(self, net: torch.nn.Module) -> None:
        """With ``skip``: keep a copy of the buffers (BatchNorm statistics and counters, a few
        KB) that a NaN forward pass would overwrite."""
        if self.policy == "skip":
            self._buffers = [(b, b.detach().clone()) for b in net.buffers()]

    def record(self, **terms: Tensor) -> None:
        self._terms = {k: v.detach() for k, v in terms.items()}

    def check(self, module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        grad_norm_t = _grad_norm(params)
        # Under 16-bit AMP the grad scaler expects inf gradients now and then and skips those
        # steps itself: only the loss is checked there.
        scaler = getattr(getattr(module.trainer, "precision_plugin", None), "scaler", None)
        # One flag tensor, one host-device sync per step (not one per loss term).
        checks = [torch.isfinite(v).all() for v in self._terms.values()]
        if scaler is None and grad_norm_t is not None:
            checks.append(torch.isfinite(grad_norm_t).to(checks[0].device if checks else grad_norm_t.device))
        bad = bool(checks) and not bool(torch.stack(checks).all())
        trainer = module.trainer
        if trainer.world_size > 1:  # the same decision on every rank
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        loss_ok = all(bool(torch.isfinite(v).all()) for v in self._terms.values())
        grad_norm = float(grad_norm_t) if grad_norm_t is not None else 0.0
        what = "loss" if not loss_ok else "gradients"
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in self._terms.items())
        lrs = ", ".join(f"{g.get('name', i)}={g['lr']:.3g}" for i, g in enumerate(optimizer.param_groups))
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch})"
        numbers = f"{terms}; gradient norm={grad_norm:.4g}; lr {lrs}"
        if self.policy == "stop":
            raise NonFiniteError(
                f"non-finite {what} at {where}: {numbers}. Stopped before the update: last.ckpt "
                "and the best checkpoint keep the last finite weights. Lower optimizer.lr, or "
                "set task.nonfinite=skip to drop such steps."
            )
        for p in params:  # torch optimizers leave parameters without a gradient untouched
            p.grad = None
        for live, saved in self._buffers:
            live.copy_(saved)
        self.skipped += 1
        if trainer.is_global_zero:
            log.warning("non-finite %s at %s: %s. Update skipped (task.nonfinite=skip; %d so far)",
                        what, where, numbers, self.skipped)


def _grad_norm(params: list[Tensor]) -> Tensor | None:
    """The global gradient norm as a 0-d tensor (no sync); ``None`` without gradients."""
    if not params:
        return None
    grads = [p.grad.detach() for p in params]
    try:
        norms = torch._foreach_norm(grads)
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch, mixed devices
        norms = [g.norm() for g in grads]
    return torch.linalg.vector_norm(torch.stack([n.float().to(norms[0].device) for n in norms]))


def cluster_plugins() -> list[Any]:
    """``SLURMEnvironment(auto_requeue=False)`` inside a job that submitit runs on SLURM:
    submitit requeues the job (USR2) and :class:`RunGuard` saves the checkpoint, so Lightning's
    own requeue handler (USR1, ``hpc_ckpt_*.ckpt``) stays off."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return []
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
