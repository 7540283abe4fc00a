"""The job record: what a training job writes into its dir, and what a job does in a dir that
already holds one (skip, resume or start). Plain files and YAML: no Lightning, no Hydra, no
reporting (:mod:`diffusion_seg.studies` reads these records, :mod:`diffusion_seg.sweeps`
checks a launch against them, ``diffusion_seg.train`` writes them).

A job's dir (``<sweep dir>/<job number>`` in a multirun, or the run dir) records, written by
the job itself (Hydra's ``<job dir>/.hydra/`` and ``<sweep dir>/multirun.yaml`` are rewritten by
every launch into the dir, so they cannot tell what a job ran):

- ``job.yaml``: the job's command-line overrides, written at its first start, and one line per
  attempt (started / resumed / skipped; start and end time, host, process, SLURM job id);
- ``config.yaml``: the composed config the job ran with (resolved), written at its first start;
- ``finished.yaml``: written atomically when the job ends — its final metrics (the sweeper's
  ``optimized_metric`` among them), epoch, step and best checkpoint; or ``status: diverged``.

With ``auto_resume=true`` (the default) a job that finds ``finished.yaml`` returns the recorded
metrics without training (**skip**); one that finds ``checkpoints/last.ckpt`` but no marker
continues from it (**resume**: a requeued SLURM job, a relaunched sweep, a crash); otherwise
it **starts**. A job in a dir that holds another job (other overrides) is refused
(:func:`plan_run`; a sweep's launch is checked as a whole before it starts,
:class:`diffusion_seg.sweeps.RelaunchGuard`).
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

from diffusion_seg.errors import CheckpointNotFoundError, ConfigError

log = logging.getLogger("diffusion_seg")

# The record files in a job's dir (module docstring).
JOB_FILE = "job.yaml"
CONFIG_FILE = "config.yaml"
FINISHED_FILE = "finished.yaml"
# What each plan did, as the logs say it.
WORDS = {"skip": "skipped (finished before)", "resume": "resumed", "start": "started"}
# Overrides that do not change what a job computes: left out when a job dir is matched.
NEUTRAL_KEYS = ("resume", "ckpt_path", "auto_resume")
# Job files of the attempts this process recorded and has not ended yet → index of the attempt.
_open_attempts: dict[Path, int] = {}
# The checkpoint a job resumes from: ModelCheckpoint's save_last file in <job dir>/checkpoints/.
LAST = "last.ckpt"


def resolve_checkpoint_path(
    resume: str | None, ckpt_path: str | None, output_dir: Path
) -> str | None:
    """The checkpoint a training run starts from: ``resume=<run dir>`` → its
    ``checkpoints/last.ckpt``; ``ckpt_path=<file>`` as given; ``ckpt_path=last`` → this run
    dir's last checkpoint. Fails before anything is built if the file is not there."""
    ckpt = ckpt_path
    if resume:
        ckpt = ckpt or str(Path(resume) / "checkpoints" / LAST)
    elif ckpt == "last":
        ckpt = str(output_dir / "checkpoints" / LAST)
    if ckpt is not None and not Path(ckpt).is_file():
        raise CheckpointNotFoundError(
            f"no checkpoint at {ckpt}. Pass ckpt_path=<file.ckpt>, or resume=<run dir> for a "
            "run dir holding checkpoints/last.ckpt."
        )
    return ckpt


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
    """Skip, resume or start the job whose dir is ``output_dir`` (module docstring). Reads, never
    writes: :class:`diffusion_seg.sweeps.RelaunchGuard` calls it for every job before the launch.

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


def record_attempt(output_dir: Path, overrides: list[str], plan: RunPlan, config: DictConfig | None = None) -> None:
    """Append this attempt to ``job.yaml`` (rank zero only); a job that trains again drops its
    old ``finished.yaml`` (written anew when it ends). A fresh start also writes the composed
    ``config`` to ``config.yaml``: the record the report reads, which no later launch rewrites.
    :func:`end_attempts` adds the attempt's end time."""
    path = output_dir / JOB_FILE
    record = read_yaml(path)
    if plan.action == "start" or "overrides" not in record:  # a fresh start defines the job
        record["overrides"] = job_overrides(overrides)
    # A start defines what the job runs; a resume records it only for a job from before config.yaml.
    unrecorded = plan.action == "resume" and not (output_dir / CONFIG_FILE).is_file()
    if config is not None and (plan.action == "start" or unrecorded):
        run_config = OmegaConf.to_container(config, resolve=False)
        run_config.pop("hydra", None)  # Hydra's own node (present when composed by hand) is not the run's
        write_yaml_atomic(output_dir / CONFIG_FILE,
                          OmegaConf.to_container(OmegaConf.create(run_config), resolve=True, throw_on_missing=False))
    now = time.time()
    attempt: dict[str, Any] = {
        "time": now,
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
        "action": plan.action,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    if plan.ckpt_path:
        attempt["checkpoint"] = plan.ckpt_path
    slurm = slurm_job_id()
    if slurm:
        attempt["slurm_job"] = slurm
        attempt["slurm_restart"] = int(os.environ.get("SLURM_RESTART_COUNT", 0))
    attempts = record.setdefault("attempts", [])
    attempts.append(attempt)
    write_yaml_atomic(path, record)
    if plan.action != "skip":
        (output_dir / FINISHED_FILE).unlink(missing_ok=True)
        _open_attempts[path] = len(attempts) - 1


def end_attempts() -> None:
    """Write the end time of the attempts this process recorded (``end`` in ``job.yaml``): when
    training returns, fails, or stops on a signal (``diffusion_seg.train`` calls it in a
    ``finally``), so the report sums the times a job ran and not the pauses between its
    attempts. A process killed outright (SIGKILL, power loss) leaves its attempt without one."""
    for path, index in list(_open_attempts.items()):
        record = read_yaml(path)
        attempts = record.get("attempts") or []
        if index < len(attempts):
            now = time.time()
            attempts[index]["end"] = now
            attempts[index]["end_date"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            write_yaml_atomic(path, record)
        del _open_attempts[path]


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
