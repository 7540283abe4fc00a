"""Sweeps that survive: a job dir that holds its job is skipped (finished) or resumed
(last.ckpt), a launch into a dir holding another job is refused before any file is written,
each job records its own overrides, config and attempt times, and an Optuna search keeps its
study — one per data, experiment and search space — in SQLite and continues it."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest
import torch
import yaml

from diffusion_seg.checkpoints import load_checkpoint_file
from diffusion_seg.errors import CheckpointNotFoundError, ConfigError
from diffusion_seg.jobs import (
    CONFIG_FILE,
    FINISHED_FILE,
    JOB_FILE,
    RunPlan,
    end_attempts,
    job_overrides,
    plan_run,
    record_attempt,
    write_finished,
)
from diffusion_seg.sweeps import register_sweep_resolvers

from .conftest import FAST_TRAIN, run_cli
from .test_safety import train_steps

OVERRIDES = ["model=fcn", "seed=1", "~callbacks.model_summary"]


def make_job(tmp_path: Path, overrides=OVERRIDES, ckpt=False, finished=False) -> Path:
    job = tmp_path / "0"
    record_attempt(job, overrides, RunPlan("start"))
    if ckpt:
        (job / "checkpoints").mkdir()
        torch.save({"global_step": 3}, job / "checkpoints" / "last.ckpt")
    if finished:
        write_finished(job, overrides, {"val/mIoU": 0.5}, epoch=2, global_step=8)
    return job


def test_plan_starts_resumes_skips(tmp_path):
    assert plan_run(tmp_path / "new", OVERRIDES).action == "start"
    job = make_job(tmp_path)
    assert plan_run(job, OVERRIDES).action == "start"  # started, nothing saved yet
    job = make_job(tmp_path, ckpt=True)
    plan = plan_run(job, list(reversed(OVERRIDES)) + ["auto_resume=true"])  # order, neutral keys
    assert plan.action == "resume" and plan.ckpt_path == str(job / "checkpoints" / "last.ckpt")
    write_finished(job, OVERRIDES, {"val/mIoU": 0.5}, epoch=2, global_step=8)
    plan = plan_run(job, OVERRIDES)
    assert plan.action == "skip" and plan.finished["metrics"] == {"val/mIoU": 0.5}
    assert plan_run(job, OVERRIDES, auto_resume=False).action == "start"


def test_a_dir_holding_another_job_is_refused(tmp_path):
    job = make_job(tmp_path, ckpt=True)
    other = ["model=fcn", "seed=3", "~callbacks.model_summary"]
    with pytest.raises(ConfigError, match=r"holds another job: its overrides are .*'seed=1'.*this job's .*'seed=3'"):
        plan_run(job, other)
    plan = plan_run(job, [*other, "auto_resume=false"], auto_resume=False)  # train it over
    assert plan.action == "start"
    record_attempt(job, other, plan)
    assert yaml.safe_load((job / JOB_FILE).read_text())["overrides"] == job_overrides(other)


def test_explicit_resume_wins_and_fails_early(tmp_path):
    job = make_job(tmp_path, ckpt=True, finished=True)
    plan = plan_run(job, ["trainer.max_epochs=20"], resume=str(job))  # train a finished run longer
    assert plan.action == "resume" and plan.ckpt_path.endswith("last.ckpt")
    record_attempt(job, ["trainer.max_epochs=20"], plan)
    assert not (job / FINISHED_FILE).exists()  # written anew at the end
    record = yaml.safe_load((job / JOB_FILE).read_text())
    assert record["overrides"] == job_overrides(OVERRIDES)  # the job's identity stays
    assert [a["action"] for a in record["attempts"]] == ["start", "resume"]
    with pytest.raises(CheckpointNotFoundError):
        plan_run(job, OVERRIDES, ckpt_path=str(tmp_path / "none.ckpt"))


def test_sqlite_resolver_makes_the_directory(tmp_path):
    from omegaconf import OmegaConf

    register_sweep_resolvers()
    cfg = OmegaConf.create({"db": f"${{ds_sqlite:{tmp_path}/a/b/study.db}}",
                            "gpus": "${ds_gpus:gpu,8}", "cpu": "${ds_gpus:cpu,2}"})
    assert cfg.db == f"sqlite:///{tmp_path}/a/b/study.db" and (tmp_path / "a" / "b").is_dir()
    assert cfg.gpus == 8 and cfg.cpu is None


@pytest.mark.parametrize("search, model", [("pdn_optuna", "pdn"), ("difnet_optuna", "difnet")])
def test_search_configs_name_existing_keys_and_a_fixed_study_file(search, model, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from .conftest import compose_config

    register_sweep_resolvers()
    monkeypatch.setenv("DIFFUSION_SEG_LOGS", str(tmp_path))
    cfg = compose_config([f"hparams_search={search}", f"model={model}"], output_dir=tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/mIoU" and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    for key in sweeper.params:  # every searched key is a key of the run config
        assert OmegaConf.select(cfg, key) is not None, key
    assert "task.new_lr_mult" in sweeper.params
    assert sweeper.study_name.startswith(f"{model}_train_synthetic_")  # no date in it
    assert sweeper.storage == f"sqlite:///{tmp_path}/optuna/{sweeper.study_name}.db"


@pytest.mark.slow
def test_relaunched_sweep_skips_finished_jobs_and_resumes_the_interrupted_one(tmp_path):
    # 2 jobs × 8 steps (2 epochs of 4). Job 1 gets a real SIGTERM after step 5, mid-epoch: the
    # whole multirun stops, as when the machine running it is told to stop.
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=1,2", *FAST_TRAIN, "trainer.max_epochs=2", "test_after_training=false",
            "+callbacks.kill._target_=tests.test_safety.SignalAtStep", "+callbacks.kill.step=5",
            "+callbacks.kill.job=1", f"+callbacks.kill.once_file={tmp_path / 'killed'}",
            f"hydra.sweep.dir={sweep}"]
    proc = run_cli("diffusion_seg.train", *args, log_dir=tmp_path, check=False)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.stdout + proc.stderr)[-3000:]
    job0, job1 = sweep / "0", sweep / "1"
    assert yaml.safe_load((job0 / FINISHED_FILE).read_text())["global_step"] == 8
    assert not (job1 / FINISHED_FILE).exists()
    assert load_checkpoint_file(job1 / "checkpoints" / "last.ckpt")["global_step"] == 5

    # The same command again: job 0 is skipped, job 1 continues at step 5 (same dirs, numbers).
    proc = run_cli("diffusion_seg.train", *args, log_dir=tmp_path)
    out = proc.stdout + proc.stderr
    assert "Skipped: this job finished before (epoch 2, step 8, val/mIoU=" in out
    assert f"Resuming from {job1 / 'checkpoints' / 'last.ckpt'} (auto_resume" in out
    assert "Training continues at epoch 1, step 5" in out
    assert "Sweep job 0: skipped (finished before); now finished" in out
    assert "Sweep job 1: resumed from" in out and "1 skipped (finished before), 1 resumed" in out
    finished = [yaml.safe_load((j / FINISHED_FILE).read_text()) for j in (job0, job1)]
    assert [f["global_step"] for f in finished] == [8, 8]  # the interrupted job = the other
    assert train_steps(job1) == list(range(8))
    # Each attempt recorded its end, the one stopped by SIGTERM too: the report sums the two.
    killed, resumed = yaml.safe_load((job1 / JOB_FILE).read_text())["attempts"]
    assert (killed["action"], resumed["action"]) == ("start", "resume")
    assert killed["time"] < killed["end"] <= resumed["time"] < resumed["end"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]

    # Both finished: a third launch trains nothing and returns the recorded metrics.
    csv_before = (job1 / "csv" / "metrics.csv").read_text()
    proc = run_cli("diffusion_seg.train", *args, log_dir=tmp_path)
    out = proc.stdout + proc.stderr
    assert out.count("Skipped: this job finished before") == 2 and "2 skipped (finished before)" in out
    assert "Training continues" not in out and "Starting from scratch" not in out
    assert (job1 / "csv" / "metrics.csv").read_text() == csv_before


@pytest.mark.slow
def test_optuna_search_writes_its_sqlite_study_and_continues_it(tmp_path, monkeypatch):
    """One CLI search of 2 trials into a study that already holds trial 0, as a previous
    invocation leaves it: the search finds it by its fixed name and file (no date in either)
    and goes on from trial 1. A search on other data opens its own study: its best value is
    one of its own trials, never the first search's."""
    import optuna

    from .conftest import compose_config

    register_sweep_resolvers()
    monkeypatch.setenv("DIFFUSION_SEG_LOGS", str(tmp_path))
    args = ["hparams_search=pdn_optuna", "model=pdn", "model.hidden=8", "model.layers=1",
            "model.neighbors=8", *FAST_TRAIN, "test_after_training=false"]
    name = compose_config(args, output_dir=tmp_path).hydra.sweeper.study_name
    db = tmp_path / "optuna" / f"{name}.db"  # <paths.log_dir>/optuna/<study_name>.db
    db.parent.mkdir()
    previous = optuna.create_study(study_name=name, storage=f"sqlite:///{db}", direction="maximize")
    previous.tell(previous.ask(), 0.05)

    proc = run_cli("diffusion_seg.train", *args, "hydra.sweeper.n_trials=2", log_dir=tmp_path)
    assert f"Storage: sqlite:///{db}" in proc.stdout + proc.stderr
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    new = study.trials[1:]
    assert all(t.state == optuna.trial.TrialState.COMPLETE and 0 <= t.value <= 1 for t in new)
    assert set(new[0].params) == {"optimizer.lr", "task.new_lr_mult"}  # layers, neighbours fixed above
    # Each trial is a job of the sweep dir, with the metric it returned recorded.
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    recorded = [yaml.safe_load((sweep / str(i) / FINISHED_FILE).read_text())["metrics"]["val/mIoU"] for i in (0, 1)]
    assert recorded == pytest.approx([t.value for t in new])

    previous.tell(previous.ask(), 0.99)  # the first study's best is now far above anything here
    other = [*args, "dataset.length=16"]
    proc = run_cli("diffusion_seg.train", *other, "hydra.sweeper.n_trials=1", log_dir=tmp_path)
    other_name = compose_config(other, output_dir=tmp_path).hydra.sweeper.study_name
    assert other_name != name and f"Study name: {other_name}" in proc.stdout + proc.stderr
    (trial,) = optuna.load_study(study_name=other_name, storage=f"sqlite:///{db.parent / other_name}.db").trials
    assert f"Best value: {trial.value}" in proc.stdout + proc.stderr
    assert len(optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials) == 4


