"""`--help` of every command: what the command does, its own options with their values and
comments, the choices of its options and config groups, generated from its root config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from diffusion_seg import CONFIG_DIR
from diffusion_seg.bench.__main__ import BENCHMARKS
from diffusion_seg.bench.__main__ import main as bench_main
from diffusion_seg.cli import eval as eval_cli
from diffusion_seg.cli import export, predict, train, visualize
from diffusion_seg.cli.console import yaml_comments

COMMANDS = {"train": train, "eval": eval_cli, "predict": predict, "export": export, "visualize": visualize}


def command_help(name: str, monkeypatch, capsys, *overrides: str) -> str:
    """``python -m diffusion_seg.<name> --help [overrides]`` in this process."""
    monkeypatch.setattr(sys, "argv", [name, "--help", *overrides])
    GlobalHydra.instance().clear()
    try:
        status = COMMANDS[name].main()  # visualize returns its status, Hydra exits with it
    except SystemExit as exit:
        status = exit.code
    GlobalHydra.instance().clear()
    assert status in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_says_what_the_command_does_and_lists_its_own_options(name, monkeypatch, capsys):
    text = command_help(name, monkeypatch, capsys)
    purpose = COMMANDS[name].__doc__.strip().splitlines()[0]
    assert text.startswith(purpose), text[:200]
    assert "is powered by Hydra" not in text and "== Config ==" not in text  # not Hydra's dump
    assert f"python -m diffusion_seg.{name}" in text and f"diffusion-seg-{name}" in text
    flat = " ".join(text.split())
    comments = yaml_comments(CONFIG_DIR / f"{name}.yaml")
    options = {k: c for k, c in comments.items() if k != "defaults" and not (CONFIG_DIR / k).is_dir()}
    assert len(options) >= 6
    for key, comment in options.items():  # every option of the root config, with its comment
        assert f"\n  {key}=" in text, key
        assert " ".join(comment.split())[:40] in flat, key
    for key, allowed in getattr(COMMANDS[name], "OPTION_CHOICES", {}).items():
        assert f"(one of: {', '.join(allowed)})" in text, key


def test_each_command_lists_its_groups_and_no_other(monkeypatch, capsys):
    text = command_help("export", monkeypatch, capsys)
    assert "format=onnx   (one of: onnx, torchscript, torch_export)" in text
    assert "input_dtype=float32   (one of: float32, uint8)" in text
    assert "ckpt_path=???  (required)" in text
    assert "model=" not in text and "dataset=" not in text and "seed=" not in text  # train's
    text = command_help("train", monkeypatch, capsys, "model=pdn")
    assert "\n  model=pdn\n" in text  # the overrides given show
    models = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
    assert f"choices: {', '.join(models)}" in text
    assert "\n  experiment=null\n" in text and "Paper rows and other presets" in text
    assert "compile=false" in text and "torch.compile the network" in text  # a global group's keys
    assert "hydra/launcher=basic" in text and "submitit_slurm" in text
    assert "input_dtype" not in text and "ckpt_path=null" in text
    text = command_help("eval", monkeypatch, capsys)
    assert "split=val   (one of: val, test)" in text and "\n  model=" not in text


def test_bench_help_lists_the_benchmarks(capsys):
    bench_main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m diffusion_seg.bench")
    for name in BENCHMARKS:
        assert f"\n  {name} " in text, name
    assert "PDN benchmark: time and peak memory" in text


def test_help_exits_0_from_the_command_line(tmp_path):
    """As a user runs them: exit status 0 and the help on stdout, no run dir."""
    for module, first in [("diffusion_seg.export", "Export a checkpoint"), ("diffusion_seg.bench", "usage:")]:
        proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300,
                              env={**os.environ, "DIFFUSION_SEG_LOGS": str(tmp_path / "logs")})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith(first), proc.stdout[:200]
    assert not Path(tmp_path / "logs").exists()
