"""Gather the runs of one or more sweeps into a study report: tables, a plot, a CSV.

A sweep dir holds one job dir per run (``<sweep>/<job number>/``), each with the records the
job wrote itself (:mod:`diffusion_seg.jobs`): ``job.yaml`` (its overrides and its
attempts), ``config.yaml`` (the composed config it ran with) and its final metrics
(``finished.yaml``, written when training ends). The report reads those, never Hydra's
``.hydra/``, which every later launch into the sweep dir rewrites; only job dirs from before
these records fall back to ``.hydra/`` (and the report says so), and to the CSV log
(``csv/metrics.csv``) for their metrics. Runs are grouped by *setting*: their overrides
without ``seed``. Each setting gets n, mean and standard deviation over its seeds. A study
config (``conf/study/<name>.yaml``) names its knob (the x axis of the plot) and the published
numbers of the paper table it reproduces (a column beside ours). The evidence beside the
means: each setting's learning curve (val mIoU by optimizer step from the CSV logs, mean and
min–max over seeds, ``curves.png``) and whether it had stopped climbing (:func:`converged`),
the difference to a baseline setting with a 95 % confidence interval (:func:`deltas`: Welch,
or paired t over matching seeds) and the pathfinder context metrics. Paths in the report are
relative to the (first) sweep dir: it names no machine's directories.

Offline and plain: no W&B, no Lightning, no torch. The command is
``python -m diffusion_seg.report`` (:mod:`diffusion_seg.cli.report`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from diffusion_seg.errors import UserError
# The records a training job writes into its dir.
from diffusion_seg.jobs import CONFIG_FILE, FINISHED_FILE, JOB_FILE, UNLABELLED_KEYS, computed_config

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = ("mIoU", "mAcc", "aAcc")
# The Lightning CSV log of a job (conf/logger/csv.yaml): its val/mIoU rows are the learning curve.
CSV_LOG = Path("csv") / "metrics.csv"
CURVE_KEY = "val/mIoU"
# A pathfinder run's second curve: how much of the far misleading path pixels it colours
# right (diffusion_seg.metrics.ContextMetrics), by step: the context it learns, not edges.
FAR_CURVE_KEY = "val/color_acc/far_misleading"
# A setting has converged when its mean val mIoU gained less than this (mIoU points) over the
# last CONVERGED_TAIL of its training steps.
CONVERGED_GAIN = 0.5
CONVERGED_TAIL = 0.2
# The pathfinder context metrics (diffusion_seg.metrics.ContextMetrics): colour accuracy of
# the path pixels called path, overall, by distance from the cue, on misleading pixels and
# on those whose cue lies beyond a receptive field (dataset.reach_px).
# The long-path bins (d6-12 ...) are there only for paths longer than 12 cells.
CONTEXT_KEYS = ("color_acc", "color_acc/d0-2", "color_acc/d2-4", "color_acc/d4-6", "color_acc/d6+",
                "color_acc/d6-12", "color_acc/d12-18", "color_acc/d18+",
                "color_acc/misleading", "color_acc/far_misleading", "color_acc/beyond_reach")
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
    minutes: float | None = None  # time it ran: its attempts summed (see _wall_minutes)
    legacy: bool = False  # no job.yaml / config.yaml: overrides or config read from .hydra/
    curve: list[tuple[float, float]] = field(default_factory=list)  # (step, val mIoU in %)
    far_curve: list[tuple[float, float]] = field(default_factory=list)  # (step, FAR_CURVE_KEY in %)
    # The command that wrote a job that did not train (``command`` in its job.yaml: the
    # pathfinder oracle's rows), shown as it ran instead of as a training command.
    command: str | None = None
    # The job whose records this one copied instead of training (``reuse_from``, diffusion_seg.jobs).
    reused_from: Path | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # its config.yaml
    code: str | None = None  # ``code`` in its job.yaml (diffusion_seg.jobs.code_version)

    @property
    def setting(self) -> str:
        """The overrides that tell this setting from the others (not the seed, not those
        every run shares, not those that change nothing computed: ``UNLABELLED_KEYS``), sorted."""
        kept = [o for o in self.overrides if not _unlabelled(o) and o not in self.common]
        return " ".join(sorted(kept)) or "(defaults)"

    def value(self, key: str) -> str | None:
        """The value this run's overrides give ``key`` (``None`` if not overridden)."""
        for override in self.overrides:
            name, _, value = override.partition("=")
            if name.lstrip("+~") == key:
                return value
        return None


