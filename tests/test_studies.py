"""Every study composes, each of its settings composes, and its published numbers name
settings it runs; the comparison rows of PDN's tables are what the paper describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion_seg import CONFIG_DIR

from .conftest import compose_config

STUDIES = sorted(p.stem for p in (CONFIG_DIR / "study").glob("*.yaml"))


@pytest.mark.parametrize("name", STUDIES)
def test_study_composes_with_its_settings(name, tmp_path):
    cfg = compose_config([f"study={name}"], output_dir=tmp_path)
    assert cfg.study.name == name
    params = dict(cfg.hydra.sweeper.params)
    assert params, "a study sweeps something"
    experiments = str(params.get("experiment", "")).split(",") if "experiment" in params else [None]
    for experiment in experiments:
        overrides = [f"study={name}"] + ([f"experiment={experiment}"] if experiment else [])
        overrides += [f"{k}={v.split(',')[0]}" for k, v in params.items() if k != "experiment"]
        job = compose_config(overrides, output_dir=tmp_path)
        assert job.model._target_ and job.dataset.dataset_class
    swept = {f"{k}={v}" for k, values in params.items() for v in str(values).split(",")}
    for setting in cfg.study.get("published") or {}:
        assert setting in swept, f"{name}: published {setting} is not a setting of the study"
    if cfg.study.knob:
        assert cfg.study.knob in params


@pytest.mark.parametrize(
    ("name", "head", "crf", "aux_weight", "syncbn"),
    [
        ("deeplabv2_ade20k", "DeepLabV2Head", False, 1.0, False),
        ("deeplabv2_crf_ade20k", "DeepLabV2Head", True, 1.0, False),
        ("lg_lstm_ade20k", "LGLSTMHead", False, 1.0, False),
        ("pspnet_ade20k_syncbn", "PSPHead", False, 0.4, True),
        ("deeplabv2_person_part", "DeepLabV2Head", False, 1.0, False),
        ("deeplabv2_crf_person_part", "DeepLabV2Head", True, 1.0, False),
        ("lg_lstm_person_part", "LGLSTMHead", False, 1.0, False),
        ("deeplabv3_person_part_syncbn", "DeepLabV3Head", False, 0.4, True),
        ("pspnet_person_part_syncbn", "PSPHead", False, 0.4, True),
    ],
)
def test_comparison_rows_use_pdns_recipe(name, head, crf, aux_weight, syncbn):
    cfg = compose_config([f"experiment={name}"])
    assert cfg.model._target_.endswith(head)
    assert cfg.backbone.name == "resnet101" and cfg.backbone.dilation_pattern == "deeplab"
    assert cfg.optimizer.lr == pytest.approx(2.5e-4) and cfg.task.new_lr_mult == 10.0
    assert (cfg.trainer.max_steps, cfg.dataset.crop_size) == (200_000, 321)
    assert cfg.task.inference.crf is crf and cfg.task.aux_weight == aux_weight
    assert (cfg.trainer.get("strategy") == "ddp") is syncbn and cfg.backbone.frozen_bn is not syncbn


@pytest.mark.slow
def test_a_study_runs_and_the_report_matches_its_runs(tmp_path):
    """2 settings × 2 seeds of the built-in heads study on CPU; report.md's mean ± std and
    runs.csv equal the runs' own final metrics."""
    import csv
    import statistics

    import yaml

    from diffusion_seg.studies import read_run

    from .conftest import run_cli

    run_cli("diffusion_seg.train", "-m", "study=builtin_heads_difficulty", "experiment=pathfinder_fcn",
            "dataset.max_distance=2,3", "seed=1,2", "dataset.length=16", "dataset.eval_length=8",
            "dataset.batch_size=8", "trainer.max_epochs=1", "~callbacks.model_summary",
            log_dir=tmp_path, timeout=600)
    sweep = next((tmp_path / "studies" / "builtin_heads_difficulty").iterdir())
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert len(jobs) == 4
    proc = run_cli("diffusion_seg.report", str(sweep), log_dir=tmp_path)
    assert "4 finished run(s) in 2 setting(s)" in proc.stdout
    report = (sweep / "report.md").read_text()
    for distance in (2, 3):
        runs = [read_run(j) for j in jobs]
        values = [100 * r.metrics["test/mIoU"] for r in runs if r.value("dataset.max_distance") == str(distance)]
        assert len(values) == 2
        row = (f"| `dataset.max_distance={distance}` | 2 | "
               f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} |")
        assert row in report, report
    with open(sweep / "runs.csv") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    for job in jobs:  # the CSV holds what each run recorded at its end, by job dir within the sweep
        recorded = yaml.safe_load((job / "finished.yaml").read_text())["metrics"] if (job / "finished.yaml").is_file() \
            else read_run(job).metrics
        assert float(rows[job.name]["test/mIoU"]) == pytest.approx(recorded["test/mIoU"])
    assert (sweep / "report.png").stat().st_size > 5000


