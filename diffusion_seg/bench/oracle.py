"""The pathfinder oracle: each cue's colour flooded along its own path on the feature grid.

    python -m diffusion_seg.bench oracle [dataset.max_distance=8 ...] [--split test] [--out DIR]
    python -m diffusion_seg.bench oracle --sweep <sweep dir>

A non-learned reference for the pathfinder benchmark
(:func:`diffusion_seg.data.pathfinder.flood_oracle`): it sees where the curves are at the
backbone's output stride (8 px per cell) and the colour of each cue, floods the colour
through the cells connected to the cue, and its one-hot class map is upsampled to pixels
exactly as a head's logits are (bilinear, :func:`diffusion_seg.models.inference.resize_logits`).
It is scored with the metrics of a trained run (mIoU, and the colour accuracy by distance
from the cue and on misleading pixels, :class:`diffusion_seg.metrics.ContextMetrics`), so it
shows what the benchmark's resolution allows: colour accuracy ≈ 100 % far from the cue
means far is solvable by propagation on the feature grid; its mIoU is what the cell grid
alone gives the path edges.

With dataset overrides (``dataset.<key>=<value>``, as for ``train``) it evaluates that
dataset and prints the tables; ``--out DIR`` also writes ``DIR/metrics.yaml`` (the keys a
run logs, ``test/mIoU``, ``test/color_acc/d4-6``, ...). With ``--sweep`` it adds an
``oracle_<n>/`` job to a study's sweep dir for every dataset setting of its runs (the
dataset node of the config each recorded, ``config.yaml``, else ``.hydra/config.yaml``):
overrides ``experiment=pathfinder_oracle`` plus the setting's ``dataset.*`` overrides, written
as a training job records itself (``job.yaml``, ``config.yaml``) with a completion marker
holding the metrics, so
``python -m diffusion_seg.report <sweep>`` shows the oracle as one more row (n = 1: it has no
seed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf

from diffusion_seg.config import compose_config
from diffusion_seg.data.pathfinder import CELL, PathfinderDataset, flood_oracle
from diffusion_seg.errors import ConfigError
from diffusion_seg.lightning.datamodule import dataset_factory_from_config
from diffusion_seg.jobs import code_version, job_overrides, write_finished, write_yaml_atomic
from diffusion_seg.studies import CONFIG_FILE, JOB_FILE, job_record
from diffusion_seg.metrics import ContextMetrics, SegmentationMetrics, format_context, format_table
from diffusion_seg.models.inference import resize_logits

ROW = "experiment=pathfinder_oracle"  # the oracle's row in a study report
COMMAND = "python -m diffusion_seg.bench oracle --sweep <sweep dir>"  # what wrote it (report.md)


def oracle_prediction(dataset: PathfinderDataset, index: int) -> torch.Tensor:
    """``H×W`` class ids of the oracle for sample ``index``: the flooded cell map, one-hot,
    upsampled bilinearly to the (output-stride-padded) image like a head's logits."""
    cells = torch.from_numpy(flood_oracle(dataset.sample(index))).long()
    logits = F.one_hot(cells, dataset.num_classes).permute(2, 0, 1)[None].float()
    pred = resize_logits(logits, (cells.shape[0] * CELL, cells.shape[1] * CELL)).argmax(1)[0]
    return pred[: dataset.size, : dataset.size]


def evaluate(dataset: PathfinderDataset, stage: str = "test") -> dict[str, float]:
    """The oracle's metrics on every sample of ``dataset``, named as a run logs them
    (``<stage>/mIoU``, ``<stage>/IoU/<class>``, ``<stage>/color_acc/...``)."""
    seg = SegmentationMetrics(dataset.num_classes)
    context = ContextMetrics(dataset.num_classes)
    for index in range(len(dataset)):
        item = dataset[index]
        pred = oracle_prediction(dataset, index)[None]
        seg.update(pred, item["mask"][None])
        maps = (item[k][None] for k in ContextMetrics.batch_keys)
        context.update(pred, item["mask"][None], *maps)
    results = seg.compute()
    metrics = {f"{stage}/{name}": float(results[name]) for name in ("mIoU", "mAcc", "aAcc")}
    metrics |= {f"{stage}/IoU/{name}": float(iou)
                for name, iou in zip(dataset.class_names, results["IoU"]) if not iou.isnan()}
    metrics |= {f"{stage}/{name}": float(v) for name, v in context.compute().items()}
    print(format_table(results, dataset.class_names, f"oracle, {stage} split"))
    title = f"oracle, {stage}: colour of the path pixels called path"
    print(format_context(context.compute(), title))
    return metrics


