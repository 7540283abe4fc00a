"""Every paper row, preset and study composes to the config recorded in
``tests/fixtures/experiment_configs.json`` (so regrouping conf/ cannot change a run), and every
``debug`` option composes.

The file holds each ``experiment=<name>`` and each study's first setting, composed like
``python -m diffusion_seg.train`` does, without Hydra's own node and with the paths resolved
against placeholders. After a deliberate change to a row, a recipe or a default they read,
regenerate it and review its diff:

    .venv/bin/python -m tests.test_experiments
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict, read_write

from diffusion_seg import CONFIG_DIR
from diffusion_seg.config import register_resolvers

from .conftest import run_cli, run_dirs

GOLDEN = Path(__file__).parent / "fixtures" / "experiment_configs.json"
# The recorded configs do not depend on this machine: the project root is a placeholder and
# every other environment variable the configs read (${oc.env:DIFFUSION_SEG_DATA,...},
# ${oc.env:ADE20K_ROOT,...}) is unset, so their defaults are recorded.
ENV_READ = sorted({m for f in CONFIG_DIR.rglob("*.yaml") for m in re.findall(r"oc\.env:(\w+)", f.read_text())})
PLACEHOLDER_ENV = {name: "<root>" if name == "PROJECT_ROOT" else None for name in ENV_READ}
OUTPUT_DIR = "<output_dir>"


def names(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextmanager
def placeholder_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in PLACEHOLDER_ENV}
    _set_env(PLACEHOLDER_ENV)
    try:
        yield
    finally:
        _set_env(saved)


def composed(overrides: list[str], config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """``train.yaml`` with ``overrides``, resolved, without the ``hydra`` node (dated dirs)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = OUTPUT_DIR
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.output_dir} resolves against it
    with open_dict(cfg):
        del cfg["hydra"]
    with placeholder_env():
        return OmegaConf.to_container(cfg, resolve=True)


def study_first_setting(name: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """``study=<name>`` and the first value of each swept key: the sweep's first job."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        params = compose("train", overrides=[f"study={name}"], return_hydra_config=True).hydra.sweeper.params
    first = {k: str(v).split(",")[0] for k, v in params.items()}
    return [f"study={name}"] + [f"{k}={str(v).lower() if v in ('True', 'False') else v}" for k, v in first.items()]


def all_configs(config_dir: Path = CONFIG_DIR) -> dict[str, dict[str, Any]]:
    """``experiment=<name>`` → its composed config, for every experiment and study."""
    runs = {f"experiment={n}": [f"experiment={n}"] for n in names("experiment", config_dir)}
    for study in names("study", config_dir):
        overrides = study_first_setting(study, config_dir)
        runs[" ".join(overrides)] = overrides
    return {key: composed(overrides, config_dir) for key, overrides in runs.items()}


def write_golden(configs: dict[str, dict[str, Any]], path: Path = GOLDEN) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(configs, indent=1, sort_keys=True) + "\n")


def differences(now: Any, recorded: Any, key: str = "") -> list[str]:
    """Dotted keys whose values differ (added, removed or changed), for a readable failure."""
    if isinstance(now, dict) and isinstance(recorded, dict):
        return [d for k in sorted(set(now) | set(recorded), key=str)
                for d in differences(now.get(k, "<absent>"), recorded.get(k, "<absent>"), f"{key}.{k}".lstrip("."))]
    return [] if now == recorded else [f"{key}: {recorded!r} -> {now!r}"]


RECORDED = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}


def test_every_experiment_and_study_is_recorded():
    assert {k.split()[0] for k in RECORDED} == (
        {f"experiment={n}" for n in names("experiment")} | {f"study={n}" for n in names("study")}
    ), "an experiment or study was added or removed: regenerate (see the module docstring)"


@pytest.mark.parametrize("key", sorted(RECORDED))
def test_composed_config_is_the_recorded_one(key):
    changed = differences(composed(key.split()), RECORDED[key])
    assert not changed, f"{key} composes differently: {changed[:10]}. If deliberate, regenerate: " \
                        ".venv/bin/python -m tests.test_experiments"


def test_a_difference_is_reported():
    # The comparison can fail: one changed leaf of a real config is named with both values.
    config = composed(["experiment=pdn_24nb_1m_ade20k"])
    edited = json.loads(json.dumps(config))
    edited["model"]["insert_at"] = ["layer4.0"]
    assert differences(edited, config) == ["model.insert_at: ['layer4.1'] -> ['layer4.0']"]


def test_a_paper_row_is_its_groups():
    """PDN's rows are recipe × BN mode × dataset: the row adds nothing but its name."""
    row = composed(["experiment=pdn_24nb_2m_person_part_syncbn"])
    groups = composed(["recipe=pdn_24nb_2m", "bn=sync", "dataset=person_part",
                       "task_name=pdn_24nb_2m_person_part_syncbn"])
    assert row == groups
    assert row["model"]["insert_at"] == ["layer4.0", "layer4.1"] and row["trainer"]["devices"] == 8
    assert row["backbone"]["name"] == "resnet101" and row["optimizer"]["lr"] == 2.5e-4


DEBUG = names("debug")


def test_debug_group_has_the_templates_options():
    assert {"default", "fdr", "overfit", "profiler", "limit", "smoke"} <= set(DEBUG)


def test_debug_smoke_is_a_small_run_with_the_usual_outputs():
    cfg = composed(["debug=smoke", "model=pdn"])
    assert cfg["backbone"]["name"] == "test_resnet" and cfg["model"]["_target_"].endswith("PDNHead")
    assert (cfg["dataset"]["length"], cfg["dataset"]["size"], cfg["trainer"]["max_epochs"]) == (32, 64, 1)
    assert cfg["callbacks"]["model_checkpoint"]["save_last"] and cfg["logger"]["csv"]
    assert cfg["callbacks"]["model_summary"]["max_depth"] == 0 and cfg["task_name"] == "train"


@pytest.mark.parametrize("name", [n for n in DEBUG if n != "smoke"])
def test_debug_option_composes_and_wins_over_an_experiment(name):
    """Last in train.yaml's defaults: even a SyncBN row on 8 GPUs becomes a one-process CPU run."""
    cfg = composed(["experiment=pdn_24nb_1m_ade20k_syncbn", f"debug={name}"])
    trainer = cfg["trainer"]
    assert (trainer["accelerator"], trainer["devices"], trainer.get("strategy")) == ("cpu", 1, None)
    assert cfg["task_name"] == "debug" and cfg["dataset"]["num_workers"] == 0
    expected = {"default": ("max_epochs", 1), "fdr": ("fast_dev_run", True), "overfit": ("overfit_batches", 3),
                "profiler": ("profiler", "simple"), "limit": ("limit_train_batches", 10)}
    key, value = expected[name]
    assert trainer[key] == value


@pytest.mark.slow
def test_debug_fdr_runs_one_batch_of_each_stage(tmp_path):
    proc = run_cli("diffusion_seg.train", "debug=fdr", log_dir=tmp_path)
    out = proc.stdout + proc.stderr
    assert "Running in `fast_dev_run` mode" in out and "test/mIoU" in out
    (run_dir,) = run_dirs(tmp_path, task="debug")
    assert (run_dir / "finished.yaml").is_file()


if __name__ == "__main__":  # optional argument: another conf/ dir (to compare two trees)
    write_golden(all_configs(Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIG_DIR))
    print(f"wrote {GOLDEN}")
