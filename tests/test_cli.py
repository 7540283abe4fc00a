"""End to end through the command line, as a user runs it: train, resume, multirun, W&B
offline, DDP on CPU, eval, seeding and config errors."""

import csv

import pytest
import yaml

from .conftest import FAST_TRAIN, run_cli, run_dirs

pytestmark = pytest.mark.slow


def read_metrics(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def train_losses(rows):
    return [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    proc = run_cli("diffusion_seg.train", *FAST_TRAIN, "logger=many", log_dir=log_dir)
    return log_dir, run_dirs(log_dir)[0], proc


def test_train_prints_table_and_writes_checkpoints_and_logs(first_run):
    _, run_dir, proc = first_run
    out = proc.stdout + proc.stderr
    assert "val metrics" in out and "disk_red" in out and "mIoU" in out and "test metrics" in out
    assert f"Run dir: {run_dir}" in out
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(n.startswith("epoch001-") for n in ckpts)  # README, "Epochs and steps"
    rows = read_metrics(run_dir)
    assert any(r.get("val/mIoU") for r in rows) and train_losses(rows)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents*"))
    # W&B offline: a run directory with the logged history, and its id kept for resuming.
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1 and list(wandb_runs[0].glob("*.wandb"))
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert wandb_runs[0].name.endswith(run_id)
    records = next(wandb_runs[0].glob("*.wandb")).read_bytes()  # the run's history records
    assert b"val/mIoU" in records and b"train/loss" in records and b"val/IoU/disk_red" in records


def test_train_log_holds_what_the_terminal_showed(first_run):
    """Every line the terminal showed (the config, Lightning's messages, the metric tables, the
    final frame of each progress bar) is in train.log, which held only the 6 logger lines
    before; a progress bar is not copied once per redraw."""
    _, run_dir, proc = first_run
    logged = (run_dir / "train.log").read_text().splitlines()
    shown = [line.rstrip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    missing = [line for line in shown if line not in set(logged)]
    assert not missing, missing[:10]
    text = "\n".join(logged)
    assert "val metrics (epoch" in text and "test metrics (epoch" in text and "Test metric" in text
    assert sum(line.startswith("Epoch ") for line in logged) <= 2


def test_resume_continues_in_the_same_run_dir_from_the_last_step(first_run):
    log_dir, run_dir, _ = first_run
    last_step = max(s for s, _ in train_losses(read_metrics(run_dir)))
    proc = run_cli("diffusion_seg.train", *FAST_TRAIN, "logger=many", f"resume={run_dir}",
                   "trainer.max_epochs=2", log_dir=log_dir)
    assert "Resuming from" in proc.stdout + proc.stderr
    assert run_dirs(log_dir) == [run_dir]  # no new dated dir
    steps = [s for s, _ in train_losses(read_metrics(run_dir))]
    resumed = [s for s in steps if s > last_step]
    assert resumed and min(resumed) == last_step + 1  # the second run starts at the first's step
    assert steps[: last_step + 1] == list(range(last_step + 1))  # first run's log kept, appended to
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert all(p.name.endswith(run_id) for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2  # same id, two sessions


def test_same_seed_logs_same_losses(first_run, tmp_path):
    _, run_dir, _ = first_run
    run_cli("diffusion_seg.train", *FAST_TRAIN, log_dir=tmp_path)
    again = train_losses(read_metrics(run_dirs(tmp_path)[0]))
    original = [x for x in train_losses(read_metrics(run_dir)) if x[0] <= again[-1][0]]
    assert [s for s, _ in again] == [s for s, _ in original]
    assert [v for _, v in again] == pytest.approx([v for _, v in original], rel=1e-5)


def test_eval_reads_network_from_checkpoint(first_run, tmp_path):
    _, run_dir, _ = first_run
    run_cli("diffusion_seg.eval", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", log_dir=tmp_path)
    metrics = yaml.safe_load(next((tmp_path / "eval" / "runs").glob("*/metrics.yaml")).read_text())
    # last.ckpt holds the weights the run validated last: eval must reproduce its numbers
    logged = [r for r in read_metrics(run_dir) if r.get("val/mIoU")][-1]
    for key in ("val/mIoU", "val/mAcc", "val/aAcc"):
        assert metrics[key] == pytest.approx(float(logged[key]), abs=1e-6), key


def test_eval_changes_one_option_of_the_checkpoints_dataset(first_run, tmp_path):
    """+dataset.<key>=<value> merges into the checkpoint's dataset (other images here), and a
    misspelt key is named with the checkpoint's dataset class."""
    _, run_dir, _ = first_run
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    run_cli("diffusion_seg.eval", ckpt, "+dataset.sample_seed=5", log_dir=tmp_path)
    metrics = yaml.safe_load(next((tmp_path / "eval" / "runs").glob("*/metrics.yaml")).read_text())
    logged = [r for r in read_metrics(run_dir) if r.get("val/mIoU")][-1]
    assert metrics["val/mIoU"] != pytest.approx(float(logged["val/mIoU"]), abs=1e-6)
    proc = run_cli("diffusion_seg.eval", ckpt, "+dataset.lenght=3", log_dir=tmp_path, check=False)
    assert proc.returncode == 2
    assert "dataset.lenght is not an option of SyntheticContextDataset" in proc.stderr


def test_multirun_gives_each_job_its_own_dir_and_wandb_run(tmp_path):
    run_cli("diffusion_seg.train", "-m", "model=fcn,deeplabv2", *FAST_TRAIN, "logger=wandb",
            "test_after_training=false", log_dir=tmp_path)
    sweep = next((tmp_path / "train" / "multiruns").iterdir())
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    ids = set()
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        records = next(runs[0].glob("*.wandb")).read_bytes()
        assert sweep.name.encode() in records  # W&B group = the sweep
        assert f"model={'fcn' if job.name == '0' else 'deeplabv2'}".encode() in records  # run name
        ids.add((job / "wandb_run_id.txt").read_text())
    assert len(ids) == 2  # one W&B run per job


def test_ddp_spawn_keeps_the_two_learning_rate_groups(tmp_path):
    """ddp_spawn pickles the module into each process: the backbone must still train at
    optimizer.lr and the new layers at optimizer.lr × task.new_lr_mult (LearningRateMonitor)."""
    run_cli("diffusion_seg.train", *FAST_TRAIN, "model=pdn", "model.hidden=8", "model.layers=1",
            "trainer=ddp_cpu", "trainer.strategy=ddp_spawn", "test_after_training=false",
            "optimizer.lr=0.01", "task.new_lr_mult=10", log_dir=tmp_path)
    rows = read_metrics(run_dirs(tmp_path)[0])
    first = next(r for r in rows if r.get("lr-SGD/backbone"))
    assert float(first["lr-SGD/backbone"]) == pytest.approx(0.01)
    assert float(first["lr-SGD/new"]) == pytest.approx(0.1)


def test_ddp_on_two_cpu_processes(tmp_path):
    proc = run_cli("diffusion_seg.train", *FAST_TRAIN, "trainer=ddp_cpu", "test_after_training=false",
                   log_dir=tmp_path)
    assert "val metrics" in proc.stdout + proc.stderr
    assert (run_dirs(tmp_path)[0] / "checkpoints" / "last.ckpt").is_file()


def test_config_errors_are_one_clear_line(tmp_path):
    proc = run_cli("diffusion_seg.train", "backbone.output_stride=12", log_dir=tmp_path, check=False)
    assert proc.returncode != 0
    assert "error: backbone.output_stride=12 is invalid; allowed: 8, 16, 32" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("diffusion_seg.eval", f"ckpt_path={tmp_path}/none.ckpt", log_dir=tmp_path, check=False)
    assert proc.returncode == 2 and f"error: no checkpoint at {tmp_path}/none.ckpt" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("diffusion_seg.train", "dataset.dataset.root=/data", log_dir=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: dataset.dataset.root was renamed: use dataset.root (every dataset option is one "
        "key under dataset., the LightningModule's under task.; see conf/)"
    )
    proc = run_cli("diffusion_seg.train", "dataset=voc_aug", f"dataset.root={tmp_path}/novoc",
                   log_dir=tmp_path, check=False)
    assert proc.returncode == 2 and f"error: VOC aug: {tmp_path}/novoc/VOCdevkit" in proc.stderr
    assert "Traceback" not in proc.stderr