@pytest.mark.parametrize("name", ["builtin_scratch_recipe", "builtin_pdn_layers_neighbors", "builtin_difnet_walks",
                                  "builtin_scratch_near", "builtin_scratch_difnet_start", "builtin_heads_far",
                                  "builtin_budget", "builtin_long_paths", "builtin_fresh_samples",
                                  "builtin_difnet_start", "builtin_pretrained_start", "builtin_heads_difficulty"])
def test_the_committed_miniature_reports_hold_3_finished_seeds_per_setting(name):
    """experiments/reports/<study>/: the report names its command; every trained setting has
    n = 3 (the non-learned oracle row, where there is one, n = 1) and every run of runs.csv
    finished (what `make study` writes)."""
    import csv

    from diffusion_seg.bench.oracle import ROW

    folder = Path(__file__).parents[1] / "experiments" / "reports" / name
    report = (folder / "report.md").read_text()
    assert f"python -m diffusion_seg.train -m study={name}" in report
    rows = [line for line in report.split("## Per-class")[0].split("\n\n## ")[0].splitlines()
            if line.startswith("| `")]
    trained = [line for line in rows if ROW not in line]
    assert trained and all(line.split(" | ")[1] == "3" for line in trained)
    assert all(line.split(" | ")[1] == "1" for line in rows if ROW in line)
    with open(folder / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 3 * len(trained) + len(rows) - len(trained)
    assert {r["status"] for r in runs} == {"finished"}
    assert (folder / "report.png").stat().st_size > 5000


@pytest.mark.parametrize("folder", sorted(p.name for p in (Path(__file__).parents[1] / "experiments" / "reports").iterdir()
                                          if p.is_dir()))
def test_the_committed_reports_name_no_machine_path(folder):
    """Paths in a report are relative to its sweep dir: no absolute path of the machine that
    ran it in report.md or runs.csv."""
    import csv
    import re

    root = Path(__file__).parents[1] / "experiments" / "reports" / folder
    report = (root / "report.md").read_text()
    assert not re.search(r"`/|(^|\s)/(work|home|tmp|Users)/", report, re.M), folder
    with open(root / "runs.csv") as f:
        # A job of the first sweep by number; of a later sweep of the same report by ../<sweep>/<number>.
        assert all(re.fullmatch(r"(\.\./[\w-]+/)?(oracle_)?\d+", r["job"]) for r in csv.DictReader(f))


def _run_study_script(tmp_path: Path, **env: str) -> list[str]:
    """experiments/builtin_studies.sh (argument ``logger=csv``) with a stand-in python that
    records its calls and makes the sweep dirs; returns the calls."""
    import shutil
    import subprocess

    (tmp_path / "experiments").mkdir()
    for script in ("builtin_studies.sh", "reevaluate.sh"):
        shutil.copy(Path(__file__).parents[1] / "experiments" / script, tmp_path / "experiments")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/usr/bin/env bash\necho "$*" >> calls.log\n'
                      'if [ "$2" = diffusion_seg.train ]; then\n'
                      '  study=$(echo "$*" | sed -E "s/.*study=([a-z_]+).*/\\1/")\n'
                      '  mkdir -p logs/studies/$study/2026-12-05_0$(ls logs/studies/$study 2>/dev/null | wc -l)\nfi\n')
    python.chmod(0o755)
    done = subprocess.run(["bash", "experiments/builtin_studies.sh", "logger=csv"], cwd=tmp_path, text=True,
                          capture_output=True, env={"PATH": "/usr/bin:/bin", **env})
    assert done.returncode == 0, done.stderr
    return (tmp_path / "calls.log").read_text().splitlines()