def _unlabelled(override: str) -> bool:
    """An override that names no setting: a repeat's (seed, study) or one that changes nothing
    a job computes (the progress bar, the loggers: :data:`diffusion_seg.jobs.UNLABELLED_KEYS`)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key in REPEAT_KEYS or any(key == k or key.startswith(k + ".") for k in UNLABELLED_KEYS)


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


def read_curves(path: Path, keys: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    """For each of ``keys`` (a fraction), ``(optimizer step, value in %)`` of every row of a
    Lightning CSV log that logged it, sorted by step, from one pass over the file; the last
    row of a step wins (a resumed run logs a step again). ``[]`` without the file or the
    column."""
    points: dict[str, dict[float, float]] = {key: {} for key in keys}
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for key in keys:
                    try:
                        points[key][float(row.get("step"))] = 100.0 * float(row.get(key))
                    except (TypeError, ValueError):
                        continue
    return {key: sorted(values.items()) for key, values in points.items()}


def read_run(job: Path, evaluation: str | None = None) -> Run:
    """One job dir: its overrides, its study and its final metrics (if it finished); with
    ``evaluation``, the metrics of a later evaluation of the run instead: the
    ``metrics.yaml`` that ``python -m diffusion_seg.eval ... hydra.run.dir=<job>/<evaluation>``
    wrote (e.g. multi-scale, CRF, another split or dataset option)."""
    record = _job_file(job)
    overrides, config, legacy = job_record(job, record)
    run = Run(job, overrides, dict(config.get("study") or {}), legacy=legacy, command=record.get("command"),
              config=config, code=record.get("code"))
    curves = read_curves(job / CSV_LOG, (CURVE_KEY, FAR_CURVE_KEY))
    run.curve, run.far_curve = curves[CURVE_KEY], curves[FAR_CURVE_KEY]
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
        run.minutes = _wall_minutes(record, marker)
        if marker.get("reused_from"):  # the time is the original's, which trained it
            run.reused_from = Path(marker["reused_from"])
            source = run.reused_from / FINISHED_FILE
            run.minutes = _wall_minutes(_job_file(run.reused_from), _read_yaml(source) or {}) if source.is_file() else None
    elif (job / "csv" / "metrics.csv").is_file() and (job / "checkpoints" / "last.ckpt").is_file():
        # Runs from before completion markers: the CSV log's test metrics mean it finished.
        run.metrics = _csv_metrics(job / "csv" / "metrics.csv")
        if not any(k.startswith("test/") for k in run.metrics):
            run.status, run.metrics = "unfinished", {}
    else:
        run.status = "unfinished"
    return run


def _job_file(job: Path) -> dict[str, Any]:
    """The job's ``job.yaml`` (overrides, attempts, ``command``), ``{}`` without one."""
    record = _read_yaml(job / JOB_FILE) if (job / JOB_FILE).is_file() else None
    return record if isinstance(record, dict) else {}


def job_record(job: Path, record: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any], bool]:
    """The job's overrides and composed config as the job recorded them when it ran
    (``job.yaml``, else ``finished.yaml``; ``config.yaml``), and whether either had to come from
    Hydra's ``.hydra/`` instead (job dirs written before those records existed). ``record``:
    the job's ``job.yaml`` when the caller has read it already."""
    overrides = (_job_file(job) if record is None else record).get("overrides")
    if overrides is None and (job / FINISHED_FILE).is_file():
        overrides = (_read_yaml(job / FINISHED_FILE) or {}).get("overrides")
    legacy = False
    if overrides is None:
        overrides, legacy = _read_yaml(job / ".hydra" / "overrides.yaml") or [], True
    if (job / CONFIG_FILE).is_file():
        config = _read_yaml(job / CONFIG_FILE) or {}
    else:
        config, legacy = _read_yaml(job / ".hydra" / "config.yaml") or {}, True
    return [str(o) for o in overrides], config, legacy


def _wall_minutes(record: dict[str, Any], marker: dict[str, Any]) -> float | None:
    """Minutes the run ran: the sum over the attempts that trained it (``job.yaml``: from its
    last fresh start on, every start or resume, each from its start to its recorded end), so
    the time between a stop and the resume is not counted. An attempt without an end (a
    process killed outright, or records older than the end times) ends at the completion
    marker if it is the last one; otherwise the time is unknown (``None``). ``record``: the
    job's ``job.yaml``."""
    attempts = record.get("attempts")
    trained = [a for a in attempts or [] if a.get("action") in ("start", "resume") and "time" in a]
    starts = [i for i, a in enumerate(trained) if a["action"] == "start"]
    if not starts:
        return None
    trained = trained[starts[-1]:]
    seconds = 0.0
    for i, attempt in enumerate(trained):
        end = attempt.get("end")
        if end is None and i == len(trained) - 1:
            end = marker.get("time")
        if end is None:
            return None
        seconds += float(end) - float(attempt["time"])
    return seconds / 60.0