def test_a_job_records_its_config_and_the_end_of_each_attempt(tmp_path):
    from omegaconf import OmegaConf

    job = tmp_path / "0"
    first = OmegaConf.create({"model": {"neighbors": 24}, "hidden": "${model.neighbors}"})
    record_attempt(job, OVERRIDES, RunPlan("start"), first)
    end_attempts()
    assert yaml.safe_load((job / CONFIG_FILE).read_text()) == {"model": {"neighbors": 24}, "hidden": 24}
    # A resume or a skip keeps the record of the first start: the config is what the job ran.
    record_attempt(job, OVERRIDES, RunPlan("resume", "x.ckpt"), OmegaConf.create({"model": {"neighbors": 48}}))
    record_attempt(job, OVERRIDES, RunPlan("skip"), OmegaConf.create({"model": {"neighbors": 48}}))
    assert yaml.safe_load((job / CONFIG_FILE).read_text())["model"]["neighbors"] == 24
    end_attempts()
    attempts = yaml.safe_load((job / JOB_FILE).read_text())["attempts"]
    assert [a["action"] for a in attempts] == ["start", "resume", "skip"]
    assert all(a["end"] >= a["time"] for a in attempts[:2]) and "end" not in attempts[2]
    end_attempts()  # nothing open: no attempt of another process is touched
    assert yaml.safe_load((job / JOB_FILE).read_text())["attempts"] == attempts


