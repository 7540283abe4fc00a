"""Run dirs that survive a relaunch: what a training job does in a dir that already holds one.

A job's dir (``<sweep dir>/<job number>`` in a multirun, or the run dir) records

- ``job.yaml``: the job's command-line overrides, written at its first start, and one line per
  attempt (started / resumed / skipped; time, host, SLURM job id);
- ``finished.yaml``: written atomically when the job ends — its final metrics (the sweeper's
  ``optimized_metric`` among them), epoch, step and best checkpoint; or ``status: diverged``.

With ``auto_resume=true`` (the default) a job that finds ``finished.yaml`` returns the recorded
metrics without training (**skip**); one that finds ``checkpoints/last.ckpt`` but no marker
continues from it (**resume**: a requeued SLURM job, a relaunched sweep, a crash); otherwise
it **starts**. Hydra's basic, joblib and submitit launchers number the jobs of a sweep 0..n-1
again when the same sweep is launched into the same ``hydra.sweep.dir``, so each job finds its
own dir — as long as the overrides are the same: a dir whose ``job.yaml`` lists other overrides
stops the job with an error instead of mixing two jobs. (Hydra rewrites
``<job dir>/.hydra/overrides.yaml`` before the job runs, so the record has to be our own.)

:class:`SweepReport` (a Hydra callback, ``hydra.callbacks`` in ``conf/train.yaml``) logs at the
end of a multirun which jobs were skipped, resumed and started, whatever the launcher.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from diffusion_seg.errors import ConfigError
from diffusion_seg.lightning.checkpoint import LAST, resolve_checkpoint_path
# The completion marker's name: the report command reads what this module writes.
from diffusion_seg.studies import FINISHED_FILE

log = logging.getLogger("diffusion_seg")

JOB_FILE = "job.yaml"
WORDS = {"skip": "skipped (finished before)", "resume": "resumed", "start": "started"}
# Overrides that do not change what a job computes: left out when a job dir is matched.
NEUTRAL_KEYS = ("resume", "ckpt_path", "auto_resume")


@dataclass
class RunPlan:
    """What :func:`plan_run` decided for a job dir."""

    action: str  # "start" | "resume" | "skip"
    ckpt_path: str | None = None
    finished: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def job_overrides(overrides: list[str]) -> list[str]:
    """A job's identity: its task overrides without the :data:`NEUTRAL_KEYS`, sorted."""
    keep = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key not in NEUTRAL_KEYS:
            keep.append(override)
    return sorted(keep)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping, ``{}`` if the file is missing."""
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return data if isinstance(data, dict) else {}


def write_yaml_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to a temporary file in the same dir, fsync, rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_same_job(output_dir: Path, overrides: list[str]) -> None:
    recorded = read_yaml(output_dir / JOB_FILE).get("overrides")
    if recorded is None:
        recorded = read_yaml(output_dir / FINISHED_FILE).get("overrides")
    if recorded is None:
        log.warning("%s has no %s: cannot check it holds this job; continuing it", output_dir, JOB_FILE)
        return
    if sorted(recorded) != job_overrides(overrides):
        raise ConfigError(
            f"{output_dir} holds another job: its overrides are {sorted(recorded)}, this job's "
            f"{job_overrides(overrides)}. Relaunch a sweep into its dir with the same overrides "
            "(same values, same order), or use a new hydra.sweep.dir / hydra.run.dir "
            "(auto_resume=false trains from scratch in that dir)."
        )


def plan_run(
    output_dir: Path,
    overrides: list[str],
    resume: str | None = None,
    ckpt_path: str | None = None,
    auto_resume: bool = True,
) -> RunPlan:
    """Skip, resume or start the job whose dir is ``output_dir`` (module docstring).

    An explicit ``resume=<run dir>`` or ``ckpt_path=<file>`` always trains from that checkpoint
    (to train a finished run longer, for instance); it fails here if the file is missing.
    """
    explicit = resolve_checkpoint_path(resume, ckpt_path, output_dir)
    if explicit:
        return RunPlan("resume", explicit, reason="resume= / ckpt_path= given")
    if not auto_resume:
        return RunPlan("start", reason="auto_resume=false")
    finished = read_yaml(output_dir / FINISHED_FILE)
    if finished:
        _check_same_job(output_dir, overrides)
        return RunPlan("skip", finished=finished, reason=f"{FINISHED_FILE} found")
    last = output_dir / "checkpoints" / LAST
    if last.is_file():
        _check_same_job(output_dir, overrides)
        return RunPlan("resume", str(last), reason=f"auto_resume: {LAST} found, no {FINISHED_FILE}")
    if (output_dir / JOB_FILE).is_file():
        _check_same_job(output_dir, overrides)
    return RunPlan("start", reason=f"no {LAST} in {output_dir / 'checkpoints'}")


def record_attempt(output_dir: Path, overrides: list[str], plan: RunPlan) -> None:
    """Append this attempt to ``job.yaml`` (rank zero only); a job that trains again drops its
    old ``finished.yaml`` (written anew when it ends)."""
    path = output_dir / JOB_FILE
    record = read_yaml(path)
    if plan.action == "start" or "overrides" not in record:  # a fresh start defines the job
        record["overrides"] = job_overrides(overrides)
    now = time.time()
    attempt: dict[str, Any] = {
        "time": now,
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
        "action": plan.action,
        "host": socket.gethostname(),
    }
    if plan.ckpt_path:
        attempt["checkpoint"] = plan.ckpt_path
    slurm = slurm_job_id()
    if slurm:
        attempt["slurm_job"] = slurm
        attempt["slurm_restart"] = int(os.environ.get("SLURM_RESTART_COUNT", 0))
    record.setdefault("attempts", []).append(attempt)
    write_yaml_atomic(path, record)
    if plan.action != "skip":
        (output_dir / FINISHED_FILE).unlink(missing_ok=True)


def slurm_job_id() -> str | None:
    """``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID``; ``None`` outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def write_finished(
    output_dir: Path,
    overrides: list[str],
    metrics: dict[str, float],
    *,
    status: str = "finished",
    epoch: int | None = None,
    global_step: int | None = None,
    best_checkpoint: str | None = None,
    error: str | None = None,
) -> None:
    """The completion marker ``finished.yaml`` (rank zero only), written atomically."""
    data: dict[str, Any] = {
        "status": status,
        "time": time.time(),
        "overrides": job_overrides(overrides),
        "epoch": epoch,
        "global_step": global_step,
        "best_checkpoint": best_checkpoint or None,
        "metrics": {k: float(v) for k, v in sorted(metrics.items())},
    }
    if error:
        data["error"] = error
    write_yaml_atomic(output_dir / FINISHED_FILE, data)


