"""`python -m diffusion_seg.report`: sweep dirs → report.md, report.png, runs.csv."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
import yaml

from diffusion_seg.cli.report import main


def make_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None,
             study: dict | None = None, status: str = "finished") -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 0, **({"study": study} if study else {})}))
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


def test_wall_time_from_the_last_start_to_the_completion_marker(tmp_path, capsys):
    """The run's minutes: its last recorded start (a resumed run's earlier attempt does not
    count) to the completion marker; mean ± std per setting and a CSV column."""
    sweep = tmp_path / "sweep"
    for num, (seed, minutes) in enumerate([(1, 3.0), (2, 5.0)]):
        job = make_job(sweep, num, ["study=toy", "model=pdn", f"seed={seed}"], metrics(0.5), STUDY)
        attempts = [{"time": 100.0, "action": "start"}, {"time": 1000.0, "action": "start"}]
        (job / "job.yaml").write_text(yaml.safe_dump({"overrides": [], "attempts": attempts}))
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