def test_make_study_runs_the_three_from_scratch_recipe_studies_without_the_shorter_check(tmp_path):
    """`make study`: builtin_scratch_recipe (with the oracle rows), then the PDN and DifNet
    ablations, one sweep each, each reported against its baseline; no 30-epoch check."""
    calls = _run_study_script(tmp_path)
    trains = [c for c in calls if " diffusion_seg.train " in c]
    assert [c.split()[3] for c in trains] == ["study=builtin_scratch_recipe", "study=builtin_pdn_layers_neighbors",
                                              "study=builtin_difnet_walks"]
    recipe = "logs/studies/builtin_scratch_recipe/2026-12-05_00/"
    assert f"-m diffusion_seg.bench oracle --sweep {recipe}" in calls
    reports = [c.split(" ", 2)[2] for c in calls if " diffusion_seg.report " in c]
    assert reports == [
        f"{recipe} --out experiments/reports/builtin_scratch_recipe --baseline pathfinder_deeplabv2 --paired",
        "logs/studies/builtin_pdn_layers_neighbors/2026-12-05_00/ --out experiments/reports/builtin_pdn_layers_neighbors "
        "--baseline model.layers=4 model.neighbors=24 --paired",
        "logs/studies/builtin_difnet_walks/2026-12-05_00/ --out experiments/reports/builtin_difnet_walks "
        "--baseline model.walks=5 --paired"]


def test_the_named_from_scratch_studies_get_the_oracle_rows_and_their_baselines(tmp_path):
    """builtin_scratch_near gets the oracle rows; builtin_scratch_difnet_start sets each
    published head against seed supervision from the same start (whole override: per twin)."""
    calls = _run_study_script(tmp_path, STUDIES="builtin_scratch_near builtin_scratch_difnet_start")
    near = "logs/studies/builtin_scratch_near/2026-12-05_00/"
    start = "logs/studies/builtin_scratch_difnet_start/2026-12-05_00/"
    assert f"-m diffusion_seg.bench oracle --sweep {near}" in calls
    assert [c.split(" ", 2)[2] for c in calls if " diffusion_seg.report " in c] == [
        f"{near} --out experiments/reports/builtin_scratch_near --baseline pathfinder_deeplabv2 --paired",
        f"{start} --out experiments/reports/builtin_scratch_difnet_start --baseline model.seed_loss=True --paired"]


