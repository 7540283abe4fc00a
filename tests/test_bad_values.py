"""Every bad value is one line naming its key, exit status 2 and no file, for every command
(issue 18 §2).

Generated per command: wrong types and out-of-range numbers (from SPEC: each key's kind and
bounds as Lightning, torch and the configs document them, written independently of
diffusion_seg/validation.py), Lightning Trainer arguments the config files do not list (from
the Trainer's signature), the ``???`` values of the command's config left out, and real keys
misspelt. Each case runs the command's ``main()`` in-process with ``sys.argv`` set, from an
empty working dir and with ``paths.log_dir`` inside it; one runs as a real subprocess.
``pytest --collect-only -q tests/test_bad_values.py`` lists every case: its id starts with the
command and the kind of mistake.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from diffusion_seg import testing as fixtures
from diffusion_seg.config import compose_config
from diffusion_seg.errors import UserError

from .conftest import run_cli

# kind, then bounds ("op limit"): the values a key may take.
SHARED = {
    "seed": ("int", ">= 0", "<= 4294967295"),
    "trainer.max_epochs": ("int", ">= -1"),
    "trainer.max_steps": ("int", ">= -1"),
    "trainer.num_nodes": ("int", ">= 1"),
    "trainer.devices": ("int", ">= -1"),
    "trainer.precision": ("choice",),
    "trainer.accelerator": ("choice",),
    "trainer.check_val_every_n_epoch": ("int", ">= 1"),
    "trainer.log_every_n_steps": ("int", ">= 0"),
    "trainer.num_sanity_val_steps": ("int", ">= -1"),
    "trainer.accumulate_grad_batches": ("int", ">= 1"),
    "trainer.gradient_clip_val": ("number", ">= 0"),
    "trainer.enable_progress_bar": ("flag",),
    "trainer.deterministic": ("flag",),
    "trainer.limit_val_batches": ("number", ">= 0"),
    "optimizer.lr": ("number", "> 0"),
    "optimizer.momentum": ("number", ">= 0", "< 1"),
    "optimizer.weight_decay": ("number", ">= 0"),
    "optimizer.nesterov": ("flag",),
    "dataset.crop_size": ("int", ">= 1"),
    "dataset.scale_range": ("list",),
    "dataset.batch_size": ("int", ">= 1"),
    "dataset.val_batch_size": ("int", ">= 1"),
    "dataset.num_workers": ("int", ">= 0"),
    "dataset.hflip": ("flag",),
    "dataset.length": ("int", ">= 1"),
    "dataset.size": ("int",),
    "backbone.output_stride": ("choice",),
    "backbone.pretrained": ("flag",),
    "model.dilations": ("list",),
    "task.new_lr_mult": ("number", "> 0"),
    "task.aux_weight": ("number", ">= 0"),
    "task.ignore_index": ("int", ">= 0", "<= 255"),
    "task.nonfinite": ("choice",),
    "task.inference.mode": ("choice",),
    "task.inference.crop": ("int", ">= 1"),
    "task.inference.stride": ("int", ">= 1"),
    "task.inference.scales": ("list",),
    "task.inference.flip": ("flag",),
    "compile": ("flag",),
    "compile_mode": ("choice",),
    "malloc_keep_freed": ("flag",),
}
OWN = {
    "train": {"auto_resume": ("flag",), "test_after_training": ("flag",)},
    "eval": {"split": ("choice",), "save_predictions": ("flag",), "overlay_alpha": ("number", ">= 0", "<= 1"),
             "confused_pairs": ("int", ">= 0")},
    "predict": {"device": ("choice",), "batch_size": ("int", ">= 1"), "overwrite": ("flag",),
                "save_overlay": ("flag",), "overlay_alpha": ("number", ">= 0", "<= 1"),
                "save_probability": ("flag",), "resize": ("int", ">= 0")},
    "export": {"format": ("choice",), "input_dtype": ("choice",), "overwrite": ("flag",), "dynamic": ("flag",), "input_size": ("list",),
               "tolerance": ("number", "> 0")},
    "visualize": {"device": ("choice",), "overlay_alpha": ("number", ">= 0", "<= 1"), "pixels": ("list",)},
    "check": {"workers": ("int", ">= 1"), "limit": ("int", ">= 1"), "splits": ("list",)},
}
# The shared keys are all tried on train; the other commands share its code for them, so a
# few that their configs hold stand for the rest.
SHARED_SAMPLES = {
    "eval": ("seed", "trainer.precision", "task.inference.scales"),
    "predict": ("task.inference.mode", "task.inference.flip"),
    "check": ("dataset.crop_size", "dataset.val_batch_size"),
}
WRONG_TYPE = {"int": "abc", "number": "abc", "flag": "maybe", "choice": "nosuch", "list": "abc"}
HYDRA_COMMANDS = ("train", "eval", "predict", "export")
COMMANDS = (*HYDRA_COMMANDS, "visualize", "check")


def valid_arguments(command: str, root: Path) -> list[str]:
    """A command line that passes: the mandatory values, files that exist, logs under ``root``."""
    ckpt, image = root / "model.ckpt", root / "image.jpg"
    return {
        "train": [],
        "eval": [f"ckpt_path={ckpt}"],
        "predict": [f"ckpt_path={ckpt}", f"input={image}", f"output={root / 'out'}"],
        "export": [f"ckpt_path={ckpt}", f"output={root / 'model.onnx'}"],
        "visualize": [f"ckpt_path={ckpt}", f"input={image}", f"output={root / 'out'}"],
        "check": [],
    }[command] + ([f"paths.log_dir={root / 'logs'}"] if command in HYDRA_COMMANDS else [])


def out_of_range(kind: str, bound: str) -> str:
    op, limit = bound.split()
    value = {">=": float(limit) - 1, ">": float(limit), "<=": float(limit) + 1, "<": float(limit)}[op]
    return str(int(value)) if kind == "int" else str(value)


def key_cases(command: str) -> list[tuple[str, str, str]]:
    """``(case id, override, key the message must name)`` for every wrong type and every
    out-of-range number of the command's keys."""
    keys = dict(SHARED) if command == "train" else {k: SHARED[k] for k in SHARED_SAMPLES.get(command, ())}
    keys |= OWN[command]
    cases = []
    for key, (kind, *bounds) in keys.items():
        cases.append((f"{command}-type-{key}={WRONG_TYPE[kind]}", f"{key}={WRONG_TYPE[kind]}", key))
        for bound in bounds:
            value = out_of_range(kind, bound)
            cases.append((f"{command}-range-{key}={value}", f"{key}={value}", key))
    return cases


