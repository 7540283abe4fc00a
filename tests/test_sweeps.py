"""Sweeps that survive: a job dir that holds its job is skipped (finished) or resumed
(last.ckpt), a dir holding another job is refused, and an Optuna search keeps its study in
SQLite and continues it."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import yaml

from diffusion_seg.errors import ConfigError
from diffusion_seg.lightning.checkpoint import CheckpointNotFoundError, load_checkpoint_file
from diffusion_seg.lightning.sweeps import (
    JOB_FILE,
    FINISHED_FILE,
    RunPlan,
    job_overrides,
    plan_run,
    record_attempt,
    register_sweep_resolvers,
    write_finished,
)

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
    assert sweeper.storage == f"sqlite:///{tmp_path}/optuna/{model}_train.db"  # no date in it


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
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]

    # Both finished: a third launch trains nothing and returns the recorded metrics.
    csv_before = (job1 / "csv" / "metrics.csv").read_text()
    proc = run_cli("diffusion_seg.train", *args, log_dir=tmp_path)
    out = proc.stdout + proc.stderr
    assert out.count("Skipped: this job finished before") == 2 and "2 skipped (finished before)" in out
    assert "Training continues" not in out and "Starting from scratch" not in out
    assert (job1 / "csv" / "metrics.csv").read_text() == csv_before


@pytest.mark.slow
def test_optuna_search_writes_its_sqlite_study_and_continues_it(tmp_path):
    """One CLI search of 2 trials into a study that already holds trial 0, as a previous
    invocation leaves it: the search finds it by its fixed name and file (no date in either)
    and goes on from trial 1."""
    import optuna

    db = tmp_path / "optuna" / "pdn_train.db"  # <paths.log_dir>/optuna/<study_name>.db
    db.parent.mkdir()
    previous = optuna.create_study(study_name="pdn_train", storage=f"sqlite:///{db}", direction="maximize")
    previous.tell(previous.ask(), 0.05)

    args = ["hparams_search=pdn_optuna", "model=pdn", "model.hidden=8", "model.layers=1",
            "model.neighbors=8", *FAST_TRAIN, "test_after_training=false", "hydra.sweeper.n_trials=2"]
    proc = run_cli("diffusion_seg.train", *args, log_dir=tmp_path)
    assert f"Storage: sqlite:///{db}" in proc.stdout + proc.stderr
    study = optuna.load_study(study_name="pdn_train", storage=f"sqlite:///{db}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    new = study.trials[1:]
    assert all(t.state == optuna.trial.TrialState.COMPLETE and 0 <= t.value <= 1 for t in new)
    assert set(new[0].params) == {"optimizer.lr", "task.new_lr_mult"}  # layers, neighbours fixed above
    # Each trial is a job of the sweep dir, with the metric it returned recorded.
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    recorded = [yaml.safe_load((sweep / str(i) / FINISHED_FILE).read_text())["metrics"]["val/mIoU"] for i in (0, 1)]
    assert recorded == pytest.approx([t.value for t in new])
