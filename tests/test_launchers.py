"""Hydra launchers: hydra/launcher=submitit_slurm | submitit_local | joblib. Their resources
follow the trainer, the SLURM script asks for one task per GPU with a requeue signal, and a
2-job multirun runs through submitit_local and through joblib on CPU."""

from __future__ import annotations

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion_seg.jobs import FINISHED_FILE
from diffusion_seg.sweeps import register_sweep_resolvers

from .conftest import FAST_TRAIN, compose_config, run_cli

register_sweep_resolvers()
# Our launcher files carry the plugins' names; diffusion_seg.train silences Hydra's warning too.
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated against ConfigStore")


def launcher(overrides, tmp_path):
    cfg = compose_config(overrides, output_dir=tmp_path)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_resources_follow_the_trainer(tmp_path):
    # The README's paper row on 2 nodes × 8 GPUs.
    params = launcher(["hydra/launcher=submitit_slurm", "experiment=pdn_24nb_2m_ade20k_syncbn",
                       "trainer.num_nodes=2", "dataset.batch_size=1"], tmp_path)
    assert params["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 8, 8)
    assert params["name"] == "pdn_24nb_2m_ade20k_syncbn"
    assert params["max_num_timeout"] > 0 and params["signal_delay_s"] > 0
    # A CPU trainer asks for no GPU; submitit_local runs one process per job.
    assert launcher(["hydra/launcher=submitit_slurm", "trainer=ddp_cpu"], tmp_path)["gpus_per_node"] is None
    local = launcher(["hydra/launcher=submitit_local", "trainer=gpu"], tmp_path)
    assert (local["tasks_per_node"], local["gpus_per_node"]) == (1, 1)
    assert launcher(["hydra/launcher=joblib"], tmp_path)["_target_"].endswith("JoblibLauncher")


def test_sbatch_script_of_a_two_node_row(tmp_path, monkeypatch):
    """The sbatch header submitit writes from our config (built as the plugin builds its
    executor, hydra_submitit_launcher 1.2 ``BaseSubmititLauncher.launch``)."""
    import submitit

    srun = tmp_path / "bin" / "srun"  # submitit's SLURM executor looks for srun
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}:{__import__('os').environ['PATH']}")

    params = launcher(["hydra/launcher=submitit_slurm", "experiment=pdn_24nb_2m_ade20k_syncbn",
                       "trainer.num_nodes=2", "dataset.batch_size=1", "hydra.launcher.partition=gpu",
                       "hydra.launcher.account=proj", "hydra.launcher.mem_gb=400"], tmp_path)
    assert instantiate({**params, "submitit_folder": str(tmp_path)}).params["nodes"] == 2  # the plugin takes every key
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path, slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name", "stderr_to_stdout"}
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("_target_", "submitit_folder")})
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--signal=USR2@120",
                 "--partition=gpu", "--account=proj", "--mem=400GB", "--time=1440",
                 "--job-name=pdn_24nb_2m_ade20k_syncbn"):
        assert f"#SBATCH {line}\n" in script, line
    assert "\nsrun " in script


def test_missing_plugin_gives_the_install_command(monkeypatch):
    import importlib.util

    from diffusion_seg.cli import train
    from diffusion_seg.errors import ConfigError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r'hydra/launcher=joblib needs the Hydra plugins of the `cluster` extra: pip install -e "\.\[cluster\]"'):
        train.check_cluster_plugins(["seed=1", "hydra/launcher=joblib"])
    with pytest.raises(ConfigError, match="hparams_search=pdn_optuna needs"):
        train.check_cluster_plugins(["hparams_search=pdn_optuna"])
    train.check_cluster_plugins(["hydra/launcher=basic", "hparams_search=null"])


def finished_jobs(log_dir):
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    return sweep, [yaml.safe_load((j / FINISHED_FILE).read_text()) for j in jobs]


@pytest.mark.slow
def test_two_jobs_through_submitit_local(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the two jobs run at once
    run_cli("diffusion_seg.train", "-m", "hydra/launcher=submitit_local", "seed=1,2", *FAST_TRAIN,
            "test_after_training=false", log_dir=tmp_path)
    sweep, finished = finished_jobs(tmp_path)
    assert [f["status"] for f in finished] == ["finished", "finished"]
    assert ["seed=1" in f["overrides"] for f in finished] == [True, False]
    assert all("val/mIoU" in f["metrics"] for f in finished)
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # run by submitit's job pickles


@pytest.mark.slow
def test_two_jobs_in_parallel_through_joblib(tmp_path):
    proc = run_cli("diffusion_seg.train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "seed=1,2", *FAST_TRAIN, "test_after_training=false", log_dir=tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    _, finished = finished_jobs(tmp_path)
    assert [f["status"] for f in finished] == ["finished", "finished"]
    assert all("val/mIoU" in f["metrics"] for f in finished)
