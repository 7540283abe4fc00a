"""`python -m diffusion_seg.report`: sweep dirs → report.md, report.png, runs.csv."""

from __future__ import annotations

import csv
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from diffusion_seg.cli.report import main


def make_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None,
             study: dict | None = None, status: str = "finished", legacy: bool = False,
             config: dict | None = None, code: str | None = None) -> Path:
    """A job dir as a training job leaves it: its own records (job.yaml, config.yaml), Hydra's
    .hydra/ and, once done, finished.yaml; ``legacy``: a job dir from before the job's own
    records (.hydra/ only); ``config``: entries of its composed config; ``code``: the code
    version job.yaml records."""
    job = sweep / str(num)
    config = {"seed": 0, **(config or {}), **({"study": study} if study else {})}
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if not legacy:
        record = {"overrides": sorted(overrides), "attempts": [], **({"code": code} if code else {})}
        (job / "job.yaml").write_text(yaml.safe_dump(record))
        (job / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (job / "finished.yaml").write_text(yaml.safe_dump({"status": status, "metrics": metrics}))
    return job


STUDY = {"name": "toy", "knob": "dataset.max_distance", "published": {"model=pdn": 50.0}}


def metrics(miou: float, split: str = "test") -> dict:
    return {f"{split}/mIoU": miou, f"{split}/mAcc": miou + 0.1, f"{split}/aAcc": 0.9,
            f"{split}/IoU/background": 0.95, f"{split}/IoU/red_path": miou - 0.05}


def run(capsys, *args) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_report_tables_plot_and_csv(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    values = {}
    n = 0
    for model in ("fcn", "pdn"):
        for distance in (2, 8):
            for seed in (1, 2):
                miou = 0.5 + 0.1 * (model == "pdn") - 0.02 * distance + 0.01 * seed
                values.setdefault((model, distance), []).append(100 * miou)
                make_job(sweep, n, [f"study=toy", f"model={model}", f"dataset.max_distance={distance}",
                                    f"seed={seed}"], metrics(miou), STUDY)
                n += 1
    make_job(sweep, n, ["study=toy", "model=pdn", "dataset.max_distance=8", "seed=3"], None, STUDY)
    make_job(sweep, n + 1, ["study=toy", "model=pdn", "dataset.max_distance=8", "seed=4"],
             metrics(0.0), STUDY, status="stopped: non-finite loss")
    code, out, _ = run(capsys, sweep)
    assert code == 0 and "8 finished run(s) in 4 setting(s), 2 unfinished" in out
    report = (sweep / "report.md").read_text()
    # mean ± sample std over the two seeds, in %, for each setting; n; published beside ours
    for (model, distance), vals in values.items():
        mean, std = statistics.fmean(vals), statistics.stdev(vals)
        row = f"| `dataset.max_distance={distance} model={model}` | 2 | {mean:.2f} ± {std:.2f} |"
        assert row in report, row
    assert "| published mIoU |" in report and "| 50.00 |" in report
    assert "## Per-class IoU (test)" in report and "red_path" in report
    assert "- unfinished: `" in report and "- stopped: non-finite loss: `" in report
    assert (sweep / "report.png").stat().st_size > 5000
    with open(sweep / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and {r["status"] for r in rows} == {"finished", "unfinished", "stopped: non-finite loss"}
    assert float(rows[0]["test/mIoU"]) == pytest.approx(0.5 - 0.04 + 0.01)


def test_report_falls_back_to_val_and_writes_to_out(tmp_path, capsys):
    sweep = tmp_path / "s"
    make_job(sweep, 0, ["model=fcn"], metrics(0.4, "val"))
    code, _, _ = run(capsys, sweep, "--out", tmp_path / "out")
    assert code == 0 and "metrics of the `val` split" in (tmp_path / "out" / "report.md").read_text()


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, empty)
    assert code == 2 and err.startswith(f"error: {empty} holds no runs")
    code, _, err = run(capsys, tmp_path / "nowhere")
    assert code == 2 and "is not a directory" in err
    a, b = tmp_path / "a", tmp_path / "b"
    make_job(a, 0, ["model=fcn"], metrics(0.4), {"name": "one"})
    make_job(b, 0, ["model=fcn"], metrics(0.4), {"name": "two"})
    code, _, err = run(capsys, a, b)
    assert code == 2 and "different studies (one, two)" in err
    c = tmp_path / "c"
    make_job(c, 0, ["model=fcn"], {"test/mIoU": 0.4})
    make_job(c, 1, ["model=fcn", "seed=2"], {"test/aAcc": 0.4, "test/mAcc": 0.3})
    code, _, err = run(capsys, c, "--split", "test")
    assert code == 2 and f"{c / '1'} has no metric test/mIoU" in err
    d = tmp_path / "d"
    make_job(d, 0, ["model=fcn"], None)
    code, _, err = run(capsys, d)
    assert code == 2 and "no run in" in err and "has finished yet" in err


def set_attempts(job: Path, attempts: list[dict]) -> None:
    record = yaml.safe_load((job / "job.yaml").read_text())
    (job / "job.yaml").write_text(yaml.safe_dump({**record, "attempts": attempts}))


def test_wall_time_from_the_last_start_to_the_completion_marker(tmp_path, capsys):
    """Records without attempt ends (before they were written): the last fresh start (an
    earlier run trained over does not count) to the completion marker; mean ± std per setting
    and a CSV column."""
    sweep = tmp_path / "sweep"
    for num, (seed, minutes) in enumerate([(1, 3.0), (2, 5.0)]):
        job = make_job(sweep, num, ["study=toy", "model=pdn", f"seed={seed}"], metrics(0.5), STUDY)
        set_attempts(job, [{"time": 100.0, "action": "start"}, {"time": 1000.0, "action": "start"}])
        marker = yaml.safe_load((job / "finished.yaml").read_text())
        (job / "finished.yaml").write_text(yaml.safe_dump({**marker, "time": 1000.0 + 60 * minutes}))
    make_job(sweep, 2, ["study=toy", "model=fcn", "seed=1"], metrics(0.4), STUDY)  # no record
    assert run(capsys, sweep)[0] == 0
    report = (sweep / "report.md").read_text()
    assert "| wall time, min |" in report
    assert f"| 4.00 ± {statistics.stdev([3.0, 5.0]):.2f} |" in report
    fcn_row = next(line for line in report.splitlines() if line.startswith("| `model=fcn`"))
    assert fcn_row.endswith("| – | – |")  # no published number, no start record: no wall time
    with open(sweep / "runs.csv") as f:
        assert [r["minutes"] for r in csv.DictReader(f)] == ["3.00", "5.00", ""]


def test_report_of_a_re_evaluation_of_every_run(tmp_path, capsys):
    """--eval NAME: the metrics eval wrote into <job>/NAME/metrics.yaml replace the runs'
    own; a run without that file is listed as not evaluated."""
    sweep = tmp_path / "sweep"
    for seed, miou in ((1, 0.30), (2, 0.40)):
        job = make_job(sweep, seed, ["study=toy", "model=pdn", f"seed={seed}"], metrics(0.9), STUDY)
        (job / "far").mkdir()
        (job / "far" / "metrics.yaml").write_text(yaml.safe_dump(metrics(miou)))
    make_job(sweep, 3, ["study=toy", "model=pdn", "seed=3"], metrics(0.9), STUDY)
    code, out, _ = run(capsys, sweep, "--eval", "far")
    assert code == 0 and "2 finished run(s) in 1 setting(s), 1 unfinished" in out
    report = (sweep / "report.md").read_text()
    assert f"| 35.00 ± {statistics.stdev([30.0, 40.0]):.2f} |" in report
    assert "evaluation `<job>/far/metrics.yaml`" in report
    assert "- not evaluated (far/metrics.yaml missing): `" in report


def test_wall_time_sums_the_attempts_not_the_pause_between(tmp_path, capsys):
    """Killed after 10 min, resumed a day later for 5 min, skipped by a later relaunch: 15 min
    (first start → final end would say a day). An attempt that left no end before a resume
    makes the time unknown rather than wrong."""
    sweep = tmp_path / "sweep"
    day = 24 * 3600.0
    job = make_job(sweep, 0, ["study=toy", "model=pdn", "seed=1"], metrics(0.5), STUDY)
    set_attempts(job, [{"time": 0.0, "end": 600.0, "action": "start"},
                       {"time": day, "end": day + 300.0, "action": "resume"},
                       {"time": 2 * day, "end": 2 * day + 1.0, "action": "skip"}])
    killed = make_job(sweep, 1, ["study=toy", "model=pdn", "seed=2"], metrics(0.5), STUDY)
    set_attempts(killed, [{"time": 0.0, "action": "start"}, {"time": day, "end": day + 300.0, "action": "resume"}])
    assert run(capsys, sweep)[0] == 0
    with open(sweep / "runs.csv") as f:
        assert [r["minutes"] for r in csv.DictReader(f)] == ["15.00", ""]
    report = (sweep / "report.md").read_text()
    assert "| 15.00 |" in report and "summed over its attempts" in report


def test_the_report_reads_what_each_job_recorded_not_hydras_files(tmp_path, capsys):
    """A later launch into the sweep dir rewrote job 1's .hydra/ (neighbors=48): the report
    shows what the job ran (its job.yaml: 24) and the command from the jobs' records."""
    sweep = tmp_path / "sweep"
    study = {**STUDY, "knob": "model.neighbors", "command": "python -m diffusion_seg.train -m study=toy"}
    for num, neighbors in enumerate((8, 24)):
        make_job(sweep, num, ["study=toy", "model=pdn", f"model.neighbors={neighbors}", "seed=1"], metrics(0.5), study)
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["study=toy", "model=pdn", "model.neighbors=48", "seed=1"]))
    (sweep / "1" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"study": study, "model": {"neighbors": 48}}))
    assert run(capsys, sweep)[0] == 0
    report = (sweep / "report.md").read_text()
    assert "| `model.neighbors=24` | 1 |" in report and "48" not in report
    assert "python -m diffusion_seg.train -m study=toy model.neighbors=8,24 model=pdn seed=1\n" in report
    assert "-m study=toy\n" not in report  # the study's canonical command is not what ran
    assert ".hydra" not in report  # every job has its own record


