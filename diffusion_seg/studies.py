"""Gather the runs of one or more sweeps into a study report: tables, a plot, a CSV.

A sweep dir holds one job dir per run (``<sweep>/<job number>/``), each with Hydra's
``.hydra/overrides.yaml`` and ``.hydra/config.yaml`` and what the run wrote: its final
metrics (``finished.yaml``, written when training ends) or, failing that, its CSV log
(``csv/metrics.csv``). Runs are grouped by *setting*: their overrides without ``seed``. Each
setting gets n, mean and standard deviation over its seeds. A study config
(``conf/study/<name>.yaml``) names its knob (the x axis of the plot) and the published
numbers of the paper table it reproduces (a column beside ours).

Offline and plain: no W&B, no Lightning, no torch. The command is
``python -m diffusion_seg.report`` (:mod:`diffusion_seg.cli.report`).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffusion_seg.errors import UserError

FINISHED_FILE = "finished.yaml"
METRICS = ("mIoU", "mAcc", "aAcc")
# Overrides that vary between repeats of one setting, not between settings.
REPEAT_KEYS = ("seed", "study")


class ReportError(UserError):
    """The sweep dirs cannot make one report; the message names the dir and the problem."""


@dataclass
class Run:
    """One job of a sweep."""

    path: Path
    overrides: list[str]
    study: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "finished"  # finished, unfinished (no final metrics), or why it stopped
    common: frozenset[str] = frozenset()  # overrides every run of the report shares
    minutes: float | None = None  # wall time of its last attempt (start to completion marker)

    @property
    def setting(self) -> str:
        """The overrides that tell this setting from the others (not the seed, not those
        every run shares), sorted."""
        kept = [o for o in self.overrides
                if o.split("=", 1)[0].lstrip("+~") not in REPEAT_KEYS and o not in self.common]
        return " ".join(sorted(kept)) or "(defaults)"

    def value(self, key: str) -> str | None:
        """The value this run's overrides give ``key`` (``None`` if not overridden)."""
        for override in self.overrides:
            name, _, value = override.partition("=")
            if name.lstrip("+~") == key:
                return value
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ReportError(f"cannot read {path}: {err}") from None


def _csv_metrics(path: Path) -> dict[str, float]:
    """The last logged value of every column of a Lightning CSV log."""
    last: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value not in ("", None) and key not in ("epoch", "step"):
                    try:
                        last[key] = float(value)
                    except ValueError:
                        continue
    return last


def read_run(job: Path, evaluation: str | None = None) -> Run:
    """One job dir: its overrides, its study and its final metrics (if it finished); with
    ``evaluation``, the metrics of a later evaluation of the run instead: the
    ``metrics.yaml`` that ``python -m diffusion_seg.eval ... hydra.run.dir=<job>/<evaluation>``
    wrote (e.g. multi-scale, CRF, another split or dataset option)."""
    overrides = _read_yaml(job / ".hydra" / "overrides.yaml") or []
    config = _read_yaml(job / ".hydra" / "config.yaml") or {}
    run = Run(job, [str(o) for o in overrides], dict(config.get("study") or {}))
    if evaluation is not None:
        metrics = job / evaluation / "metrics.yaml"
        if metrics.is_file():
            run.metrics = {k: float(v) for k, v in (_read_yaml(metrics) or {}).items()}
        else:
            run.status = f"not evaluated ({evaluation}/metrics.yaml missing)"
        return run
    finished = job / FINISHED_FILE
    if finished.is_file():
        marker = _read_yaml(finished) or {}
        run.status = str(marker.get("status", "finished"))  # e.g. a run stopped by a NaN loss
        run.metrics = {k: float(v) for k, v in (marker.get("metrics") or {}).items()}
        run.minutes = _wall_minutes(job, marker)
    elif (job / "csv" / "metrics.csv").is_file() and (job / "checkpoints" / "last.ckpt").is_file():
        # Runs from before completion markers: the CSV log's test metrics mean it finished.
        run.metrics = _csv_metrics(job / "csv" / "metrics.csv")
        if not any(k.startswith("test/") for k in run.metrics):
            run.status, run.metrics = "unfinished", {}
    else:
        run.status = "unfinished"
    return run


def _wall_minutes(job: Path, marker: dict[str, Any]) -> float | None:
    """Minutes from the last recorded start (``job.yaml``, written by the sweep's auto-resume)
    to the completion marker; ``None`` for runs without those records."""
    attempts = (_read_yaml(job / "job.yaml") or {}).get("attempts") if (job / "job.yaml").is_file() else None
    starts = [a["time"] for a in attempts or [] if a.get("action") == "start" and "time" in a]
    if not starts or "time" not in marker:
        return None
    return (float(marker["time"]) - float(starts[-1])) / 60.0