def trainer_argument_cases() -> list[tuple[str, str, str]]:
    """Every integer argument of Lightning's Trainer that conf/trainer/ does not list, given a
    word: accepted without + and refused by its signature's type."""
    from lightning.pytorch import Trainer

    listed = set(compose_config([]).trainer)
    cases = []
    for name, hint in typing.get_type_hints(Trainer.__init__).items():
        members = typing.get_args(hint) or (hint,)
        if name not in listed and int in members and str not in members:
            cases.append((f"train-signature-trainer.{name}=abc", f"trainer.{name}=abc", f"trainer.{name}"))
    return cases


def missing_cases(command: str) -> list[tuple[str, str, str]]:
    """Each ``???`` value of the command's config, left out (the case's override is empty)."""
    cfg = compose_config([], command)
    return [(f"{command}-missing-{key}", "", key) for key in cfg if OmegaConf.is_missing(cfg, key)]


def misspelt_cases(command: str) -> list[tuple[str, str, str]]:
    """The first key of each node of the command's config (and of its root) with its last
    letter dropped: the message must name the real key."""
    cfg = compose_config([], command)
    cases = []
    for prefix, node in [("", cfg), *((f"{k}.", cfg[k]) for k in cfg if isinstance(cfg.get(k), DictConfig))]:
        key = next((k for k in node if not k.startswith("_")), None)
        if key is None or key[:-1] in node or len(key) < 4:
            continue
        cases.append((f"{command}-misspelt-{prefix}{key[:-1]}", f"{prefix}{key[:-1]}=1",
                      f"did you mean {prefix}{key}?"))
    return cases