def test_old_job_dirs_fall_back_to_hydras_files_and_the_report_says_so(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["model=fcn", "seed=1"], metrics(0.4), legacy=True)
    make_job(sweep, 1, ["model=pdn", "seed=1"], metrics(0.5))
    assert run(capsys, sweep)[0] == 0
    report = (sweep / "report.md").read_text()
    assert "| `model=fcn` | 1 |" in report and "| `model=pdn` | 1 |" in report
    assert "1 of the 2 runs have no `job.yaml` / `config.yaml`" in report and "`.hydra/`" in report


def test_the_command_of_runs_that_are_not_a_grid_is_one_line_per_setting(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for num, (lr, seed) in enumerate([(0.1, 1), (0.1, 2), (0.01, 1)]):  # no (0.01, seed 2): not a grid
        make_job(sweep, num, ["model=pdn", f"optimizer.lr={lr}", f"seed={seed}"], metrics(0.5))
    assert run(capsys, sweep)[0] == 0
    report = (sweep / "report.md").read_text()
    assert ("```\npython -m diffusion_seg.train -m model=pdn optimizer.lr=0.1 seed=1,2\n"
            "python -m diffusion_seg.train -m model=pdn optimizer.lr=0.01 seed=1\n```") in report


def test_paths_in_the_report_are_relative_to_the_sweep_dir(tmp_path, capsys):
    sweep = tmp_path / "logs" / "2026-11-21_10-00-00"
    make_job(sweep, 0, ["model=fcn", "seed=1"], metrics(0.4))
    make_job(sweep, 1, ["model=fcn", "seed=2"], None)
    other = tmp_path / "logs" / "2026-11-22_10-00-00"
    make_job(other, 0, ["model=fcn", "seed=3"], metrics(0.5))
    assert run(capsys, sweep, other, "--out", tmp_path / "out")[0] == 0
    for name in ("report.md", "runs.csv"):
        assert str(tmp_path) not in (tmp_path / "out" / name).read_text(), name
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Runs from `2026-11-21_10-00-00`, `../2026-11-22_10-00-00`;" in report
    assert "- unfinished: `1` (model=fcn seed=2)" in report
    with open(tmp_path / "out" / "runs.csv") as f:
        assert [r["job"] for r in csv.DictReader(f)] == ["0", "1", "../2026-11-22_10-00-00/0"]


def test_the_plot_names_split_and_metric_and_keeps_whole_knobs_whole(tmp_path):
    from diffusion_seg.studies import aggregate, gather, report_figure

    sweep = tmp_path / "sweep"
    study = {"name": "toy", "knob": "model.layers"}
    for num, layers in enumerate((1, 2, 4)):
        make_job(sweep, num, ["model=pdn", f"model.layers={layers}"], metrics(0.5 + layers / 100, "val"), study)
    rows = aggregate(gather([sweep]), "val")
    ax = report_figure(rows, "model.layers", "val", title="toy").axes[0]
    assert list(ax.get_xticks()) == [1, 2, 4]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
    assert "val mIoU" in ax.get_title() and "toy" in ax.get_title() and ax.get_ylabel() == "val mIoU (%)"


def test_per_class_csv_holds_percent_like_the_tables(tmp_path):
    from diffusion_seg.plots import write_per_class_csv

    confmat = [[3, 1], [0, 4]]  # IoU: 3/4 and 4/5
    write_per_class_csv(tmp_path / "per_class.csv", confmat, ["a", "b"])
    with open(tmp_path / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["class"], r["IoU (%)"], r["Acc (%)"]) for r in rows] == [("a", "75.0000", "75.0000"),
                                                                       ("b", "80.0000", "100.0000")]