def test_make_study_runs_each_sweep_of_a_study_and_reports_them_together(tmp_path):
    """A study's extra sweeps (rows, with SHORTER_CHECKS=1 the shorter-schedule check) are
    trained with the script's arguments and reported with its first sweep (the shorter-schedule
    check --against); a study whose --against study has no sweep yet is reported without it
    instead of stopping the script."""
    calls = _run_study_script(tmp_path, SHORTER_CHECKS="1", STUDIES="builtin_budget builtin_scratch_recipe "
                                                                       "builtin_long_paths builtin_fresh_samples")
    trains = [c for c in calls if " diffusion_seg.train " in c]
    assert len(trains) == 3 + 2 + 3 + 1 and all(c.endswith("hydra.launcher.n_jobs=2 logger=csv") for c in trains)
    assert "study=builtin_scratch_recipe trainer.max_epochs=30" in trains[4]
    assert "study=builtin_long_paths trainer.max_epochs=40" in trains[6]
    long_paths = "logs/studies/builtin_long_paths/2026-12-05_0"
    # The oracle rows join the study's own sweep, before the shorter check is trained.
    assert calls.index(f"-m diffusion_seg.bench oracle --sweep {long_paths}0/") < calls.index(
        next(c for c in calls if "builtin_long_paths trainer.max_epochs=40" in c))
    reports = [c.split(" ", 2)[2] for c in calls if " diffusion_seg.report " in c]
    budget = "logs/studies/builtin_budget/2026-12-05_0"
    assert reports[0] == (f"{budget}0/ {budget}1/ {budget}2/ --out experiments/reports/builtin_budget "
                          "--baseline pathfinder_deeplabv2 --paired")  # no builtin_heads_far sweep: no --against
    recipe = "logs/studies/builtin_scratch_recipe/2026-12-05_0"
    assert reports[1] == (f"{recipe}0/ --out experiments/reports/builtin_scratch_recipe "
                          f"--baseline pathfinder_deeplabv2 --paired --against {recipe}1/ "
                          f"--against {budget}0/ {budget}1/ {budget}2/")  # the papers' recipe, every sweep
    assert "study=builtin_long_paths experiment=pathfinder_pdn model.layers=8" in trains[7]
    assert reports[2] == (f"{long_paths}0/ {long_paths}2/ --out experiments/reports/builtin_long_paths "
                          f"--baseline pathfinder_deeplabv2 --paired --against {long_paths}1/")
    # Each run on its own training images (the stand-in ran none: the report of no evaluations).
    assert reports[3] == (f"{long_paths}0/ {long_paths}2/ {long_paths}1/ --eval eval_train "
                          "--out experiments/reports/builtin_long_paths_train_images")
    assert reports[4] == (f"{long_paths}0/ {long_paths}2/ --eval eval_reach "
                          "--out experiments/reports/builtin_long_paths_beyond_reach")
    fresh = "logs/studies/builtin_fresh_samples/2026-12-05_00/"
    assert reports[5] == (f"{fresh} --out experiments/reports/builtin_fresh_samples --baseline pathfinder_deeplabv2 "
                          f"--paired --against {long_paths}0/ {long_paths}1/ {long_paths}2/")  # every sweep
    assert reports[6:] == [f"{fresh} --eval eval_train --out experiments/reports/builtin_fresh_samples_train_images",
                           f"{fresh} --eval eval_reach --out experiments/reports/builtin_fresh_samples_beyond_reach"]


def test_reevaluate_script_evaluates_each_finished_job_once_and_reports_them(trained_pdn, tmp_path):
    """experiments/reevaluate.sh on a moved sweep: the best checkpoint is found in the job dir,
    the eval overrides after ``--`` apply, ONLY= and jobs without a checkpoint are left out."""
    import os
    import shutil
    import subprocess

    import yaml

    run_dir, _ = trained_pdn
    sweep = tmp_path / "sweep"
    shutil.copytree(run_dir, sweep / "0")
    shutil.copytree(run_dir, sweep / "1")
    shutil.rmtree(sweep / "1" / "checkpoints")  # as an oracle row: records, no checkpoint
    script = Path(__file__).parents[1] / "experiments" / "reevaluate.sh"

    def reevaluate(*only: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "ONLY"}
        env.update(WANDB_MODE="offline", **dict(o.split("=", 1) for o in only))
        return subprocess.run(["bash", str(script), "eval_flip", str(tmp_path / "report"), str(sweep), "--",
                               "task.inference.flip=true"], text=True, capture_output=True, env=env)

    skipped = reevaluate("ONLY=model=difnet")  # no job was launched with it: nothing to report
    assert skipped.returncode != 0 and "with an evaluation <job>/eval_flip/metrics.yaml" in skipped.stderr
    assert not (sweep / "0" / "eval_flip").exists()
    done = reevaluate()
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = yaml.safe_load((sweep / "0" / "eval_flip" / "metrics.yaml").read_text())
    assert "test/mIoU" in metrics and not (sweep / "1" / "eval_flip").exists()
    config = yaml.safe_load((sweep / "0" / "eval_flip" / ".hydra" / "config.yaml").read_text())
    assert config["task"]["inference"]["flip"] is True
    assert (tmp_path / "report" / "report.md").is_file()