def generated(command: str) -> dict[str, list[tuple[str, str, str]]]:
    """The command's cases by kind of mistake."""
    cases = {"type": [], "range": [], "signature": []}
    for case in key_cases(command):
        cases[case[0].split("-")[1]].append(case)
    if command == "train":
        cases["signature"] = trainer_argument_cases()
    return cases | {"missing": missing_cases(command), "misspelt": misspelt_cases(command)}


# Through main(): this many of each kind per command (every missing value and misspelling);
# every type, range and signature mistake is also checked on the composed config below.
THROUGH_MAIN = {"type": 3, "range": 2, "signature": 2, "missing": None, "misspelt": None}


def main_cases() -> list:
    return [pytest.param(command, override, named, id=case_id)
            for command in COMMANDS for kind, cases in generated(command).items()
            for case_id, override, named in cases[:THROUGH_MAIN[kind]]]


def entry_point(command: str) -> Callable[[list[str]], object]:
    """``main()`` of a command, called with its arguments (the Hydra commands read sys.argv)."""
    module = importlib.import_module(f"diffusion_seg.cli.{command}")
    if "argv" in inspect.signature(module.main).parameters:
        return module.main

    def run(args: list[str]) -> object:
        sys.argv = [f"diffusion_seg.{command}", *args]
        return module.main()

    return run