def _gpus_per_node(accelerator: str, devices: Any) -> int | None:
    """``${ds_gpus:${trainer.accelerator},${trainer.devices}}``: the devices of a GPU trainer,
    ``None`` (no GPU requested) for a CPU one."""
    if str(accelerator) in ("gpu", "cuda", "auto"):
        try:
            return int(devices)
        except (TypeError, ValueError):
            raise ConfigError(
                f"trainer.devices={devices!r}: the submitit launchers need a number of devices "
                "per node (e.g. trainer.devices=8), not a list or 'auto'"
            ) from None
    return None


def _sqlite_url(path: str) -> str:
    """``${ds_sqlite:<file>}``: ``sqlite:///<absolute file>``, its directory created (SQLite
    cannot create it, and Optuna opens the study before any run dir exists)."""
    file = Path(path).expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def register_sweep_resolvers() -> None:
    """``ds_gpus`` (launcher resources) and ``ds_sqlite`` (Optuna storage); see above."""
    if not OmegaConf.has_resolver("ds_gpus"):
        OmegaConf.register_new_resolver("ds_gpus", _gpus_per_node)
    if not OmegaConf.has_resolver("ds_sqlite"):
        OmegaConf.register_new_resolver("ds_sqlite", _sqlite_url)


try:  # Hydra's callback API (hydra.experimental in 1.3)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]


class SweepReport(_HydraCallback):  # type: ignore[misc,valid-type]
    """At the end of a multirun, one log line per job of this launch — skipped (finished
    before), resumed (from which checkpoint) or started — read from the jobs' ``job.yaml``, so
    it works whatever launcher ran them."""

    def __init__(self) -> None:
        self._start = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        jobs = sorted(
            (p for p in sweep_dir.iterdir() if (p / JOB_FILE).is_file()),
            key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
        )
        counts: dict[str, int] = {}
        for job in jobs:
            attempts = [a for a in read_yaml(job / JOB_FILE).get("attempts", []) if a.get("time", 0) >= self._start - 1]
            if not attempts:
                continue
            action = attempts[0]["action"]
            counts[action] = counts.get(action, 0) + 1
            finished = read_yaml(job / FINISHED_FILE)
            outcome = finished.get("status", "not finished")
            detail = f" from {attempts[0]['checkpoint']}" if action == "resume" and attempts[0].get("checkpoint") else ""
            if len(attempts) > 1:
                detail += f", continued {len(attempts) - 1}× (requeued)"
            log.info("Sweep job %s: %s%s; now %s", job.name, WORDS.get(action, action), detail, outcome)
        if counts:
            log.info(
                "Sweep %s: %s",
                sweep_dir,
                ", ".join(f"{counts[a]} {WORDS[a]}" for a in ("skip", "resume", "start") if counts.get(a)),
            )
