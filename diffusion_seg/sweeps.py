"""Sweeps that survive a relaunch: the Hydra side of the job record (:mod:`diffusion_seg.jobs`
says what a job writes into its dir and what it does in a dir that already holds one), the
resolvers the launcher configs use and Optuna study names.

Hydra's basic, joblib and submitit launchers number the jobs of a sweep 0..n-1 again when the
same sweep is launched into the same ``hydra.sweep.dir``, so each job finds its own dir — as
long as the overrides are the same. A launch whose job would land in a dir whose ``job.yaml``
lists other overrides is refused by :class:`RelaunchGuard` (a Hydra callback) at the start of
the launch, before Hydra writes ``multirun.yaml`` or any ``.hydra/``: every byte of the
finished jobs stays as it was. The job itself checks again
(:func:`diffusion_seg.jobs.plan_run`) where the guard cannot foresee its dir.

:class:`SweepReport` (a Hydra callback, ``hydra.callbacks`` in ``conf/train.yaml``) logs at the
end of a multirun which jobs were skipped, resumed and started, whatever the launcher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from diffusion_seg.errors import ConfigError
from diffusion_seg.jobs import FINISHED_FILE, JOB_FILE, WORDS, job_overrides, plan_run, read_yaml

log = logging.getLogger("diffusion_seg")

# The sweepers whose job list the guard can compute before the launch (it then checks every
# job's dir), and those that number their trials 0.. again in every launch.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


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


def study_name(search: str, task_name: str, dataset: str, overrides: ListConfig | list[str],
               params: DictConfig | dict[str, Any]) -> str:
    """``${ds_study_name:<search>,${task_name},<dataset choice>,${hydra.overrides.task},${hydra.sweeper.params}}``:
    an Optuna study's name, ``<search>_<task name>[_<dataset>]_<hash>``.

    Trials are comparable only under the same data, experiment and budget and over the same
    search space, so the hash covers every command-line override of the run config (dataset,
    its options, experiment, fixed parameters, seed; not ``resume`` and the like) and the
    search space: the same command continues its study, any other one gets its own.
    """
    identity = {
        "overrides": job_overrides([str(o) for o in overrides]),
        "search_space": {str(k): str(v) for k, v in dict(params).items()},
    }
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    parts = [search, task_name] + ([dataset] if dataset not in task_name else []) + [digest]
    return "_".join(parts)


def register_sweep_resolvers() -> None:
    """``ds_gpus`` (launcher resources), ``ds_sqlite`` (Optuna storage) and ``ds_study_name``
    (Optuna study); see above."""
    if not OmegaConf.has_resolver("ds_gpus"):
        OmegaConf.register_new_resolver("ds_gpus", _gpus_per_node)
    if not OmegaConf.has_resolver("ds_sqlite"):
        OmegaConf.register_new_resolver("ds_sqlite", _sqlite_url)
    if not OmegaConf.has_resolver("ds_study_name"):
        OmegaConf.register_new_resolver("ds_study_name", study_name)


try:  # Hydra's callback API (hydra.experimental in 1.3)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]


def _planned_value(config: DictConfig, overrides: list[str], key: str) -> Any:
    """``key``'s value in a job of this launch: its own override if it has one, else the
    launch's config."""
    for override in overrides:
        name, _, value = override.partition("=")
        if name.lstrip("+~") == key:
            return yaml.safe_load(value)
    return config.get(key)


def _check_job_dir(config: DictConfig, job_dir: Path, overrides: list[str]) -> None:
    """What the job will decide in ``job_dir`` (:func:`plan_run`), decided now: a dir holding
    another job, or a missing ``resume=`` / ``ckpt_path=`` checkpoint, fails here."""
    plan_run(job_dir, overrides, _planned_value(config, overrides, "resume"),
             _planned_value(config, overrides, "ckpt_path"),
             bool(_planned_value(config, overrides, "auto_resume")))


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job the basic sweeper launches for ``config``, in Hydra's job
    order (``BasicSweeper.split_arguments``); ``None`` when the jobs cannot be known in advance
    (another sweeper)."""
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    arguments = [str(o) for o in config.hydra.overrides.task]
    parsed = OverridesParser.create().parse_overrides(params + arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


class RelaunchGuard(_HydraCallback):  # type: ignore[misc,valid-type]
    """Refuses a launch that would put a job into a dir holding another job, at the start of
    the launch: before the sweeper writes ``multirun.yaml`` and before Hydra writes any job's
    ``.hydra/`` (``hydra.core.utils.run_job``), so a refused relaunch changes no byte of the
    dir. One line, exit status 2 (Hydra turns a callback's exception into a warning, hence the
    exit from here). A relaunch with the same overrides passes: its jobs skip or resume.

    Basic sweeper (every launcher): each job of the launch is checked in
    ``<sweep dir>/<job number>``. Optuna: its trials are numbered 0.. again in every launch with
    new parameters, so a sweep dir that already holds jobs is refused (the study continues from
    its database, in a new sweep dir). A single run: its ``hydra.run.dir``.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from diffusion_seg.cli.errors import user_errors

        with user_errors():
            _check_job_dir(config, Path(str(config.hydra.run.dir)), [str(o) for o in config.hydra.overrides.task])

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from diffusion_seg.cli.errors import user_errors

        with user_errors():
            check_sweep_dir(config)


def check_sweep_dir(config: DictConfig) -> None:
    """:class:`RelaunchGuard`'s check of a multirun (see there)."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if not sweep_dir.is_dir():
        return
    arguments = [str(o) for o in config.hydra.overrides.task]
    if config.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER:
        held = sorted(p.name for p in sweep_dir.iterdir() if (p / JOB_FILE).is_file())
        if held and (_planned_value(config, arguments, "auto_resume") and not _planned_value(config, arguments, "resume")
                     and not _planned_value(config, arguments, "ckpt_path")):
            raise ConfigError(
                f"hydra.sweep.dir={sweep_dir} already holds the jobs of a search ({', '.join(held[:5])}"
                f"{', …' if len(held) > 5 else ''}): an Optuna launch numbers its trials 0.. again with new "
                f"parameters. Leave hydra.sweep.dir out (study {config.hydra.sweeper.get('study_name')} "
                "continues from its database) or give a new one; nothing was written."
            )
        return
    jobs = sweep_jobs(config)
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if jobs is None or subdir != "${hydra.job.num}":
        return  # job dirs unknown before the launch: each job checks its own (plan_run)
    refused = []
    for num, overrides in enumerate(jobs):
        try:
            _check_job_dir(config, sweep_dir / str(num), overrides)
        except ConfigError as err:
            refused.append(str(err))
    if refused:
        more = f" ({len(refused)} of the {len(jobs)} jobs of this launch meet such a dir)" if len(refused) > 1 else ""
        raise ConfigError(f"{refused[0].rstrip('.')}{more}; nothing was written.")


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
            detail += f" from {attempts[0]['reused']}" if action == "reuse" else ""
            if len(attempts) > 1:
                detail += f", continued {len(attempts) - 1}× (requeued)"
            log.info("Sweep job %s: %s%s; now %s", job.name, WORDS.get(action, action), detail, outcome)
        if counts:
            log.info(
                "Sweep %s: %s",
                sweep_dir,
                ", ".join(f"{counts[a]} {WORDS[a]}" for a in WORDS if counts.get(a)),
            )
