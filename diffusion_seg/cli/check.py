"""Scan a dataset once: counts, class frequencies and every problem found.

    python -m diffusion_seg.check dataset=voc_aug [dataset.root=/data/voc]
        [splits=[trainaug,val]] [workers=8] [limit=100]

The dataset config is composed with Hydra from the package's ``conf/`` (``conf/check.yaml``
+ ``conf/dataset/<name>.yaml``), exactly as training would build it. Every sample of each
split is decoded, mapped and validated (no augmentation); problems (missing files,
unreadable files, size mismatches, label values outside the classes, split sizes that
differ from the full release) are collected rather than raised, and all printed. Exit
status 1 when there is any problem, so the command can gate a job script.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from hydra.errors import HydraException
from omegaconf import OmegaConf

from diffusion_seg.cli.errors import user_errors
from diffusion_seg.config import compose_config
from diffusion_seg.data.transforms import IGNORE_INDEX
from diffusion_seg.errors import BadSampleError, ConfigError, DatasetNotFoundError
from diffusion_seg.lightning.datamodule import dataset_factory_from_config
from diffusion_seg.validation import validate_config


@dataclass
class SplitScan:
    """What one pass over a split found."""

    split: str
    size: int = 0
    expected: int | None = None
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    images: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    problems: list[str] = field(default_factory=list)
    scanned: int = 0
    classes: list[str] = field(default_factory=list)


def _open(factory, split: str):
    kwargs = {"split": split, "transform": None}
    if "on_bad_sample" in inspect.signature(factory).parameters:
        kwargs["on_bad_sample"] = "skip"  # missing files become problems, not an abort
    return factory(**kwargs)


def _load_mask(dataset, index: int) -> np.ndarray:
    if hasattr(dataset, "load"):
        return dataset.load(index)[1]
    return np.asarray(dataset[index]["mask"])


def scan_split(factory, split: str, workers: int = 4, limit: int | None = None) -> SplitScan:
    """Decode and validate every sample of ``split``; collect, never raise, problems."""
    result = SplitScan(split)
    try:
        dataset = _open(factory, split)
    except (DatasetNotFoundError, BadSampleError, ValueError) as err:
        result.problems.append(str(err))
        return result
    result.size = len(dataset)
    result.expected = getattr(dataset, "EXPECTED_SIZES", {}).get(split)
    result.problems += [f"missing file {p}" for p in getattr(dataset, "missing", [])]
    result.classes = list(dataset.class_names)

    def one(index: int) -> tuple[np.ndarray | None, str | None]:
        try:
            mask = _load_mask(dataset, index)
        except BadSampleError as err:
            return None, str(err)
        return np.bincount(mask.ravel(), minlength=256), None

    count = len(dataset) if limit is None else min(limit, len(dataset))
    # PIL decodes with the GIL released: threads scale without pickling the dataset.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for hist, problem in pool.map(one, range(count)):
            if problem is not None:
                result.problems.append(problem)
                continue
            result.pixels += hist
            result.images += hist > 0
            result.scanned += 1
    return result


def format_scan(scan: SplitScan, class_names: Sequence[str]) -> str:
    lines = [f"## split {scan.split}: {scan.size} samples"]
    if scan.expected is not None and scan.size != scan.expected:
        lines.append(f"note: the full release has {scan.expected} samples in {scan.split}")
    if scan.scanned:
        total = int(scan.pixels.sum())
        ignored = int(scan.pixels[IGNORE_INDEX])
        lines.append(
            f"scanned {scan.scanned} samples, {total} pixels, "
            f"{100.0 * ignored / max(total, 1):.2f}% ignored ({IGNORE_INDEX})"
        )
        lines += ["", "| id | class | pixels % | images |", "|---:|---|---:|---:|"]
        labelled = max(total - ignored, 1)
        for k, name in enumerate(class_names):
            lines.append(
                f"| {k} | {name} | {100.0 * scan.pixels[k] / labelled:.3f} | {scan.images[k]} |"
            )
        absent = [name for k, name in enumerate(class_names) if scan.pixels[k] == 0]
        if absent:
            lines.append(f"classes never seen in {scan.split}: {', '.join(absent)}")
    lines.append(f"problems in {scan.split}: {len(scan.problems)}")
    lines += [f"  - {p}" for p in scan.problems]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    with user_errors():
        try:
            cfg = compose_config(argv, config_name="check")
        except HydraException as err:
            raise ConfigError(str(err)) from None
        validate_config(cfg, "check")  # types and ranges, before any file is read
        factory = dataset_factory_from_config(OmegaConf.to_container(cfg.dataset, resolve=True))
    splits = cfg.splits
    if splits is None:
        splits = [cfg.dataset.get(k) for k in ("train_split", "val_split", "test_split")]
    splits = list(dict.fromkeys(s for s in splits if s is not None))
    print(f"# dataset {cfg.dataset.dataset_class}")
    print(f"root: {OmegaConf.select(cfg, 'dataset.root', default='-')}")
    problems = 0
    for split in splits:
        scan = scan_split(factory, split, cfg.workers, cfg.limit)
        print(format_scan(scan, scan.classes))
        problems += len(scan.problems)
    print(f"\n{problems} problem(s) found" if problems else "\nno problems found")
    return 1 if problems else 0