def test_the_optuna_study_is_named_after_data_experiment_and_search_space(tmp_path, monkeypatch):
    """Two searches share a study (and its SQLite file) only when they would compare like
    with like: same command-line overrides of the run config, same search space."""
    from .conftest import compose_config

    register_sweep_resolvers()
    monkeypatch.setenv("DIFFUSION_SEG_LOGS", str(tmp_path))

    def study(*overrides: str) -> str:
        return compose_config(["hparams_search=pdn_optuna", *overrides], output_dir=tmp_path).hydra.sweeper.study_name

    synthetic = study("model=pdn")
    assert study("model=pdn") == synthetic  # the same command continues its study
    others = [
        study("model=pdn", "dataset=folder", "dataset.root=/data/a"),
        study("model=pdn", "dataset=folder", "dataset.root=/data/b"),
        study("experiment=pdn_24nb_1m_ade20k"),
        study("model=pdn", "model.layers=2"),  # fixed: another search space
        study("model=pdn", "+hydra.sweeper.params.seed='choice(1,2)'"),
        study("model=pdn", "trainer.max_epochs=3"),
    ]
    assert len({synthetic, *others}) == 1 + len(others)
    assert others[0].startswith("pdn_train_folder_") and others[2].startswith("pdn_pdn_24nb_1m_ade20k_")
    assert study("model=pdn", "auto_resume=false") == synthetic  # not part of what a trial computes