def gather(sweep_dirs: Sequence[Path], evaluation: str | None = None) -> list[Run]:
    """Every job of the sweeps (metrics from :func:`read_run`); fails on a dir with no job
    or on runs of different studies."""
    runs: list[Run] = []
    for sweep in sweep_dirs:
        if not sweep.is_dir():
            raise ReportError(f"{sweep} is not a directory; give the sweep dir of a multirun")
        jobs = sorted(
            (p for p in sweep.iterdir() if (p / JOB_FILE).is_file() or (p / ".hydra" / "overrides.yaml").is_file()),
            key=lambda p: (len(p.name), p.name),
        )
        if not jobs:
            raise ReportError(
                f"{sweep} holds no runs (no <job>/{JOB_FILE} or <job>/.hydra/overrides.yaml); give "
                "the sweep dir of a multirun, e.g. logs/train/multiruns/<date>"
            )
        runs += [read_run(job, evaluation) for job in jobs]
    names = {run.study.get("name") for run in runs}
    if len(names) > 1:
        raise ReportError(
            f"the runs belong to different studies ({', '.join(sorted(map(str, names)))}); "
            "report one study at a time"
        )
    # What every trained run shares (a non-learned row such as the oracle's ran without the
    # training overrides, so it does not keep them in every trained setting's name).
    trained = [r for r in runs if r.command is None]
    shared = trained if len(trained) > 1 else runs
    common = frozenset.intersection(*(frozenset(r.overrides) for r in shared)) if len(shared) > 1 else frozenset()
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

    @property
    def curve(self) -> list[tuple[float, float, float, float]]:
        """The setting's learning curve: :func:`mean_curve` of its runs' val mIoU."""
        return mean_curve([r.curve for r in self.runs])

    @property
    def far_curve(self) -> list[tuple[float, float, float, float]]:
        """:func:`mean_curve` of its runs' far-misleading colour accuracy (pathfinder runs)."""
        return mean_curve([r.far_curve for r in self.runs])

    def values(self, key: str) -> dict[Path, float]:
        """``key`` (a logged fraction) of each run that has it, in %, by job dir."""
        return {r.path: 100.0 * r.metrics[key] for r in self.runs
                if key in r.metrics and not math.isnan(r.metrics[key])}


def mean_curve(curves: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, float, float, float]]:
    """``(step, mean, min, max)`` over the curves at the steps every (non-empty) curve logged;
    at every step any of them logged when they share none."""
    curves = [dict(c) for c in curves if c]
    if not curves:
        return []
    steps = set.intersection(*(set(c) for c in curves)) or set.union(*(set(c) for c in curves))
    points = []
    for step in sorted(steps):
        values = [c[step] for c in curves if step in c]
        points.append((step, statistics.fmean(values), min(values), max(values)))
    return points


def tail_gain(curve: Sequence[tuple[float, ...]], tail: float = CONVERGED_TAIL) -> float | None:
    """What the curve (``(step, value, ...)``, sorted) gained over the last ``tail`` of its
    steps: its last value minus its value at ``(1 - tail) ×`` the last step (linearly
    interpolated; its first value when it starts later). ``None`` below two points."""
    if len(curve) < 2:
        return None
    end = curve[-1][0]
    start = (1.0 - tail) * end
    before = curve[0][1]
    for (s0, v0, *_), (s1, v1, *_) in zip(curve, curve[1:]):
        if s0 <= start <= s1:
            before = v0 + (v1 - v0) * (start - s0) / (s1 - s0) if s1 > s0 else v1
            break
    return curve[-1][1] - before


def converged(curve: Sequence[tuple[float, ...]]) -> str:
    """The ``converged`` cell: ``yes (+0.2)`` when :func:`tail_gain` is below
    :data:`CONVERGED_GAIN` mIoU points, ``no: still climbing (+3.1)`` otherwise, ``–`` with no curve."""
    gain = tail_gain(curve)
    if gain is None:
        return "–"
    return f"yes ({gain:+.1f})" if gain < CONVERGED_GAIN else f"no: still climbing ({gain:+.1f})"


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """``mean(a) - mean(b)`` and its Welch confidence interval (t with the Welch–Satterthwaite
    degrees of freedom); no interval (``None``) when either side has fewer than two values."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, None, None
    from scipy import stats

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return diff, diff - half, diff + half


def paired_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """The mean of paired differences and its t interval (n - 1 degrees of freedom); no
    interval below two pairs."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None, None
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def _fmt_delta(diff: float, low: float | None, high: float | None) -> str:
    return f"{diff:+.2f} [n<2]" if low is None else f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"