def files_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def call(command: str, args: list[str], root: Path, capsys, monkeypatch) -> tuple[int | str | None, list[str]]:
    """Run the command from an empty ``root``; its exit status and its stderr lines. Fails if
    any file appears under ``root``."""
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    before = files_under(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        entry_point(command)(args)
    assert files_under(root) == before, "a file was created before the error"
    return stop.value.code, capsys.readouterr().err.splitlines()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working dir holding only the files the valid command lines name."""
    (tmp_path / "model.ckpt").write_bytes(b"")
    fixtures.write_jpeg(tmp_path / "image.jpg", fixtures.photo(np.random.default_rng(0), 16, 16))
    return tmp_path


@pytest.mark.parametrize(("command", "override", "named"), main_cases())
def test_a_bad_value_is_one_line_exit_2_and_no_file(command, override, named, workdir, capsys, monkeypatch):
    args = valid_arguments(command, workdir)
    if override:
        args.append(override)
    else:  # a missing mandatory value: leave it out
        args = [a for a in args if not a.startswith(f"{named}=")]
    code, lines = call(command, args, workdir, capsys, monkeypatch)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines


@pytest.mark.parametrize("command", COMMANDS)
def test_every_generated_bad_value_is_named_in_one_line(command, workdir):
    """Every wrong type, out-of-range number and Trainer argument of the command, set on its
    composed config as the command line would set it (Hydra's parser gives the value): the
    first problem found is one line naming the key. The valid config has no problem."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from diffusion_seg.validation import config_problems

    valid = compose_config(valid_arguments(command, workdir), command)
    assert list(config_problems(valid, command)) == []
    parser = OverridesParser.create()
    wrong = []
    for kind in ("type", "range", "signature"):
        for case_id, override, key in generated(command)[kind]:
            cfg = copy.deepcopy(valid)
            OmegaConf.update(cfg, key, parser.parse_override(override).value(), force_add=True)
            first = next(config_problems(cfg, command), "")
            if "\n" in first or not first.startswith(f"{key}=") or not first:
                wrong.append(f"{case_id}: {first!r}")
    assert wrong == []


ARGPARSE_CASES = [
    pytest.param("report", ["--split", "train", "{sweep}"], "--split", id="report-choice---split=train"),
    pytest.param("report", ["--splt", "val", "{sweep}"], "--splt", id="report-misspelt---splt"),
    pytest.param("report", [], "sweeps", id="report-missing-sweeps"),
    pytest.param("report", ["{root}/nosuch"], "nosuch", id="report-missing-dir"),
    pytest.param("bench", ["pdn", "--rounds", "abc"], "--rounds", id="bench-type-pdn---rounds=abc"),
    pytest.param("bench", ["pdn", "--size", "-5"], "--size", id="bench-range-pdn---size=-5"),
    pytest.param("bench", ["pdn", "--dtype", "float16"], "--dtype", id="bench-choice-pdn---dtype=float16"),
    pytest.param("bench", ["difnet", "--walks", "-1"], "--walks", id="bench-range-difnet---walks=-1"),
    pytest.param("bench", ["data", "--samples", "abc"], "--samples", id="bench-type-data---samples=abc"),
    pytest.param("bench", ["pnd"], "did you mean pdn?", id="bench-misspelt-pnd"),
]


@pytest.mark.parametrize(("command", "args", "named"), ARGPARSE_CASES)
def test_argparse_commands_give_one_line_and_exit_2(command, args, named, workdir, capsys, monkeypatch):
    (workdir / "sweep").mkdir()
    args = [a.format(sweep=workdir / "sweep", root=workdir) for a in args]
    main = importlib.import_module("diffusion_seg.bench.__main__" if command == "bench" else "diffusion_seg.cli.report").main
    monkeypatch.chdir(workdir)
    before = files_under(workdir)
    with pytest.raises(SystemExit) as stop:
        main(args)
    lines = capsys.readouterr().err.splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert files_under(workdir) == before


def test_through_a_real_process(tmp_path):
    """The issue's first example, the whole way (a new process; Hydra never starts): one
    line, exit 2, no run dir (a 195-line TypeError before)."""
    proc = run_cli("diffusion_seg.train", "trainer.max_epochs=abc", log_dir=tmp_path / "logs", check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "error: trainer.max_epochs='abc' is invalid; allowed: an integer >= -1 (-1: no limit) or null"]
    assert not (tmp_path / "logs").exists()


# ------------------------------------------------------------------ bad samples in DataLoader workers


def first_worker_error(dataset) -> UserError:
    from torch.utils.data import DataLoader

    with pytest.raises(UserError) as caught:
        for _ in DataLoader(dataset, batch_size=1, num_workers=1):
            pass
    return caught.value


def test_a_bad_sample_in_a_worker_is_one_line_with_the_folder_datasets_advice(tmp_path):
    from diffusion_seg.cli.errors import error_line
    from diffusion_seg.data.folder import FolderDataset

    fixtures.make_folder(tmp_path, n=3)
    broken = tmp_path / "images" / "img_001.jpg"
    broken.write_bytes(b"not a jpeg")
    err = first_worker_error(FolderDataset(tmp_path, "all"))
    assert "Traceback" in str(err)  # what torch hands over: the worker's traceback
    line = error_line(err)
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"cannot read image {broken}") and "fix, replace or remove the file" in line
    assert "dataset.on_bad_sample=skip" in line and "extract" not in line


def test_a_bad_sample_of_a_downloaded_dataset_says_re_extract(tmp_path):
    from diffusion_seg.cli.errors import error_line
    from diffusion_seg.data.voc import VOCAug

    fixtures.make_voc_aug(tmp_path)
    dataset = VOCAug(tmp_path, "trainaug")
    dataset.samples[0][1].write_bytes(b"\x89PNG garbage")
    line = error_line(first_worker_error(dataset))
    assert "\n" not in line and line.startswith(f"cannot read mask {dataset.samples[0][1]}")
    assert "re-extract" in line and "python -m diffusion_seg.prepare" in line


@pytest.mark.slow
def test_train_on_a_folder_with_a_corrupt_image_stops_in_one_line(tmp_path):
    root = tmp_path / "data"
    fixtures.make_folder(root, n=6, size=(64, 64))
    (root / "images" / "img_002.jpg").write_bytes(b"garbage")
    proc = run_cli("diffusion_seg.train", "dataset=folder", f"dataset.root={root}", "backbone=tiny",
                   "dataset.crop_size=64", "dataset.batch_size=1", "dataset.num_workers=1",
                   "trainer.max_epochs=1", "test_after_training=false", log_dir=tmp_path / "logs", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors == [f"error: cannot read image {root / 'images' / 'img_002.jpg'}: cannot identify image file "
                      f"'{root / 'images' / 'img_002.jpg'}'; fix, replace or remove the file, or set "
                      "dataset.on_bad_sample=skip to train without it"]
