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
it **starts** — or, with ``reuse_from=<dir>``, **reuses** a finished job under that dir that
computed the same thing (:func:`find_reusable`: the same config but for where it wrote and how
it was labelled, the same code and library versions; files the config names, such as weights,
are compared by path): the job copies that job's records (``finished.yaml`` with
``reused_from``, its logs; ``checkpoints`` a link to the original) instead of training. Two
studies that share a setting (a study's baseline row is another's row) then train it once; the
report names every reused run. A job in a dir that holds another job (other overrides) is
refused (:func:`plan_run`; a sweep's launch is checked as a whole before it starts,
:class:`diffusion_seg.sweeps.RelaunchGuard`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
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
WORDS = {"skip": "skipped (finished before)", "reuse": "reused (the same job finished elsewhere)",
         "resume": "resumed", "start": "started"}
# Overrides that do not change what a job computes: left out when a job dir is matched.
NEUTRAL_KEYS = ("resume", "ckpt_path", "auto_resume")
# Config keys that change nothing a job computes and nothing else in its config: a report
# leaves their overrides out of the name of a setting (diffusion_seg.studies).
UNLABELLED_KEYS = ("logger", "auto_resume", "reuse_from", "trainer.enable_progress_bar")
# Those and the keys that say where a job writes (other keys interpolate paths and task_name):
# left out when a job is matched with a finished one to reuse (find_reusable). Paths inside
# the job's own dir (checkpoints, logs) are compared relative to it.
UNCOMPUTED_KEYS = (*UNLABELLED_KEYS, "study", "paths", "task_name", "trainer.default_root_dir")
# What a reusing job does not copy from the job it reuses: its own records, Hydra's, and the
# checkpoints (linked instead: they can be large).
UNCOPIED = (JOB_FILE, CONFIG_FILE, FINISHED_FILE, ".hydra", "checkpoints", "wandb")
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

    action: str  # "start" | "resume" | "skip" | "reuse"
    ckpt_path: str | None = None
    source: Path | None = None  # "reuse": the finished job dir whose records this job copies
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


@functools.cache
def code_version() -> str:
    """What decides a job's numbers besides its config: a hash of this package's Python sources
    and the torch, lightning and timm versions (``code`` in ``job.yaml``; a job is reused only
    by a job of the same code, :func:`find_reusable`)."""
    import lightning
    import timm
    import torch

    digest = hashlib.sha256(f"{torch.__version__} {lightning.__version__} {timm.__version__}".encode())
    package = Path(__file__).parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def computed_config(config: dict[str, Any]) -> str:
    """The part of a job's resolved config (``config.yaml``) that decides what it computes, as
    canonical JSON: without :data:`UNCOMPUTED_KEYS`, with the job's own dir as ``<job>``, and
    a whole float as its int (``task.new_lr_mult=1`` on the command line computes what a
    config's ``1.0`` does)."""
    config = json.loads(json.dumps(config, default=str), parse_float=_whole_as_int)  # a deep copy
    job_dir = str((config.get("paths") or {}).get("output_dir") or "")
    for dotted in UNCOMPUTED_KEYS:
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    text = json.dumps(config, sort_keys=True)
    return text.replace(json.dumps(job_dir)[1:-1], "<job>") if job_dir else text


def _whole_as_int(text: str) -> int | float:
    number = float(text)
    return int(number) if number.is_integer() else number


def find_reusable(root: Path, config: dict[str, Any], output_dir: Path) -> Path | None:
    """A finished job under ``root`` (not a reuse itself, not ``output_dir``) whose recorded
    config computes what ``config`` computes (:func:`computed_config`) with this
    :func:`code_version`; the first in path order, or ``None``."""
    wanted, code = computed_config(config), code_version()
    for marker in sorted(root.rglob(FINISHED_FILE)):
        job = marker.parent
        if job.resolve() == output_dir.resolve() or not (job / CONFIG_FILE).is_file():
            continue
        finished = read_yaml(marker)
        if finished.get("status") != "finished" or finished.get("reused_from"):
            continue
        if read_yaml(job / JOB_FILE).get("code") != code:
            continue
        if computed_config(read_yaml(job / CONFIG_FILE)) == wanted:
            return job
    return None


def reuse_finished(output_dir: Path, overrides: list[str], source: Path) -> None:
    """Make ``output_dir`` hold the records of the finished job ``source``: its files but
    :data:`UNCOPIED`, ``checkpoints`` as a link to the original's, and its ``finished.yaml``
    with this job's overrides and ``reused_from``, written last (atomically)."""
    for item in source.iterdir():
        if item.name in UNCOPIED or item.suffix == ".log":
            continue
        target = output_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    link = output_dir / "checkpoints"
    if (source / "checkpoints").is_dir() and not link.exists():
        link.symlink_to(os.path.relpath((source / "checkpoints").resolve(), output_dir.resolve()))
    finished = read_yaml(source / FINISHED_FILE)
    finished.update(overrides=job_overrides(overrides), reused_from=str(source.resolve()))
    write_yaml_atomic(output_dir / FINISHED_FILE, finished)


def resolved_config(config: DictConfig) -> dict[str, Any]:
    """The job's composed config, resolved, without Hydra's own node (present when composed by
    hand): what ``config.yaml`` records."""
    run_config = OmegaConf.to_container(config, resolve=False)
    run_config.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(run_config), resolve=True, throw_on_missing=False)


def record_attempt(output_dir: Path, overrides: list[str], plan: RunPlan, config: DictConfig | None = None) -> None:
    """Append this attempt to ``job.yaml`` (rank zero only); a job that trains again drops its
    old ``finished.yaml`` (written anew when it ends). A fresh start also writes the composed
    ``config`` to ``config.yaml``: the record the report reads, which no later launch rewrites.
    :func:`end_attempts` adds the attempt's end time."""
    path = output_dir / JOB_FILE
    record = read_yaml(path)
    if plan.action in ("start", "reuse") or "overrides" not in record:  # a fresh start defines the job
        record["overrides"] = job_overrides(overrides)
        record["code"] = code_version()
    # A start defines what the job runs; a resume records it only for a job from before config.yaml.
    unrecorded = plan.action == "resume" and not (output_dir / CONFIG_FILE).is_file()
    if config is not None and (plan.action in ("start", "reuse") or unrecorded):
        write_yaml_atomic(output_dir / CONFIG_FILE, resolved_config(config))
    if plan.action == "resume" and record.get("code") != code_version():
        record["code"] = "changed between attempts"  # never matches: such a job is not reused
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
    if plan.source is not None:
        attempt["reused"] = str(plan.source.resolve())
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