@dataclass
class Baseline:
    """What each row is compared with (``--baseline``): one setting for every row, or, when
    the name is overrides that several settings have, each row's *twin* — the setting that has
    them and agrees with the row on every other override (``--baseline model.neighbors=8``:
    each 24NB row against the 8NB row of its depth)."""

    name: str  # as the report's headers show it
    of: dict[int, Row]  # id(row) → its baseline (rows without a twin are absent)
    grouped: bool = False
    against: str = ""  # what a row is compared with, in words (default: from ``grouped``)

    def rows(self) -> list[Row]:
        """The baseline rows, each once."""
        return list({id(r): r for r in self.of.values()}.values())


def _others(row: Row, keys: set[str]) -> frozenset[str]:
    return frozenset(o for o in row.setting.split() if o.split("=", 1)[0] not in keys)


def find_baseline(rows: Sequence[Row], name: str) -> Baseline:
    """The :class:`Baseline` of ``--baseline name``: the row whose setting is ``name``, or the
    one setting that contains it; else, when ``name`` is overrides that several settings have
    and those differ in nothing but its keys, each row's twin among them. A
    :class:`ReportError` naming the settings otherwise."""
    exact = [r for r in rows if r.setting == name]
    matches = exact or [r for r in rows if name in r.setting]
    if len(matches) == 1:
        return Baseline(matches[0].setting, {id(r): matches[0] for r in rows})
    if not matches:
        raise ReportError(f"--baseline {name!r}: no setting matches; the settings: "
                          f"{'; '.join(r.setting for r in rows)}")
    wanted = set(name.split())
    keys = {o.split("=", 1)[0] for o in wanted}
    group = [r for r in rows if wanted <= set(r.setting.split())]
    twins = {_others(r, keys): r for r in group}
    if len(group) > 1 and len(twins) == len(group) and all("=" in o for o in wanted):
        of = {id(r): twins[_others(r, keys)] for r in rows if _others(r, keys) in twins}
        if len(of) > len(group):  # some row other than the baselines has its twin
            return Baseline(name, of, grouped=True)
    raise ReportError(f"--baseline {name!r}: matches {len(matches)} settings "
                      f"({'; '.join(r.setting for r in matches)}) that are not one per group of "
                      "the other overrides; give one of them whole, or whole overrides as the "
                      "settings spell them (key=value) to set each row against its twin")


def _seeded(row: Row, key: str) -> dict[str, float] | None:
    """``key`` (in %) by seed, ``None`` when a run has no seed or two share one."""
    values: dict[str, float] = {}
    for run in row.runs:
        seed = run.value("seed")
        if seed is None or seed in values or key not in run.metrics:
            return None
        values[seed] = 100.0 * run.metrics[key]
    return values


def deltas(rows: Sequence[Row], baseline: Baseline, split: str, paired: bool = False,
           metric: str = "mIoU") -> tuple[dict[int, str], list[str]]:
    """The ``Δ <metric> vs <baseline>`` cell of each row (by ``id``; ``–`` without a baseline
    of its own) and the sentences saying how the intervals were computed (Welch; with
    ``paired``, the paired t interval where the seeds of a row are its baseline's). ``metric``:
    a logged key below the split (``mIoU``, ``color_acc/far_misleading``)."""
    key = f"{split}/{metric}"
    cells: dict[int, str] = {}
    paired_rows, welch_rows = [], []
    for row in rows:
        base_row = baseline.of.get(id(row))
        if base_row is None or not base_row.values(key):
            cells[id(row)] = "–"
            continue
        if row is base_row:
            cells[id(row)] = "baseline"
            continue
        base, base_seeds = list(base_row.values(key).values()), _seeded(base_row, key)
        seeds = _seeded(row, key) if paired else None
        if seeds is not None and base_seeds is not None and set(seeds) == set(base_seeds):
            cells[id(row)] = _fmt_delta(*paired_interval([seeds[s] - base_seeds[s] for s in sorted(seeds)]))
            paired_rows.append(row.setting)
        else:
            cells[id(row)] = _fmt_delta(*welch_interval(list(row.values(key).values()), base))
            welch_rows.append(row.setting)
    name = f"`{baseline.name}`"
    against = baseline.against or (f"the row with {name} and the row's other overrides (`–`: no such row)"
                                    if baseline.grouped else "the baseline")
    notes = [f"Δ {metric} vs {name}: the mean {split} {metric} of the row minus that of {against}, "
             "in points, with its 95 % confidence interval; `[n<2]`: fewer than two runs on a "
             "side, no interval."]
    welch = ("Welch's interval (unequal variances; t quantile with the Welch–Satterthwaite "
             "degrees of freedom) of the difference of the means over seeds")
    if not paired:
        notes.append(f"Interval: {welch}.")
    else:
        if paired_rows:
            notes.append("Interval (--paired): the paired t interval of the per-seed differences "
                         "(n − 1 degrees of freedom) for the rows whose seeds are their baseline's: "
                         + ", ".join(f"`{s}`" for s in paired_rows) + ".")
        if welch_rows:
            notes.append(f"Seeds that do not match the baseline's, so {welch} instead: "
                         + ", ".join(f"`{s}`" for s in welch_rows) + ".")
    return cells, notes


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
        for key in CONTEXT_KEYS:
            values = [100.0 * r.metrics[f"{split}/{key}"] for r in members
                      if not math.isnan(r.metrics.get(f"{split}/{key}", math.nan))]
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