def gather(sweep_dirs: Sequence[Path], evaluation: str | None = None) -> list[Run]:
    """Every job of the sweeps (metrics from :func:`read_run`); fails on a dir with no job
    or on runs of different studies."""
    runs: list[Run] = []
    for sweep in sweep_dirs:
        if not sweep.is_dir():
            raise ReportError(f"{sweep} is not a directory; give the sweep dir of a multirun")
        jobs = sorted(
            (p for p in sweep.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()),
            key=lambda p: (len(p.name), p.name),
        )
        if not jobs:
            raise ReportError(
                f"{sweep} holds no runs (no <job>/.hydra/overrides.yaml); give the sweep dir "
                "of a multirun, e.g. logs/train/multiruns/<date>"
            )
        runs += [read_run(job, evaluation) for job in jobs]
    names = {run.study.get("name") for run in runs}
    if len(names) > 1:
        raise ReportError(
            f"the runs belong to different studies ({', '.join(sorted(map(str, names)))}); "
            "report one study at a time"
        )
    common = frozenset.intersection(*(frozenset(r.overrides) for r in runs)) if len(runs) > 1 else frozenset()
    for run in runs:
        run.common = common
    return runs


def pick_split(runs: Iterable[Run], split: str | None) -> str:
    """``test`` when every finished run has test metrics, else ``val`` (unless given)."""
    finished = [r for r in runs if r.status == "finished"]
    if split is not None:
        return split
    return "test" if finished and all("test/mIoU" in r.metrics for r in finished) else "val"


@dataclass
class Row:
    """One setting: its runs and the statistics over them."""

    setting: str
    runs: list[Run]
    stats: dict[str, tuple[float, float, int]]  # metric → (mean, std, n)
    published: float | None = None


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def aggregate(runs: Sequence[Run], split: str, class_names: Sequence[str] = ()) -> list[Row]:
    """Rows in first-seen order; each metric as a percentage, the study's
    ``extra_metrics`` (e.g. DifNet's learned ``diag/mu_1``) as logged."""
    by_setting: dict[str, list[Run]] = {}
    for run in runs:
        if run.status == "finished":
            by_setting.setdefault(run.setting, []).append(run)
    published = (runs[0].study.get("published") or {}) if runs else {}
    rows = []
    for setting, members in by_setting.items():
        stats = {}
        for key in [*METRICS, *(f"IoU/{c}" for c in class_names)]:
            name = f"{split}/{key}"
            values = [100.0 * r.metrics[name] for r in members if name in r.metrics]
            if key in METRICS and len(values) < len(members):
                missing = next(r.path for r in members if name not in r.metrics)
                raise ReportError(f"{missing} has no metric {name}; is it a training run of this study?")
            if values:
                stats[key] = _mean_std(values)
        for key in runs[0].study.get("extra_metrics") or []:
            values = [r.metrics[key] for r in members if key in r.metrics]
            if values:
                stats[key] = _mean_std(values)
        minutes = [r.minutes for r in members if r.minutes is not None]
        if minutes:
            stats["minutes"] = _mean_std(minutes)
        rows.append(Row(setting, members, stats, _published(published, setting)))
    return rows


def _published(published: dict[str, Any], setting: str) -> float | None:
    """The paper's number for a setting: a key of ``study.published`` that is one of its
    overrides (``experiment=pdn_8nb_1m_ade20k``) or the whole setting."""
    parts = set(setting.split())
    for key, value in published.items():
        if key == setting or key in parts:
            return float(value)
    return None