def test_every_command_has_a_console_script():
    """Each ``python -m diffusion_seg.<command>`` (a module of diffusion_seg/cli with a main, and
    bench) is also a ``diffusion-seg-<command>`` script of pyproject.toml."""
    import ast
    import tomllib

    root = Path(__file__).parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    commands = {p.stem for p in (root / "diffusion_seg" / "cli").glob("*.py")
                if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(p.read_text()).body)}
    assert commands >= {"train", "eval", "report"}
    for command in commands:
        assert scripts.get(f"diffusion-seg-{command}") == f"diffusion_seg.cli.{command}:main", command
    assert scripts["diffusion-seg-bench"] == "diffusion_seg.bench.__main__:main"


def write_curve(job: Path, points: list[tuple[int, float]]) -> None:
    """The job's Lightning CSV log (csv/metrics.csv): a train row and a val row per step."""
    (job / "csv").mkdir(parents=True, exist_ok=True)
    with open(job / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "train/loss", "val/mIoU", "val/mAcc"])
        for epoch, (step, miou) in enumerate(points):
            writer.writerow([epoch, step, 0.5, "", ""])
            writer.writerow([epoch, step, "", miou, miou + 0.1])


def table_row(report: str, setting: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| `{setting}` |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def table_header(report: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith("| setting | n |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_learning_curves_and_the_convergence_flag(tmp_path, capsys):
    """A flat curve gains +0.2 over its last 20 % of steps (800 → 1000): converged; a climbing
    one +8.0: not; a setting without a CSV log: –. curves.png: the mean over seeds as a line,
    min–max as a band, referenced from report.md."""
    from diffusion_seg.studies import aggregate, curves_figure, gather

    sweep = tmp_path / "sweep"
    steps = range(100, 1001, 100)
    for num, (model, seed) in enumerate([("fcn", 1), ("fcn", 2), ("pdn", 1), ("pdn", 2)]):
        job = make_job(sweep, num, ["study=toy", f"model={model}", f"seed={seed}"], metrics(0.5), STUDY)
        offset = 0.02 * (seed - 1)
        if model == "fcn":  # +0.1 points per 100 steps
            write_curve(job, [(s, 0.40 + offset + 0.001 * s / 100) for s in steps])
        else:  # +4 points per 100 steps
            write_curve(job, [(s, 0.20 + offset + 0.04 * s / 100) for s in steps])
    make_job(sweep, 4, ["study=toy", "model=unet", "seed=1"], metrics(0.5), STUDY)
    assert run(capsys, sweep)[0] == 0
    report = (sweep / "report.md").read_text()
    header = table_header(report)
    column = header.index("converged")
    assert table_row(report, "model=fcn")[column] == "yes (+0.2)"
    assert table_row(report, "model=pdn")[column] == "no: still climbing (+8.0)"
    assert table_row(report, "model=unet")[column] == "–"
    assert "gained less than 0.5 mIoU points over the last 20 % of the training steps" in report
    assert "![val mIoU against optimizer step](curves.png)" in report
    assert (sweep / "curves.png").stat().st_size > 5000
    rows = aggregate(gather([sweep]), "test")
    ax = curves_figure(rows, "toy").axes[0]
    assert [line.get_label() for line in ax.lines] == ["model=fcn", "model=pdn"]
    assert list(ax.lines[1].get_xdata()) == list(steps)
    assert list(ax.lines[1].get_ydata()) == pytest.approx([100 * (0.21 + 0.04 * s / 100) for s in steps])
    band = ax.collections[1].get_paths()[0].vertices[:, 1]  # the band spans the two seeds
    assert band.min() == pytest.approx(100 * (0.20 + 0.04)) and band.max() == pytest.approx(100 * (0.22 + 0.4))
    assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "val mIoU (%)"
    assert len(curves_figure(rows, "toy").axes) == 1  # no far-misleading curve logged: one panel


def test_pathfinder_curves_add_the_far_misleading_colour_accuracy(tmp_path, capsys):
    """A run that logged val/color_acc/far_misleading gets it as a second panel of curves.png."""
    from diffusion_seg.studies import aggregate, curves_figure, gather

    sweep = tmp_path / "sweep"
    for num, seed in enumerate((1, 2)):
        job = make_job(sweep, num, ["study=toy", "model=pdn", f"seed={seed}"], metrics(0.5), STUDY)
        (job / "csv").mkdir()
        with open(job / "csv" / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "step", "val/mIoU", "val/color_acc/far_misleading"])
            for epoch, step in enumerate((100, 200)):
                writer.writerow([epoch, step, 0.5, 0.3 + 0.2 * epoch + 0.1 * seed])
    assert run(capsys, sweep)[0] == 0
    assert "on the right, the same for the colour accuracy on the far misleading" in (sweep / "report.md").read_text()
    fig = curves_figure(aggregate(gather([sweep]), "test"), "toy")
    far = fig.axes[1]
    assert far.get_ylabel() == "val colour accuracy, far misleading (%)"
    assert list(far.lines[0].get_ydata()) == pytest.approx([45.0, 65.0])  # the mean of 40/50, 60/70
    assert far.lines[1].get_label() == "chance" and far.lines[1].get_ydata()[0] == pytest.approx(100 / 3)


def test_the_tail_gain_interpolates_at_80_percent_of_the_last_step():
    from diffusion_seg.studies import converged, tail_gain

    # last step 900: from step 720, between 450 (20) and 900 (30): 20 + 10 * 270 / 450 = 26
    assert tail_gain([(0, 10.0), (450, 20.0), (900, 30.0)]) == pytest.approx(4.0)
    assert tail_gain([(500, 40.0), (1000, 40.3)]) == pytest.approx(0.3 * 200 / 500)
    assert tail_gain([(900, 40.0), (1000, 40.3)]) == pytest.approx(0.3)  # starts after step 800
    assert converged([(1000, 40.0)]) == "–" and converged([]) == "–"
    assert converged([(0, 10.0), (1000, 10.49)]) == "yes (+0.1)"  # +0.098 from step 800
    assert converged([(0, 10.0), (800, 10.0), (1000, 10.49)]) == "yes (+0.5)"  # 0.49 < 0.5
    assert converged([(0, 0.0), (800, 50.0), (1000, 50.5)]) == "no: still climbing (+0.5)"  # not below


def delta_sweep(tmp_path: Path, pdn_seeds=(1, 2, 3)) -> tuple[Path, dict[str, dict[int, float]]]:
    sweep = tmp_path / "sweep"
    values = {"model=fcn": {1: 0.40, 2: 0.41, 3: 0.45},
              "model=pdn": dict(zip(pdn_seeds, (0.50, 0.52, 0.55))),
              "model=unet": {1: 0.47}}
    num = 0
    for setting, seeds in values.items():
        for seed, miou in seeds.items():
            make_job(sweep, num, ["study=toy", setting, f"seed={seed}"], metrics(miou), STUDY)
            num += 1
    return sweep, {k: {s: 100 * v for s, v in seeds.items()} for k, seeds in values.items()}


def test_baseline_difference_with_a_welch_interval(tmp_path, capsys):
    from scipy import stats

    sweep, values = delta_sweep(tmp_path)
    assert run(capsys, sweep, "--baseline", "fcn")[0] == 0  # a unique part of a setting
    report = (sweep / "report.md").read_text()
    header = table_header(report)
    assert header[-1] == "Δ mIoU vs `model=fcn`"
    a, b = list(values["model=pdn"].values()), list(values["model=fcn"].values())
    # Welch by hand: standard error and Welch–Satterthwaite degrees of freedom
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    diff = statistics.fmean(a) - statistics.fmean(b)
    half = stats.t.ppf(0.975, df) * (va + vb) ** 0.5
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (diff - half, diff + half) == pytest.approx((ci.low, ci.high))
    assert table_row(report, "model=pdn")[-1] == f"{diff:+.2f} [{diff - half:+.2f}, {diff + half:+.2f}]"
    assert table_row(report, "model=fcn")[-1] == "baseline"
    unet = 47.0 - statistics.fmean(b)
    assert table_row(report, "model=unet")[-1] == f"{unet:+.2f} [n<2]"
    assert "Welch's interval" in report and "Welch–Satterthwaite" in report


def test_paired_baseline_interval_over_matching_seeds_and_welch_where_they_differ(tmp_path, capsys):
    from scipy import stats

    sweep, values = delta_sweep(tmp_path)
    assert run(capsys, sweep, "--baseline", "model=fcn", "--paired")[0] == 0
    report = (sweep / "report.md").read_text()
    pdn, fcn = values["model=pdn"], values["model=fcn"]
    d = [pdn[s] - fcn[s] for s in (1, 2, 3)]
    ci = stats.ttest_rel([pdn[s] for s in (1, 2, 3)], [fcn[s] for s in (1, 2, 3)]).confidence_interval(0.95)
    assert table_row(report, "model=pdn")[-1] == f"{statistics.fmean(d):+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]"
    assert "paired t interval of the per-seed differences" in report and "`model=pdn`." in report
    assert "Seeds that do not match the baseline's, so Welch's interval" in report  # unet: seed 1 only

    other = tmp_path / "other"
    other.mkdir()
    sweep, values = delta_sweep(other, pdn_seeds=(4, 5, 6))  # no seed in common: Welch
    assert run(capsys, sweep, "--baseline", "model=fcn", "--paired")[0] == 0
    report = (sweep / "report.md").read_text()
    ci = stats.ttest_ind(list(values["model=pdn"].values()), list(values["model=fcn"].values()),
                         equal_var=False).confidence_interval(0.95)
    assert table_row(report, "model=pdn")[-1].endswith(f"[{ci.low:+.2f}, {ci.high:+.2f}]")
    assert "paired t interval" not in report
    assert "do not match the baseline's, so Welch's interval" in report and "`model=pdn`" in report


def test_an_unknown_or_ambiguous_baseline_is_one_line_naming_the_settings(tmp_path, capsys):
    sweep, _ = delta_sweep(tmp_path)
    code, _, err = run(capsys, sweep, "--baseline", "deeplab")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --baseline 'deeplab': no setting matches; the settings: "
                          "model=fcn; model=pdn; model=unet")
    code, _, err = run(capsys, sweep, "--baseline", "model=")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --baseline 'model=': matches 3 settings")
    code, _, err = run(capsys, sweep, "--paired")
    assert code == 2 and "--paired needs --baseline" in err
    assert not (sweep / "report.md").exists()


def test_pathfinder_context_table(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    context = {"fcn": [(0.90, 0.60), (0.80, 0.40)], "pdn": [(0.99, 0.95), (0.97, float("nan"))]}
    num = 0
    for model, seeds in context.items():
        for seed, (acc, far) in enumerate(seeds, 1):
            logged = {**metrics(0.5), "test/color_acc": acc, "test/color_acc/d6+": far,
                      "test/color_n/d6+": 10.0}
            make_job(sweep, num, ["study=toy", f"model={model}", f"seed={seed}"], logged, STUDY)
            num += 1
    make_job(sweep, num, ["study=toy", "model=unet", "seed=1"], metrics(0.5), STUDY)  # none logged
    assert run(capsys, sweep)[0] == 0
    report = (sweep / "report.md").read_text()
    assert "## Colour accuracy of path pixels called path (context)" in report
    table = report.split("(context)")[1]
    assert "| setting | all | d6+ |\n" in table  # only the keys some run logged
    assert f"| `model=fcn` | 85.00 ± {statistics.stdev([90.0, 80.0]):.2f} | 50.00 ± {statistics.stdev([60.0, 40.0]):.2f} |" in table
    assert f"| `model=pdn` | 98.00 ± {statistics.stdev([99.0, 97.0]):.2f} | 95.00 |" in table  # NaN left out
    assert "| `model=unet` | – | – |" in table


def test_far_misleading_difference_to_the_baseline_with_its_paired_interval(tmp_path, capsys):
    """With --baseline, the context table carries each row's far-misleading colour accuracy
    minus the baseline's, with its interval (paired over the shared seeds here)."""
    from scipy import stats

    sweep = tmp_path / "sweep"
    far = {"fcn": (0.60, 0.62, 0.70), "pdn": (0.90, 0.95, 0.93)}
    num = 0
    for model, seeds in far.items():
        for seed, value in enumerate(seeds, 1):
            logged = {**metrics(0.5), "test/color_acc": 0.9, "test/color_acc/far_misleading": value}
            make_job(sweep, num, ["study=toy", f"model={model}", f"seed={seed}"], logged, STUDY)
            num += 1
    assert run(capsys, sweep, "--baseline", "fcn", "--paired")[0] == 0
    table = (sweep / "report.md").read_text().split("(context)")[1]
    assert "| setting | all | far_misleading | Δ far_misleading vs `model=fcn` |\n" in table
    diffs = [100 * (p - f) for p, f in zip(far["pdn"], far["fcn"])]
    ci = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    row = next(line for line in table.splitlines() if line.startswith("| `model=pdn` |"))
    assert row.endswith(f"| {statistics.fmean(diffs):+.2f} [{ci.low:+.2f}, {ci.high:+.2f}] |")
    assert next(line for line in table.splitlines() if line.startswith("| `model=fcn` |")).endswith("| baseline |")
    assert "Δ color_acc/far_misleading vs `model=fcn`" in table


def test_no_context_table_without_context_metrics(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["model=fcn"], metrics(0.4))
    assert run(capsys, sweep)[0] == 0
    report = (sweep / "report.md").read_text()
    assert "(context)" not in report and "converged" not in report and "No learning curves" in report
    assert not (sweep / "curves.png").exists()


def test_oracle_sweep_jobs_carry_the_records_the_report_reads(tmp_path, capsys, monkeypatch):
    """bench oracle --sweep reads each run's own config.yaml (no .hydra/) and writes job.yaml and
    config.yaml beside its finished.yaml, so the report shows it as a row from its records."""
    from diffusion_seg.bench import oracle
    from diffusion_seg.jobs import code_version

    sweep = tmp_path / "sweep"
    seen = []
    for num, distance in enumerate((2, 8)):
        job = make_job(sweep, num, ["study=toy", "model=pdn", f"dataset.max_distance={distance}", "seed=1"],
                       {**metrics(0.5), "test/color_acc": 0.5}, STUDY)
        shutil.rmtree(job / ".hydra")
        (job / "config.yaml").write_text(yaml.safe_dump({"study": STUDY, "dataset": {"max_distance": distance}}))
    monkeypatch.setattr(oracle, "pathfinder_split", lambda node, split: seen.append(node) or node)
    monkeypatch.setattr(oracle, "evaluate", lambda node: {**metrics(0.9), "test/color_acc": 1.0})
    jobs = oracle.add_to_sweep(sweep)
    assert [j.name for j in jobs] == ["oracle_0", "oracle_1"] and seen == [{"max_distance": 2}, {"max_distance": 8}]
    for job in jobs:
        assert not (job / ".hydra").exists()
        record = yaml.safe_load((job / "job.yaml").read_text())
        assert oracle.ROW in record["overrides"] and record["attempts"][0]["action"] == "start"
        assert record["code"] == code_version()  # the report's code line names it
        assert yaml.safe_load((job / "config.yaml").read_text())["study"] == STUDY
    assert run(capsys, sweep)[0] == 0
    report = (sweep / "report.md").read_text()
    row = table_row(report, f"dataset.max_distance=8 {oracle.ROW}")
    assert row[1:3] == ["1", "90.00"]
    assert ".hydra" not in report  # every job, the oracle's too, has its own records
    assert f"| `dataset.max_distance=8 {oracle.ROW}` | 100.00 |" in report
    # What every trained run shares stays out of their names although the oracle lacks it.
    assert table_row(report, "dataset.max_distance=8")[1] == "1"
    assert "Every trained run: `model=pdn`" in report
    # What ran: the training sweep, then the oracle's own command (not a training command)
    ran = report.split("```")[1].strip().splitlines()
    assert ran[-1] == oracle.COMMAND and all(oracle.ROW not in line for line in ran)
    assert ran[0].startswith("python -m diffusion_seg.train -m")


def test_an_override_that_changes_nothing_computed_names_no_setting(tmp_path, capsys):
    """A later sweep of the same rows with the progress bar off or another logger: one
    setting per computation, and the command that ran still shows the override. A key other
    keys interpolate (paths.*) still names its setting."""
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["study=toy", "model=pdn", "seed=1"], metrics(0.5), STUDY)
    make_job(sweep, 1, ["study=toy", "model=pdn", "trainer.enable_progress_bar=False", "logger=wandb",
                        "seed=2"], metrics(0.6), STUDY)
    make_job(sweep, 2, ["study=toy", "model=pdn", "paths.data_dir=/elsewhere", "seed=1"], metrics(0.4), STUDY)
    code, out, _ = run(capsys, sweep)
    assert code == 0 and "3 finished run(s) in 2 setting(s)" in out
    report = (sweep / "report.md").read_text()
    assert "| `(defaults)` | 2 | 55.00 ± 7.07 |" in report  # model=pdn: every run's
    assert "| `paths.data_dir=/elsewhere` | 1 | 40.00 |" in report
    assert "trainer.enable_progress_bar=False" in report.split("| setting |")[0]


def test_a_baseline_that_several_settings_have_compares_each_row_with_its_twin(tmp_path, capsys):
    """--baseline model.neighbors=8 on layers × neighbours: each 24NB row against the 8NB row of
    its depth (paired over the seeds), the 8NB rows are baselines, a row without a twin gets
    `–`; a name that is no override of the groups is refused with the settings."""
    sweep = tmp_path / "sweep"
    miou = {(1, 8): [0.50, 0.52], (1, 24): [0.53, 0.56], (4, 8): [0.60, 0.61], (4, 24): [0.70, 0.70],
            (2, 24): [0.55, 0.57]}
    n = 0
    for (layers, neighbors), values in miou.items():
        for seed, value in enumerate(values, start=1):
            make_job(sweep, n, ["study=toy", f"model.layers={layers}", f"model.neighbors={neighbors}",
                                f"seed={seed}"], metrics(value), STUDY)
            n += 1
    code, _, err = run(capsys, sweep, "--baseline", "model.neighbors=8", "--paired")
    assert code == 0, err
    report = (sweep / "report.md").read_text()
    rows = {line.split(" | ")[0]: line.split(" | ")[-1].rstrip(" |")
            for line in report.split("## Per-class")[0].splitlines() if line.startswith("| `model")}
    assert "| Δ mIoU vs `model.neighbors=8` |" in report
    assert rows["| `model.layers=1 model.neighbors=8`"] == "baseline"
    assert rows["| `model.layers=4 model.neighbors=8`"] == "baseline"
    # paired differences: 1 layer (3, 4) points, 4 layers (10, 9): means +3.50 and +9.50
    assert rows["| `model.layers=1 model.neighbors=24`"].startswith("+3.50 [")
    assert rows["| `model.layers=4 model.neighbors=24`"].startswith("+9.50 [")
    assert rows["| `model.layers=2 model.neighbors=24`"] == "–"
    assert "the row with `model.neighbors=8` and the row's other overrides" in report
    code, _, err = run(capsys, sweep, "--baseline", "model.layers")
    assert code == 2 and "--baseline 'model.layers': matches 5 settings" in err


def test_each_setting_against_the_same_setting_in_another_study(tmp_path, capsys):
    """--against: each row against the row of the same setting in another study's sweeps,
    named by what differs in the configs the runs recorded (not by a label), with the paired
    interval over the shared seeds, both convergence flags and the code each side recorded."""
    from scipy import stats

    short, long = tmp_path / "short", tmp_path / "long"
    values = {"short": {"model=fcn": (0.40, 0.42, 0.47), "model=pdn": (0.60, 0.61, 0.66)},
              "long": {"model=fcn": (0.45, 0.49, 0.50), "model=pdn": (0.62, 0.65, 0.67),
                       "model=unet": (0.55, 0.56, 0.52)}}
    for sweep, epochs, code in ((short, 60, None), (long, 120, "abc")):
        num = 0
        for setting, per_seed in values[sweep.name].items():
            for seed, miou in enumerate(per_seed, 1):
                far = {"test/color_acc": 0.9, "test/color_acc/far_misleading": miou + 0.2}
                make_job(sweep, num, [f"study={sweep.name}", setting, f"seed={seed}"],
                         {**metrics(miou), **far}, {"name": sweep.name},
                         config={"trainer": {"max_epochs": epochs, "devices": 1}, "logger": {"x": num}},
                         code=code)
                num += 1
    assert run(capsys, long, "--against", short, "--paired")[0] == 0  # --paired without --baseline
    report = (long / "report.md").read_text()
    section = report.split("## Against `short`")[1].split("## Runs")[0]
    header = next(line for line in section.splitlines() if line.startswith("| setting |"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["setting", "what differs (`short` → here)", "Δ mIoU vs `short`",
                                     "Δ far_misleading vs `short`", "converged here", "converged in `short`"]
    for setting in ("model=fcn", "model=pdn"):
        here, there = values["long"][setting], values["short"][setting]
        ci = stats.ttest_rel([100 * v for v in here], [100 * v for v in there]).confidence_interval(0.95)
        diff = statistics.fmean(100 * (a - b) for a, b in zip(here, there))
        cells = table_row(section, setting)
        assert cells[1] == "`trainer.max_epochs: 60 → 120`"  # the logger differs, but computes nothing
        assert cells[2] == cells[3] == f"{diff:+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]"
        assert cells[4:] == ["–", "–"]  # no learning curves logged
    assert table_row(section, "model=unet")[1:4] == ["–", "–", "–"]  # not in the other study
    assert "paired t interval of the per-seed differences" in section
    assert "here `abc` (9 runs); in `short` not recorded (6 runs from before jobs recorded it)" in section
    assert "Code the runs recorded (`code` in `<job>/job.yaml`): `abc` (9 runs)." in report

    again = tmp_path / "2026-12-05_01-23-22"  # another sweep of the same study: named by its dir
    make_job(again, 0, ["study=long", "model=fcn", "seed=1"], metrics(0.5), {"name": "long"})
    assert run(capsys, long, "--against", again, "--against", short)[0] == 0  # one section each
    sections = (long / "report.md").read_text().split("\n## Against ")[1:]
    assert [s.split("\n")[0] for s in sections] == ["`long 2026-12-05_01-23-22`", "`short`"]

    make_job(tmp_path / "other", 0, ["study=other", "model=deeplab"], metrics(0.4), {"name": "other"})
    code, _, err = run(capsys, long, "--against", tmp_path / "other")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --against: no setting of {tmp_path / 'other'} is one of this report's")