def pathfinder_split(dataset_node: dict[str, Any], split: str) -> PathfinderDataset:
    """The evaluation split of a resolved ``dataset`` config node (no transform: the oracle
    reads no image)."""
    node = {k: v for k, v in dataset_node.items() if k != "_target_"}
    if not str(node.get("dataset_class", "")).endswith(".PathfinderDataset"):
        raise ConfigError(
            f"the oracle needs dataset=pathfinder, got dataset_class={node.get('dataset_class')!r}"
        )
    name = (node.get("test_split") or "val") if split == "test" else split
    return dataset_factory_from_config(node)(split=name)


def add_to_sweep(sweep: Path) -> list[Path]:
    """One ``oracle_<n>`` job per dataset setting of the sweep's runs (module docstring)."""
    settings: dict[str, tuple[list[str], dict[str, Any], dict[str, Any]]] = {}
    jobs = (p for p in sweep.iterdir()
            if (p / JOB_FILE).is_file() or (p / ".hydra" / "config.yaml").is_file())
    for job in sorted(jobs):
        if job.name.startswith("oracle_"):
            continue
        overrides, config, _ = job_record(job)
        dataset = config.get("dataset") or {}
        key = yaml.safe_dump(dataset, sort_keys=True)
        own = [o for o in overrides if o.lstrip("+~").startswith(("dataset.", "study="))]
        settings.setdefault(key, (own, dataset, config.get("study") or {}))
    if not settings:
        raise ConfigError(f"{sweep} holds no runs (<job>/{JOB_FILE} or <job>/.hydra/config.yaml); "
                          "give a sweep dir")
    written = []
    code = code_version()  # the flood and the metrics are code too
    for n, (overrides, dataset, study) in enumerate(settings.values()):
        job = sweep / f"oracle_{n}"
        job.mkdir(parents=True, exist_ok=True)
        overrides = [ROW, *overrides]
        # The records a training job writes (diffusion_seg.jobs.record_attempt): the
        # report reads these, not .hydra/.
        write_yaml_atomic(job / CONFIG_FILE, {"study": study, "dataset": dataset})
        start = time.time()
        attempt = {"time": start, "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)),
                   "action": "start"}
        record = {"overrides": job_overrides(overrides), "attempts": [attempt], "command": COMMAND,
                  "code": code}
        write_yaml_atomic(job / JOB_FILE, record)
        print(f"\n{job}: {' '.join(overrides)}")
        write_finished(job, overrides, evaluate(pathfinder_split(dataset, "test")))
        write_yaml_atomic(job / JOB_FILE, {**record, "attempts": [{**attempt, "end": time.time()}]})
        written.append(job)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion_seg.bench oracle",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="dataset.<key>=<value> (dataset=pathfinder)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--out", type=Path, help="write <out>/metrics.yaml")
    parser.add_argument("--sweep", type=Path, help="add the oracle rows to this sweep dir")
    args = parser.parse_args(argv)
    if args.sweep is not None:
        if args.overrides or args.out:
            parser.error("--sweep takes the dataset settings from the sweep's runs")
        add_to_sweep(args.sweep)
        return
    cfg = compose_config(["dataset=pathfinder", *args.overrides])
    node = OmegaConf.to_container(cfg.dataset, resolve=True)
    try:
        metrics = evaluate(pathfinder_split(node, args.split), args.split)
    except ValueError as err:  # the generator's option checks name the dataset.<key>
        raise ConfigError(str(err)) from None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.yaml").write_text(yaml.safe_dump(metrics, sort_keys=False))
        print(f"metrics written to {args.out / 'metrics.yaml'}")

