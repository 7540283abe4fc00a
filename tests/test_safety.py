"""Runs that survive: a stop signal saves last.ckpt at the current step and the run resumes
there; a non-finite step stops (or is skipped) and never reaches a checkpoint; losses and
softmax stay in float32 under bf16 autocast."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from omegaconf import open_dict

from diffusion_seg.builders import build_backbone, build_datamodule, build_segmentor, build_task
from diffusion_seg.checkpoints import load_checkpoint_file
from diffusion_seg.lightning.safety import FiniteStepGuard, NonFiniteError, RunGuard, cluster_plugins

from .conftest import FAST_TRAIN, TINY_SYNTHETIC, compose_config, run_cli, run_dirs


class SignalAtStep(L.Callback):
    """Test helper, added from the command line (``+callbacks.kill._target_=tests.test_safety.
    SignalAtStep +callbacks.kill.step=5``): sends ``signum`` to this very process at the end of
    training step ``step`` — a real signal, mid-epoch. With ``once_file`` only the first run
    that gets there sends it; with ``job`` only that multirun job; with ``rank`` only that
    DDP process (the others learn it from the guard); with ``children`` to the process's child
    processes (DataLoader workers) too, as SLURM signals every process of a job step."""

    def __init__(self, step: int, signum: int = signal.SIGTERM, once_file: str | None = None,
                 job: int | None = None, rank: int | None = None, children: bool = False) -> None:
        self.step, self.signum, self.once_file, self.job, self.rank = step, signum, once_file, job, rank
        self.children = children

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or self.rank not in (None, trainer.global_rank):
            return
        if self.job is not None:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.get().job.get("num") != self.job:
                return
        if self.once_file:
            if Path(self.once_file).exists():
                return
            Path(self.once_file).touch()
        if self.children:
            pid = os.getpid()
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                os.kill(int(child), self.signum)
        os.kill(os.getpid(), self.signum)


def train_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def build(overrides, tmp_path):
    cfg = compose_config(overrides, output_dir=tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]
    backbone = build_backbone(cfg)
    datamodule = build_datamodule(cfg, backbone)
    net = build_segmentor(cfg, datamodule.num_classes, backbone=backbone)
    return cfg, datamodule, net, build_task(cfg, net, datamodule.class_names)


# -- non-finite steps ------------------------------------------------------------------------


def test_nonfinite_policy_is_checked():
    with pytest.raises(ValueError, match=r"task.nonfinite='maybe' is not supported; allowed values: \['stop', 'skip'\]"):
        FiniteStepGuard("maybe")


class Snapshots(L.Callback):
    """Weights and BatchNorm statistics after every step; NaN images at step ``poison``."""

    def __init__(self, poison: int) -> None:
        self.poison, self.states = poison, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.poison:
            batch["image"].fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})


def test_skip_drops_the_update_and_keeps_batchnorm_statistics(tmp_path):
    _, datamodule, net, task = build([*TINY_SYNTHETIC, "task.nonfinite=skip"], tmp_path)
    snaps = Snapshots(poison=1)  # the second step sees NaN images
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=tmp_path, callbacks=[snaps],
    )
    trainer.fit(task, datamodule=datamodule)
    assert trainer.global_step == 3 and task.step_guard.skipped == 1
    after_first, after_skipped, after_third = snaps.states
    bn = [k for k in after_first if "running_mean" in k]
    assert bn
    for key, value in after_skipped.items():  # weights and BN statistics as before the NaN step
        assert torch.equal(value, after_first[key]), key
    assert all(torch.isfinite(v).all() for v in after_third.values() if v.is_floating_point())
    assert any(not torch.equal(after_third[k], after_first[k]) for k in after_first)  # training went on


def test_checkpoints_with_nonfinite_weights_are_refused(tmp_path):
    class FakeTrainer:
        global_step, current_epoch = 7, 1

    guard = RunGuard(tmp_path)
    good = {"state_dict": {"net.w": torch.ones(2), "net.n": torch.tensor(3)}}
    guard.on_save_checkpoint(FakeTrainer(), None, good)
    bad = {"state_dict": {"net.w": torch.ones(2), "net.v": torch.tensor([1.0, float("inf")])}}
    with pytest.raises(NonFiniteError, match=r"non-finite weights at step 7 \(epoch 1\): net.v holds NaN or inf"):
        guard.on_save_checkpoint(FakeTrainer(), None, bad)


def test_loss_and_softmax_stay_float32_under_bf16_autocast(tmp_path, monkeypatch):
    import diffusion_seg.lightning.task as task_module

    _, datamodule, net, task = build([*TINY_SYNTHETIC, "task.inference.scales=[1.0,0.75]"], tmp_path)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    seen = {}

    def spy_ce(logits, target, ignore_index=255):
        seen.setdefault("loss_input", logits.dtype)
        out = task_module_ce(logits, target, ignore_index)
        seen.setdefault("loss", out.dtype)
        return out

    def spy_predict(fn, image, **kwargs):
        seen.setdefault("network", net(image).logits.dtype)
        out = task_module_predict(fn, image, **kwargs)
        seen.setdefault("scores", out.dtype)  # mean softmax of two scales
        return out

    import diffusion_seg.models.losses as losses_module

    # the training loss (models.losses.segmentation_loss) calls its module's cross_entropy
    task_module_ce, task_module_predict = losses_module.cross_entropy, task_module.predict
    monkeypatch.setattr(losses_module, "cross_entropy", spy_ce)
    monkeypatch.setattr(task_module, "predict", spy_predict)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = task.training_step(batch, 0)
        task.eval()
        with torch.no_grad():
            task._evaluate(batch, "val")
    assert seen == {"loss_input": torch.float32, "loss": torch.float32,
                    "network": torch.bfloat16, "scores": torch.float32}
    assert loss.dtype == torch.float32


def test_first_ctrl_c_asks_for_a_checkpoint_the_second_stops_at_once():
    guard = RunGuard("ckpts")
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    try:
        # As in a terminal: a background job (e.g. `cmd &` in a script) starts with SIGINT
        # ignored, and install() rightly leaves an ignored signal alone.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        guard.install()
        assert all(signal.getsignal(sig) == guard._handle for sig in before)
        signal.raise_signal(signal.SIGINT)  # the handler only notes it
        assert guard.received == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_lightning_slurm_requeue_is_off_under_submitit(monkeypatch):
    for key in ("SUBMITIT_EXECUTOR", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert cluster_plugins() == []
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    (env,) = cluster_plugins()
    assert type(env).__name__ == "SLURMEnvironment" and env.auto_requeue is False
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert cluster_plugins() == []


@pytest.mark.slow
def test_absurd_lr_stops_with_one_line_and_keeps_finite_checkpoints(tmp_path):
    proc = run_cli("diffusion_seg.train", *FAST_TRAIN, "optimizer.lr=1e6",
                   "callbacks.last_checkpoint.every_n_train_steps=1", log_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: non-finite loss at step ")
    assert "loss_main=nan" in line and "lr backbone=" in line and "new=" in line
    step = int(line.split("at step ")[1].split()[0])
    run_dir = run_dirs(tmp_path)[0]
    checkpoints = list((run_dir / "checkpoints").glob("*.ckpt"))
    assert checkpoints  # saved every step until the NaN
    for path in checkpoints:
        ckpt = load_checkpoint_file(path)
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["global_step"] == step
    finished = yaml.safe_load((run_dir / "finished.yaml").read_text())
    assert finished["status"] == "diverged" and finished["global_step"] == step


# -- stop signals ----------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_last_ckpt_and_resume_reaches_the_same_final_step(tmp_path):
    """In-process (the CLI path with a real signal is tests/test_sweeps.py): 32 images, batch
    8, 2 epochs = 8 steps; SIGTERM after step 5, mid second epoch, to the process and its
    DataLoader workers."""
    from diffusion_seg.cli.train import train

    run_dir = tmp_path / "run"
    # The loader workers get the signal too (SLURM signals every process of the step): they
    # must live on, or the main process dies of their death mid-step.
    args = [*FAST_TRAIN, "trainer.max_epochs=2", "test_after_training=false", "trainer.enable_progress_bar=false",
            "dataset.num_workers=2", "+callbacks.kill._target_=tests.test_safety.SignalAtStep",
            "+callbacks.kill.step=5", "+callbacks.kill.children=true"]
    with pytest.raises(SystemExit) as stop:
        train(compose_config(args, output_dir=run_dir))
    assert stop.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers given back
    assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 5
    assert not (run_dir / "finished.yaml").exists()

    # resume=<run dir>; the kill callback stays: it fires at step 5 only, which is behind us.
    metrics = train(compose_config([*args, f"resume={run_dir}"], output_dir=run_dir))
    assert "val/mIoU" in metrics
    finished = yaml.safe_load((run_dir / "finished.yaml").read_text())
    assert finished["status"] == "finished" and finished["global_step"] == 8  # = uninterrupted
    assert train_steps(run_dir) == list(range(8))  # steps 0-4 logged, then 5-7 appended
    assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 8
    actions = [a["action"] for a in yaml.safe_load((run_dir / "job.yaml").read_text())["attempts"]]
    assert actions == ["start", "resume"]