def _fmt(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "–"
    mean, std, n = stat
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def _fmt_raw(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "–"
    mean, std, n = stat
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def markdown(rows: Sequence[Row], runs: Sequence[Run], split: str, sweep_dirs: Sequence[Path],
             class_names: Sequence[str], command: str | None = None,
             evaluation: str | None = None) -> str:
    """``report.md``: the settings table, the per-class IoU table, unfinished runs."""
    study = runs[0].study if runs else {}
    title = study.get("name") or "sweep"
    lines = [f"# Study: {title}", ""]
    if study.get("description"):
        lines += [str(study["description"]).strip(), ""]
    source = f"the evaluation `<job>/{evaluation}/metrics.yaml` of every run" if evaluation else "the runs"
    lines += [f"Runs from {', '.join(f'`{d}`' for d in sweep_dirs)}; metrics of the `{split}` "
              f"split from {source} in %, mean ± standard deviation over the seeds (n runs).", ""]
    if command:
        lines += ["```", command, "```", ""]
    common = sorted(o for o in (runs[0].common if runs else ()) if not o.startswith("study="))
    if common:
        lines += ["Every run: " + " ".join(f"`{o}`" for o in common), ""]
    has_published = any(r.published is not None for r in rows)
    extra = list(study.get("extra_metrics") or [])
    timed = any("minutes" in r.stats for r in rows)
    header = ["setting", "n", *METRICS] + (["published mIoU"] if has_published else []) + extra
    header += ["wall time, min"] if timed else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"`{row.setting}`", str(len(row.runs)), *(_fmt(row.stats.get(m)) for m in METRICS)]
        if has_published:
            cells.append("–" if row.published is None else f"{row.published:.2f}")
        cells += [_fmt_raw(row.stats.get(m)) for m in extra]
        cells += [_fmt(row.stats.get("minutes"))] if timed else []
        lines.append("| " + " | ".join(cells) + " |")
    published_extra = study.get("published_extra") or {}
    if published_extra:
        cells = ["published", "", *([""] * len(METRICS))] + ([""] if has_published else [])
        cells += [str(published_extra.get(m, "–")) for m in extra] + ([""] if timed else [])
        lines.append("| " + " | ".join(cells) + " |")
    if timed:
        lines += ["", "Wall time: start to end of each run (training, validation, test, files), "
                  "as it ran, i.e. beside the other jobs of a parallel launcher."]
    present = [c for c in class_names if any(f"IoU/{c}" in r.stats for r in rows)]
    if present:
        lines += ["", f"## Per-class IoU ({split})", "",
                  "| setting | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
        for row in rows:
            lines.append(f"| `{row.setting}` | " + " | ".join(_fmt(row.stats.get(f'IoU/{c}')) for c in present) + " |")
    unfinished = [r for r in runs if r.status != "finished"]
    lines += ["", f"## Runs: {len(runs) - len(unfinished)} finished, {len(unfinished)} not", ""]
    lines += [f"- {r.status}: `{r.path}` ({' '.join(r.overrides) or 'defaults'})" for r in unfinished]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, runs: Sequence[Run]) -> None:
    """Every run, one row: job dir, status, setting, seed, every metric it has."""
    keys = sorted({k for r in runs for k in r.metrics})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", "status", "setting", "seed", "minutes", *keys])
        for r in runs:
            minutes = "" if r.minutes is None else f"{r.minutes:.2f}"
            writer.writerow([str(r.path), r.status, r.setting, r.value("seed") or "", minutes,
                             *(r.metrics.get(k, "") for k in keys)])


def _numeric(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def plot(path: Path, rows: Sequence[Row], knob: str | None, metric: str = "mIoU",
         published: bool = True) -> None:
    """The metric against the knob (one line per setting without the knob, error bars over
    seeds), or one bar per setting when the study has no numeric knob."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    knob_values = {id(r): _numeric(r.runs[0].value(knob)) if knob else None for r in rows}
    if knob and all(v is not None for v in knob_values.values()):
        lines: dict[str, list[tuple[float, tuple[float, float, int]]]] = {}
        for row in rows:
            label = " ".join(p for p in row.setting.split() if not p.startswith(f"{knob}=")) or "(defaults)"
            if metric in row.stats:
                lines.setdefault(label, []).append((knob_values[id(row)], row.stats[metric]))
        for label, points in lines.items():
            points.sort()
            xs = [x for x, _ in points]
            ax.errorbar(xs, [s[0] for _, s in points], yerr=[s[1] for _, s in points],
                        marker="o", capsize=3, label=label)
        ax.set_xlabel(knob)
        ax.legend(fontsize=7, loc="best")
    else:
        labels = [row.setting for row in rows]
        means = [row.stats.get(metric, (math.nan, 0.0, 0))[0] for row in rows]
        stds = [row.stats.get(metric, (math.nan, 0.0, 0))[1] for row in rows]
        xs = range(len(rows))
        ax.bar(xs, means, yerr=stds, capsize=3, color="#4c72b0", label="ours")
        if published and any(r.published is not None for r in rows):
            ax.scatter(xs, [r.published if r.published is not None else math.nan for r in rows],
                       marker="_", s=400, color="#dd8452", zorder=3, label="published")
            ax.legend(fontsize=7)
        ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