def relative(path: Path, base: Path) -> str:
    """``path`` as the report names it: relative to ``base`` (the first sweep dir)."""
    return os.path.relpath(path.resolve(), base.resolve())


def _override_order(override: str) -> tuple[int, str]:
    key = override.split("=", 1)[0].lstrip("+~")
    return ({"study": 0, "experiment": 1, "seed": 3}.get(key, 2), override)


def launch_command(runs: Sequence[Run]) -> str:
    """The training command that ran these jobs, from the overrides each job recorded: one
    ``-m`` line when the jobs are every combination of their values (a grid sweep), else one
    line per setting with its seeds (an Optuna search, merged sweeps). Jobs that recorded
    their own command (the oracle's rows) follow, one line per distinct command."""
    own = list(dict.fromkeys(r.command for r in runs if r.command))
    trained = [r for r in runs if not r.command]
    return "\n".join([_training_command(trained), *own] if trained else own)


def _training_command(runs: Sequence[Run]) -> str:
    jobs = [sorted(set(r.overrides), key=_override_order) for r in runs]
    values: dict[str, list[str]] = {}
    for job in jobs:
        for override in job:
            name, sep, value = override.partition("=")
            choices = values.setdefault(name if sep else override, [])
            if sep and value not in choices:
                choices.append(value)
    combinations = math.prod(max(1, len(v)) for v in values.values())
    prefix = "python -m diffusion_seg.train -m"
    if all(len(job) == len(values) for job in jobs) and len({tuple(j) for j in jobs}) == combinations:
        return " ".join([prefix, *(f"{k}={','.join(v)}" if v else k for k, v in values.items())])
    settings: dict[tuple[str, ...], list[str]] = {}
    for job in jobs:
        seeds = [o.partition("=")[2] for o in job if o.startswith("seed=")]
        setting = tuple(o for o in job if not o.startswith("seed="))
        settings.setdefault(setting, []).extend(seeds)
    return "\n".join(" ".join([prefix, *setting] + ([f"seed={','.join(seeds)}"] if seeds else []))
                     for setting, seeds in settings.items())


