"""Turn sweeps into a report: ``python -m diffusion_seg.report <sweep dir> [<sweep dir> ...]``.

Writes into the (first) sweep dir, or ``--out``:

* ``report.md``: the command that ran the jobs (from their own records), one row per setting
  (the overrides without ``seed``), mIoU / mAcc / aAcc as mean ± std over seeds with n, the
  published number beside ours for a paper-table study, the time the runs ran, per-class IoU
  in a second table, and the runs that did not finish;
  whether each setting's learning curve has converged (``converged``), with ``--baseline``
  the difference of each setting's mIoU to the baseline's with a 95 % confidence interval
  (Welch; ``--paired``: paired t over matching seeds; ``--baseline key=value`` that several
  settings have: each against its twin with ``key=value``, e.g. pretrained against scratch
  per head), and for pathfinder runs the colour
  accuracy of the path pixels called path (``color_acc``, by distance from the cue); with
  ``--against <sweep dir> ...`` (another study's sweeps) each setting against the same setting
  there: what differs in the configs the runs recorded, and the differences with intervals;
* ``report.png``: the metric of the split against the study's knob, one line per setting,
  error bars over seeds (a bar chart when there is no numeric knob);
* ``curves.png``: val mIoU against the optimizer step per setting (mean over seeds, min–max
  band), from each job's CSV log (when any job has one);
* ``runs.csv``: every run and every metric it logged.

Paths in these files are relative to the first sweep dir. Offline: reads what each job
recorded itself (``job.yaml``, ``config.yaml``, ``finished.yaml``; :mod:`diffusion_seg.studies`),
or with ``--eval NAME`` what ``python -m diffusion_seg.eval`` wrote for every run into
``<job>/NAME/`` (a re-evaluation: multi-scale, CRF, another dataset option). ``--wandb`` also
logs the table to the sweep's W&B group (offline works).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from diffusion_seg.cli.errors import ArgumentParser, user_errors
from diffusion_seg.studies import (
    ReportError,
    against_section,
    aggregate,
    find_baseline,
    gather,
    markdown,
    pick_split,
    plot,
    plot_curves,
    write_csv,
)


def log_to_wandb(rows, split: str, sweep: Path, project: str) -> None:
    """The report's table as a W&B Table, in a run of the sweep's group (job type report)."""
    import wandb

    run = wandb.init(project=project, group=sweep.name, job_type="report",
                     name=f"report-{sweep.name}", dir=str(sweep))
    columns = ["setting", "n", "mIoU", "mIoU std", "mAcc", "aAcc", "published mIoU"]
    table = wandb.Table(columns=columns)
    for row in rows:
        miou = row.stats.get("mIoU", (None, None, 0))
        table.add_data(row.setting, len(row.runs), miou[0], miou[1],
                       row.stats.get("mAcc", (None,))[0], row.stats.get("aAcc", (None,))[0],
                       row.published)
    run.log({f"report/{split}": table})
    run.finish()


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m diffusion_seg.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="multirun sweep dirs")
    parser.add_argument("--split", choices=("val", "test"), default=None,
                        help="metrics of this split (default: test if every run has it, else val)")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: the first sweep dir)")
    parser.add_argument("--eval", default=None, metavar="NAME",
                        help="metrics of a later evaluation of every run instead of its own: "
                             "<job>/NAME/metrics.yaml, written by python -m diffusion_seg.eval "
                             "... hydra.run.dir=<job>/NAME")
    parser.add_argument("--baseline", default=None, metavar="SETTING",
                        help="add the difference of each setting's mIoU to this one's (a setting as "
                             "the table names it, or a part of one only it has), with a 95 %% Welch "
                             "confidence interval; overrides several settings have (e.g. "
                             "backbone=tiny): each setting against the one with those overrides "
                             "and its other overrides")
    parser.add_argument("--paired", action="store_true",
                        help="with --baseline: the paired t interval over the seeds a setting shares "
                             "with the baseline (Welch where the seeds differ)")
    parser.add_argument("--against", nargs="+", type=Path, action="append", default=None, metavar="SWEEP",
                        help="sweep dirs of another study: each setting against the same setting "
                             "there (e.g. the same heads at another budget), with what differs in "
                             "the configs the runs recorded and the differences' 95 %% intervals "
                             "(--paired: over shared seeds); repeat it for one section per study")
    parser.add_argument("--wandb", action="store_true", help="also log the table to the sweep's W&B group")
    parser.add_argument("--project", default="diffusion-seg", help="W&B project (with --wandb)")
    args = parser.parse_args(argv)
    with user_errors():
        if args.paired and args.baseline is None and args.against is None:
            raise ReportError("--paired needs --baseline SETTING or --against SWEEP")
        runs = gather(args.sweeps, args.eval)
        split = pick_split(runs, args.split)
        finished = [r for r in runs if r.status == "finished"]
        if not finished:
            evaluated = f" with an evaluation <job>/{args.eval}/metrics.yaml" if args.eval else ""
            raise ReportError(f"no run in {', '.join(map(str, args.sweeps))} has finished yet{evaluated}")
        prefix = f"{split}/IoU/"
        class_names = [k[len(prefix):] for k in finished[0].metrics if k.startswith(prefix)]
        rows = aggregate(runs, split, class_names)
        baseline = find_baseline(rows, args.baseline) if args.baseline is not None else None
        against = [line for other in args.against or []
                   for line in against_section(rows, gather(other, args.eval), split, args.paired, args.sweeps, other)]
        out = args.out or args.sweeps[0]
        out.mkdir(parents=True, exist_ok=True)
        title = (runs[0].study.get("name") or "sweep") + (f", evaluation {args.eval}" if args.eval else "")
        curves = plot_curves(out / "curves.png", rows, title=runs[0].study.get("name") or "sweep")
        (out / "report.md").write_text(markdown(rows, runs, split, args.sweeps, class_names, args.eval,
                                                baseline, args.paired, "curves.png" if curves else None,
                                                against))
        plot(out / "report.png", rows, runs[0].study.get("knob"), split, title=title)
        write_csv(out / "runs.csv", runs, args.sweeps[0])
        if args.wandb:
            log_to_wandb(rows, split, args.sweeps[0], args.project)
    unfinished = len(runs) - len(finished)
    print(f"report of {len(finished)} finished run(s) in {len(rows)} setting(s)"
          + (f", {unfinished} unfinished" if unfinished else "") + f": {out / 'report.md'}")
    return 0