def sweep_bytes(sweep: Path) -> dict[str, str]:
    """Every file under the sweep dir (hidden ones too) → its SHA-256."""
    return {str(p.relative_to(sweep)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(sweep.rglob("*")) if p.is_file()}


def hydra_jobs(*overrides: str) -> list[list[str]]:
    """The overrides Hydra's basic sweeper hands each job of ``-m <overrides>``, as the job
    records them (normalised by Hydra: ``false`` → ``False``, ``~key`` → ``~key=null``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def finished_sweep(sweep: Path, *overrides: str) -> None:
    """The finished sweep ``-m <overrides>`` as its jobs and Hydra leave it: each job's
    records and .hydra/, and multirun.yaml."""
    for num, overrides in enumerate(hydra_jobs(*overrides)):
        job = sweep / str(num)
        record_attempt(job, overrides, RunPlan("start"))
        end_attempts()
        write_finished(job, overrides, {"val/mIoU": 0.5 + num / 10}, epoch=0, global_step=4)
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"neighbors": num}}))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")


SWEEP = ["model=pdn", "model.hidden=8", "model.layers=1", *FAST_TRAIN, "test_after_training=false"]
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "submitit_local": ["hydra/launcher=submitit_local"]}


def test_the_guard_checks_every_job_of_a_launch_before_it_starts(tmp_path):
    """check_sweep_dir (RelaunchGuard.on_multirun_start) on the multirun config: the jobs of
    the basic sweeper in Hydra's order against the dirs they would land in."""
    from omegaconf import open_dict, read_write

    from diffusion_seg.sweeps import check_sweep_dir, sweep_jobs

    from .conftest import compose_config

    sweep = tmp_path / "sweep"
    finished_sweep(sweep, "model.neighbors=8,24", *SWEEP)
    cfg = compose_config(["model=pdn"], output_dir=tmp_path)

    def launch(*overrides: str) -> None:
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.sweep.dir = str(sweep)
            cfg.hydra.overrides.task = list(overrides)
        check_sweep_dir(cfg)

    launch("model.neighbors=8,24", *SWEEP)  # the same sweep: its jobs skip
    with pytest.raises(ConfigError, match=r"sweep/1 holds another job: .*'model.neighbors=24'.*'model.neighbors=48'.*nothing was written"):
        launch("model.neighbors=8,48", *SWEEP)
    with pytest.raises(ConfigError, match=r"sweep/0 holds another job.*\(2 of the 3 jobs of this launch"):
        launch("model.neighbors=24,8,48", *SWEEP)  # another order numbers the jobs otherwise
    launch("model.neighbors=8,48", *SWEEP, "auto_resume=false")  # asked for: trains over job 1
    launch("model.neighbors=8,24,48", *SWEEP)  # one more job, in a new dir
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.overrides.task = ["model.neighbors=8,24", "seed=1,2"]
    assert sweep_jobs(cfg) == [["model.neighbors=8", "seed=1"], ["model.neighbors=8", "seed=2"],
                               ["model.neighbors=24", "seed=1"], ["model.neighbors=24", "seed=2"]]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_refused_relaunch_changes_no_byte_of_the_sweep_dir(launcher, tmp_path):
    """model.neighbors=8,24 finished; a relaunch of 8,48 into the same dir stops with one line
    before Hydra writes multirun.yaml or job 1's .hydra/ (which the report used to read)."""
    sweep = tmp_path / "sweep"
    finished_sweep(sweep, "model.neighbors=8,24", *SWEEP)
    before = sweep_bytes(sweep)
    proc = run_cli("diffusion_seg.train", "-m", "model.neighbors=8,48", *SWEEP, *LAUNCHERS[launcher],
                   f"hydra.sweep.dir={sweep}", log_dir=tmp_path, check=False)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{sweep / '1'} holds another job" in errors[0] and "'model.neighbors=24'" in errors[0]
    assert "'model.neighbors=48'" in errors[0] and "nothing was written" in errors[0]
    assert sweep_bytes(sweep) == before


@pytest.mark.slow
def test_a_refused_run_into_a_fixed_run_dir_changes_no_byte(tmp_path):
    run_dir = tmp_path / "run"
    finished_sweep(run_dir, "model.neighbors=24", *SWEEP)
    before = sweep_bytes(run_dir)
    proc = run_cli("diffusion_seg.train", "model.neighbors=48", *SWEEP, f"hydra.run.dir={run_dir / '0'}",
                   log_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "holds another job" in proc.stderr, proc.stderr[-3000:]
    assert sweep_bytes(run_dir) == before


@pytest.mark.slow
def test_an_optuna_search_into_a_sweep_dir_holding_jobs_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    finished_sweep(sweep, "model.neighbors=8", *SWEEP)
    before = sweep_bytes(sweep)
    proc = run_cli("diffusion_seg.train", "hparams_search=pdn_optuna", *SWEEP, "hydra.sweeper.n_trials=1",
                   f"hydra.sweep.dir={sweep}", log_dir=tmp_path, check=False)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert "already holds the jobs of a search" in proc.stderr and "Leave hydra.sweep.dir out" in proc.stderr
    assert sweep_bytes(sweep) == before


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_relaunch_with_the_same_overrides_skips_through_every_launcher(launcher, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep = tmp_path / "sweep"
    finished_sweep(sweep, "model.neighbors=8,24", *SWEEP)
    records = {p: (sweep / p).read_bytes() for p in ("0/finished.yaml", "1/finished.yaml")}
    proc = run_cli("diffusion_seg.train", "-m", "model.neighbors=8,24", *SWEEP, *LAUNCHERS[launcher],
                   f"hydra.sweep.dir={sweep}", log_dir=tmp_path)
    out = proc.stdout + proc.stderr
    assert "2 skipped (finished before)" in out or launcher == "submitit_local", out[-3000:]
    assert {p: (sweep / p).read_bytes() for p in records} == records
    for num in (0, 1):
        assert [a["action"] for a in yaml.safe_load((sweep / str(num) / JOB_FILE).read_text())["attempts"]] == ["start", "skip"]


@pytest.mark.slow
def test_the_walk_of_issue_18_a_refused_relaunch_then_the_report(tmp_path, capsys):
    """A real sweep of model.neighbors=8,24; a relaunch of 8,48 into its dir is refused and
    changes no byte; the report shows the 24-neighbour run as 24; the same sweep again skips."""
    from diffusion_seg.cli.report import main as report

    sweep = tmp_path / "sweep"
    run_cli("diffusion_seg.train", "-m", "model.neighbors=8,24", *SWEEP, f"hydra.sweep.dir={sweep}", log_dir=tmp_path)
    for num, neighbors in enumerate((8, 24)):
        assert yaml.safe_load((sweep / str(num) / CONFIG_FILE).read_text())["model"]["neighbors"] == neighbors
        (attempt,) = yaml.safe_load((sweep / str(num) / JOB_FILE).read_text())["attempts"]
        assert attempt["action"] == "start" and attempt["end"] > attempt["time"]
    before = sweep_bytes(sweep)
    proc = run_cli("diffusion_seg.train", "-m", "model.neighbors=8,48", *SWEEP, f"hydra.sweep.dir={sweep}",
                   log_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "holds another job" in proc.stderr, proc.stderr[-3000:]
    assert sweep_bytes(sweep) == before

    assert report([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "| `model.neighbors=24` | 1 |" in text and "model.neighbors=48" not in text
    assert " model.neighbors=8,24 model=pdn " in text and str(tmp_path) not in text

    proc = run_cli("diffusion_seg.train", "-m", "model.neighbors=8,24", *SWEEP, f"hydra.sweep.dir={sweep}", log_dir=tmp_path)
    assert "2 skipped (finished before)" in proc.stdout + proc.stderr
    after = sweep_bytes(sweep)
    assert all(after[f"{n}/{name}"] == before[f"{n}/{name}"] for n in (0, 1) for name in (FINISHED_FILE, CONFIG_FILE))


def finished_job(root: Path, name: str, config: dict, status: str = "finished") -> Path:
    """A job dir under ``root`` as a job that ran ``config`` leaves it (config paths inside it)."""
    from omegaconf import OmegaConf

    job = root / name
    config = {**config, "paths": {"output_dir": str(job)},
              "callbacks": {"checkpoint": {"dirpath": str(job / "checkpoints")}}}
    record_attempt(job, OVERRIDES, RunPlan("start"), OmegaConf.create(config))
    end_attempts()
    write_finished(job, OVERRIDES, {"test/mIoU": 0.5}, status=status)
    return job


def test_a_job_reuses_only_a_finished_job_that_computed_the_same(tmp_path):
    """find_reusable: the same config but for the study, the paths and the loggers (paths
    inside each job's own dir compared relative to it), the same code; not a diverged job,
    not a reuse, not the job itself."""
    from diffusion_seg.jobs import computed_config, find_reusable

    root = tmp_path / "studies"
    config = {"model": {"layers": 4}, "seed": 1}
    source = finished_job(root / "far" / "s1", "0", {**config, "study": {"name": "far"}, "task_name": "a"})
    me = tmp_path / "me"
    mine = {**config, "study": {"name": "layers"}, "task_name": "b", "logger": {"csv": {"save_dir": str(me)}},
            "paths": {"output_dir": str(me)}, "callbacks": {"checkpoint": {"dirpath": str(me / "checkpoints")}}}
    assert computed_config(mine) == computed_config(yaml.safe_load((source / CONFIG_FILE).read_text()))
    assert find_reusable(root, mine, me) == source
    assert find_reusable(root, {**mine, "seed": 2}, me) is None           # another seed computes another thing
    assert find_reusable(root, {**mine, "model": {"layers": 1}}, me) is None
    assert find_reusable(root, {**mine, "model": {"layers": 4.0}}, me) == source  # 4.0 computes what 4 does
    assert find_reusable(root, {**mine, "model": {"layers": 4.5}}, me) is None
    assert find_reusable(root, mine, source) is None                       # never itself
    assert find_reusable(tmp_path / "nowhere", mine, me) is None
    record = yaml.safe_load((source / JOB_FILE).read_text())
    (source / JOB_FILE).write_text(yaml.safe_dump({**record, "code": "another"}))  # other code
    assert find_reusable(root, mine, me) is None
    (source / JOB_FILE).write_text(yaml.safe_dump(record))
    finished_job(root / "far" / "s0", "0", config, status="diverged")      # first in path order
    assert find_reusable(root, mine, me) == source


def test_a_study_trains_a_setting_another_study_ran_once(tmp_path):
    """Two sweeps with reuse_from: the second's job that the first ran (same config and code;
    only task_name and the dirs differ) copies its records instead of training, the sweep log
    and the report say so, and the time is the original's; its other job trains."""
    import csv

    studies = tmp_path / "studies"
    common = [*FAST_TRAIN, "test_after_training=false", f"reuse_from={studies}"]
    first, second = studies / "a" / "sweep", studies / "b" / "sweep"
    run_cli("diffusion_seg.train", "-m", "seed=1", "task_name=a", *common, f"hydra.sweep.dir={first}",
            log_dir=tmp_path)
    proc = run_cli("diffusion_seg.train", "-m", "seed=2,1", "task_name=b", *common,
                   f"hydra.sweep.dir={second}", log_dir=tmp_path)
    out = proc.stdout + proc.stderr
    source, reused, trained = first / "0", second / "1", second / "0"
    assert f"Sweep job 1: reused (the same job finished elsewhere) from {source.resolve()}" in out
    assert "1 reused (the same job finished elsewhere), 1 started" in out
    marker = yaml.safe_load((reused / FINISHED_FILE).read_text())
    original = yaml.safe_load((source / FINISHED_FILE).read_text())
    assert marker["reused_from"] == str(source.resolve()) and "reused_from" not in original
    assert marker["metrics"] == original["metrics"] and marker["overrides"] != original["overrides"]
    assert (reused / "csv" / "metrics.csv").read_bytes() == (source / "csv" / "metrics.csv").read_bytes()
    assert (reused / "checkpoints").is_symlink() and (reused / "checkpoints" / "last.ckpt").is_file()
    assert yaml.safe_load((reused / CONFIG_FILE).read_text())["task_name"] == "b"
    assert "reused_from" not in yaml.safe_load((trained / FINISHED_FILE).read_text())

    from diffusion_seg.cli.report import main as report

    assert report([str(second)]) == 0
    report_md = (second / "report.md").read_text()
    assert "1 of the 2 runs were not trained again" in report_md and "- `1` ← `../../a/sweep/0`" in report_md
    with open(second / "runs.csv") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert rows["1"]["reused_from"] == "../../a/sweep/0" and rows["0"]["reused_from"] == ""
    assert report([str(first)]) == 0
    with open(first / "runs.csv") as f:
        minutes = next(csv.DictReader(f))["minutes"]
    assert rows["1"]["minutes"] == minutes  # the original's time, not the copy's