def markdown(rows: Sequence[Row], runs: Sequence[Run], split: str, sweep_dirs: Sequence[Path],
             class_names: Sequence[str], evaluation: str | None = None, baseline: Baseline | None = None,
             paired: bool = False, curves: str | None = None, sections: Sequence[str] = ()) -> str:
    """``report.md``: the command that ran, the settings table (with the convergence flag from
    the learning curves and, with ``baseline``, the difference to it with its interval), the
    learning curves (``curves``: the PNG's name), the per-class IoU table, the pathfinder
    context table, the lines of further ``sections`` (:func:`against_section`), unfinished
    runs. Paths are relative to the first sweep dir."""
    study = runs[0].study if runs else {}
    base = sweep_dirs[0]
    title = study.get("name") or "sweep"
    lines = [f"# Study: {title}", ""]
    if study.get("description"):
        lines += [str(study["description"]).strip(), ""]
    source = f"the evaluation `<job>/{evaluation}/metrics.yaml` of every run" if evaluation else "the runs"
    named = [base.resolve().name, *(relative(d, base) for d in sweep_dirs[1:])]
    lines += [f"Runs from {', '.join(f'`{d}`' for d in named)}; metrics of the `{split}` "
              f"split from {source} in %, mean ± standard deviation over the seeds (n runs).", ""]
    if runs:
        lines += ["What ran, from the overrides each job recorded (`<job>/job.yaml`; launcher "
                  "options are not part of it):", "", "```", launch_command(runs), "```", "",
                  f"Code the runs recorded (`code` in `<job>/job.yaml`): {code_versions(runs)}.", ""]
    legacy = [r for r in runs if r.legacy]
    if legacy:
        lines += [f"{len(legacy)} of the {len(runs)} runs have no `job.yaml` / `config.yaml` of their "
                  "own (job dirs from before those records): their overrides or config come from "
                  "Hydra's `.hydra/`, which a later launch into the same dir rewrites.", ""]
    reused = [r for r in runs if r.reused_from is not None]
    if reused:
        lines += [f"{len(reused)} of the {len(runs)} runs were not trained again: another study's job "
                  "had run the same config with the same code (`reuse_from`), and its records were "
                  "copied (wall time: the original's):", ""]
        lines += [f"- `{relative(r.path, base)}` ← `{relative(r.reused_from, base)}`" for r in reused] + [""]
    common = sorted(o for o in (runs[0].common if runs else ()) if not o.startswith("study="))
    if common:
        every = "Every trained run" if any(r.command for r in runs) else "Every run"
        lines += [f"{every}: " + " ".join(f"`{o}`" for o in common), ""]
    has_published = any(r.published is not None for r in rows)
    extra = list(study.get("extra_metrics") or [])
    timed = any("minutes" in r.stats for r in rows)
    header = ["setting", "n", *METRICS] + (["published mIoU"] if has_published else []) + extra
    header += ["wall time, min"] if timed else []
    curved = any(row.curve for row in rows)
    header += ["converged"] if curved else []
    delta_cells, delta_notes = deltas(rows, baseline, split, paired) if baseline is not None else ({}, [])
    header += [f"Δ mIoU vs `{baseline.name}`"] if baseline is not None else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"`{row.setting}`", str(len(row.runs)), *(_fmt(row.stats.get(m)) for m in METRICS)]
        if has_published:
            cells.append("–" if row.published is None else f"{row.published:.2f}")
        cells += [_fmt_raw(row.stats.get(m)) for m in extra]
        cells += [_fmt(row.stats.get("minutes"))] if timed else []
        cells += [converged(row.curve)] if curved else []
        cells += [delta_cells[id(row)]] if baseline is not None else []
        lines.append("| " + " | ".join(cells) + " |")
    published_extra = study.get("published_extra") or {}
    if published_extra:
        cells = ["published", "", *([""] * len(METRICS))] + ([""] if has_published else [])
        cells += [str(published_extra.get(m, "–")) for m in extra] + ([""] if timed else [])
        cells += ([""] if curved else []) + ([""] if baseline is not None else [])
        lines.append("| " + " | ".join(cells) + " |")
    if timed:
        lines += ["", "Wall time: the time each run ran (training, validation, test, files), summed over "
                  "its attempts — a run stopped and resumed later counts each attempt from its start "
                  "to its end, not the pause between — as it ran, i.e. beside the other jobs of a "
                  "parallel launcher; mean over the runs with a known time (unknown when an attempt "
                  "left no end: a process killed outright)."]
    if curved:
        lines += ["", f"Converged: `yes` when the mean over seeds of val mIoU gained less than "
                  f"{CONVERGED_GAIN:g} mIoU points over the last {100 * CONVERGED_TAIL:g} % of the "
                  "training steps (from the CSV log, `<job>/csv/metrics.csv`; gain in brackets), "
                  "`no: still climbing` otherwise, `–` without a logged curve. Under a schedule "
                  "that anneals the learning rate to zero (poly) a flat tail can mean the schedule "
                  "ended rather than that training converged: a longer schedule is the check."]
    else:
        lines += ["", f"No learning curves: no job logged `{CURVE_KEY}` in `<job>/{CSV_LOG.as_posix()}`."]
    if delta_notes:
        lines += ["", *delta_notes]
    if curved and curves:
        lines += ["", "## Learning curves", "",
                  f"![val mIoU against optimizer step]({curves})", "",
                  f"`{curves}`: val mIoU against the optimizer step, per setting: the mean over seeds "
                  "(line) and the range from the lowest to the highest seed (band)"
                  + ("; on the right, the same for the colour accuracy on the far misleading path "
                     "pixels (chance: 1 in 3)." if any(row.far_curve for row in rows) else ".")]
    present = [c for c in class_names if any(f"IoU/{c}" in r.stats for r in rows)]
    if present:
        lines += ["", f"## Per-class IoU ({split})", "",
                  "| setting | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
        for row in rows:
            lines.append(f"| `{row.setting}` | " + " | ".join(_fmt(row.stats.get(f'IoU/{c}')) for c in present) + " |")
    context = [k for k in CONTEXT_KEYS if any(k in r.stats for r in rows)]
    if context:
        names = [k.partition("/")[2] or "all" for k in context]
        lines += ["", "## Colour accuracy of path pixels called path (context)", "",
                  f"`{split}/color_acc…` (`diffusion_seg.metrics.ContextMetrics`): the right colour among the labelled "
                  "path pixels a run calls path, all of them, by distance from the cue in cells, and on "
                  "the misleading ones (nearest cue of another colour; far: ≥ 4 cells from the cue), "
                  "in %, mean ± standard deviation over seeds.", "",
                  "| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        # The question a pathfinder study asks (issue 20): does a head beat the baseline far
        # from the cue, on the pixels whose nearest cue misleads? Its interval, beside mIoU's.
        far = "color_acc/far_misleading"
        far_cells: dict[int, str] = {}
        if baseline is not None and any(far in r.stats for r in baseline.rows()):
            far_cells, far_notes = deltas([r for r in rows if far in r.stats], baseline, split, paired, far)
            lines[-2] += f" Δ {far.partition('/')[2]} vs `{baseline.name}` |"
            lines[-1] += "---|"
        for row in rows:
            cells = [_fmt(row.stats.get(k)) for k in context]
            cells += [far_cells.get(id(row), "–")] if far_cells else []
            lines.append(f"| `{row.setting}` | " + " | ".join(cells) + " |")
        if far_cells:
            lines += ["", *far_notes]
    lines += sections
    unfinished = [r for r in runs if r.status != "finished"]
    lines += ["", f"## Runs: {len(runs) - len(unfinished)} finished, {len(unfinished)} not", ""]
    lines += [f"- {r.status}: `{relative(r.path, base)}` ({' '.join(r.overrides) or 'defaults'})" for r in unfinished]
    return "\n".join(lines) + "\n"


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``dotted key → value`` (lists are values)."""
    if not isinstance(node, dict):
        return {prefix.removesuffix("."): node}
    leaves: dict[str, Any] = {}
    for key, value in node.items():
        leaves.update(_leaves(value, f"{prefix}{key}."))
    return leaves


def config_changes(here: Run, there: Run) -> list[str]:
    """``key: there → here`` for every entry that differs between what the two runs' recorded
    configs compute (:func:`diffusion_seg.jobs.computed_config`: not the study, paths, loggers,
    progress bar), the seed aside; sorted by key."""
    a, b = (_leaves(json.loads(computed_config(r.config))) for r in (here, there))

    def shown(config: dict[str, Any], key: str) -> str:  # a key one config lacks is not null
        return json.dumps(config[key]) if key in config else "(absent)"

    return [f"{key}: {shown(b, key)} → {shown(a, key)}" for key in sorted(a.keys() | b.keys())
            if key != "seed" and (key not in a or key not in b or a[key] != b[key])]


def code_versions(runs: Sequence[Run]) -> str:
    """The code the runs recorded (``code`` in ``job.yaml``: a hash of the package's sources
    and the torch, lightning and timm versions), each with its number of runs."""
    counts = Counter(run.code for run in runs)
    return ", ".join(f"`{code}` ({n} run{'s' * (n > 1)})" if code else
                     f"not recorded ({n} run{'s' * (n > 1)} from before jobs recorded it)"
                     for code, n in counts.items())


def _same_seed(run: Run, other: Row) -> Run:
    return next((r for r in other.runs if r.value("seed") == run.value("seed")), other.runs[0])


def against_section(rows: Sequence[Row], other_runs: Sequence[Run], split: str, paired: bool,
                    sweep_dirs: Sequence[Path], other_dirs: Sequence[Path]) -> list[str]:
    """``report --against``: each setting against the setting of the same name in another
    study's sweeps (the same heads at another budget, say). Per row: what differs between the
    configs the runs recorded (:func:`config_changes`, so the comparison is named by what ran,
    not by a label), the difference of mIoU and, for pathfinder runs, of far-misleading colour
    accuracy, each with its 95 % interval (:func:`deltas`: paired t over shared seeds with
    ``paired``, else Welch), and both convergence flags. The lines of the report's section."""
    other_rows = aggregate(other_runs, split)
    there = {row.setting: row for row in other_rows}
    study = other_runs[0].study.get("name") or "the other sweeps"
    if rows and study == rows[0].runs[0].study.get("name"):  # another sweep of this study: name it
        study += " " + ", ".join(d.name for d in other_dirs)
    if not any(row.setting in there for row in rows):
        raise ReportError(f"--against: no setting of {', '.join(map(str, other_dirs))} is one of this "
                          f"report's ({'; '.join(r.setting for r in rows)}); its settings: "
                          f"{'; '.join(there) or 'none finished'}")
    matched = Baseline(study, {id(r): there[r.setting] for r in rows if r.setting in there},
                       against=f"the row of the same setting in `{study}`")
    cells, notes = deltas(rows, matched, split, paired)
    far = "color_acc/far_misleading"
    far_rows = [r for r in rows if far in r.stats]  # a row whose match lacks it gets `–`
    far_cells, far_notes = deltas(far_rows, matched, split, paired, far) if far_rows else ({}, [])
    header = ["setting", f"what differs (`{study}` → here)", f"Δ mIoU vs `{study}`"]
    header += [f"Δ far_misleading vs `{study}`"] if far_cells else []
    header += ["converged here", f"converged in `{study}`"]
    named = ", ".join(f"`{relative(d, sweep_dirs[0])}`" for d in other_dirs)
    lines = ["", f"## Against `{study}`", "",
             f"Each setting against the same setting in the runs of {named} ({split} split): what "
             "differs between the configs the runs recorded (`<job>/config.yaml`, the seed, study, "
             "paths and loggers aside), and the differences with their intervals.", "",
             f"Code the runs recorded: here {code_versions([r for row in rows for r in row.runs])}; "
             f"in `{study}` {code_versions([r for row in other_rows for r in row.runs])}. A change "
             "of code between the two can change results as much as a change of config.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        other = matched.of.get(id(row))
        changes = config_changes(row.runs[0], _same_seed(row.runs[0], other)) if other else []
        cells_row = [f"`{row.setting}`",
                     "<br>".join(f"`{c}`" for c in changes) or ("nothing" if other else "–"),
                     cells[id(row)]]
        cells_row += [far_cells.get(id(row), "–")] if far_cells else []
        cells_row += [converged(row.curve), converged(other.curve) if other else "–"]
        lines.append("| " + " | ".join(cells_row) + " |")
    lines += ["", *notes, *(n for n in far_notes if n not in notes)]
    return lines


def write_csv(path: Path, runs: Sequence[Run], base: Path) -> None:
    """Every run, one row: job dir (relative to ``base``, the first sweep dir), status,
    setting, seed, minutes, the job it reused (if any), every metric it has (as logged:
    fractions, not %)."""
    keys = sorted({k for r in runs for k in r.metrics})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", "status", "setting", "seed", "minutes", "reused_from", *keys])
        for r in runs:
            minutes = "" if r.minutes is None else f"{r.minutes:.2f}"
            reused = "" if r.reused_from is None else relative(r.reused_from, base)
            writer.writerow([relative(r.path, base), r.status, r.setting, r.value("seed") or "", minutes,
                             reused, *(r.metrics.get(k, "") for k in keys)])


def _numeric(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def plot(path: Path, rows: Sequence[Row], knob: str | None, split: str, metric: str = "mIoU",
         published: bool = True, title: str = "") -> None:
    """``report.png``: :func:`report_figure` saved to ``path``."""
    report_figure(rows, knob, split, metric, published, title).savefig(path)


def report_figure(rows: Sequence[Row], knob: str | None, split: str, metric: str = "mIoU",
                  published: bool = True, title: str = "") -> Figure:
    """The metric against the knob (one line per setting without the knob, error bars over
    seeds; ticks at the knob's values when they are whole numbers), or one bar per setting when
    the study has no numeric knob. Title and axis name the split and the metric."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
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
        values = sorted(set(knob_values.values()))
        if all(float(v).is_integer() for v in values):  # layers, neighbours: no 1.5 layers
            ax.set_xticks(values, [str(int(v)) for v in values])
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
    ax.set_ylabel(f"{split} {metric} (%)")
    ax.set_title(f"{title + ': ' if title else ''}{split} {metric}, mean ± std over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def curves_figure(rows: Sequence[Row], title: str = "") -> Figure | None:
    """val mIoU against the optimizer step, one line per setting (mean over its seeds) with a
    band from the lowest to the highest seed; beside it, when runs logged it (the pathfinder),
    the val colour accuracy on the far misleading pixels the same way, with chance (1 in 3).
    ``None`` when no run logged a curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("val mIoU", [(row.setting, row.curve) for row in rows if row.curve])]
    far = [(row.setting, row.far_curve) for row in rows if row.far_curve]
    if far:
        panels.append(("val colour accuracy, far misleading", far))
    if not panels[0][1]:
        return None
    fig = Figure(figsize=(7 * len(panels), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    for number, (name, curves) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), number)
        for setting, curve in curves:
            steps = [p[0] for p in curve]
            (line,) = ax.plot(steps, [p[1] for p in curve], marker="." if len(curve) < 30 else None,
                              label=setting)
            ax.fill_between(steps, [p[2] for p in curve], [p[3] for p in curve], color=line.get_color(),
                            alpha=0.2, linewidth=0)
        if number == 2:
            ax.axhline(100 / 3, color="grey", linestyle=":", label="chance")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(f"{title + ': ' if title else ''}{name}, mean over seeds (band: min–max)", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(path: Path, rows: Sequence[Row], title: str = "") -> bool:
    """``curves.png``: :func:`curves_figure` saved to ``path``; ``False`` (no file) without curves."""
    fig = curves_figure(rows, title)
    if fig is None:
        return False
    fig.savefig(path)
    return True
