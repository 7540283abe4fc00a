"""Data pipeline throughput: decoded + augmented training images per second per worker.

    python -m diffusion_seg.bench data [--datasets ade20k voc_aug ...] [--samples 48]
        [--loader-workers 4]

For each dataset config, a temporary tree in the release's exact layout is generated with
images of the real release's typical size (JPEGs of smooth colour fields, which compress
and decode like photos), then the dataset class reads it through the config's training
pipeline (its crop size, scale range, flip, photometric setting). One process, OpenCV
limited to one thread: the number is what one DataLoader worker delivers. Divide the
GPU's training images/s by it to size ``dataset.num_workers``. ``--loader-workers N`` also
times a real DataLoader with N workers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from diffusion_seg import testing as fixtures
from diffusion_seg.config import compose_config
from diffusion_seg.data.transforms import build_train_transform
from diffusion_seg.lightning.datamodule import dataset_factory_from_config, fitting_crop, image_sides

# dataset config → (tree builder, split, typical image W×H of the real release)
TREES: dict[str, tuple[Callable, str, tuple[int, int]]] = {
    "ade20k": (fixtures.make_ade20k, "train", (683, 512)),
    "voc_aug": (fixtures.make_voc_aug, "trainaug", (500, 375)),
    "pascal_context": (fixtures.make_pascal_context, "train", (500, 375)),
    "pascal_context59": (fixtures.make_pascal_context, "train", (500, 375)),
    "person_part": (fixtures.make_person_part, "train", (500, 375)),
    "folder": (None, "all", (1024, 768)),
}


def build(name: str, root: Path, samples: int):
    """The config's dataset class over a generated tree, with its train pipeline."""
    builder, split, size = TREES[name]
    if builder is None:
        fixtures.make_folder(root, n=samples, size=size)
    else:
        builder(root, counts={split: samples}, size=size, jitter=False)
    cfg = compose_config([f"dataset={name}", f"dataset.root={root}"]).dataset
    dataset = dataset_factory_from_config(OmegaConf.to_container(cfg, resolve=True))(split=split)
    if cfg.crop_size is None:  # the images' size, as the DataModule trains (output stride 8)
        cfg.crop_size = fitting_crop(image_sides(dataset), 8)
    dataset.transform = build_train_transform(
        cfg.crop_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), tuple(cfg.scale_range),
        cfg.hflip, cfg.photometric,
    )
    return dataset, cfg, size


def time_worker(dataset, repeats: int) -> tuple[float, float]:
    """Seconds per sample spent decoding (+ label mapping and checks) and augmenting."""
    decode = augment = 0.0
    n = 0
    for _ in range(repeats):
        for i in range(len(dataset)):
            t0 = time.perf_counter()
            image, mask = dataset.load(i)
            t1 = time.perf_counter()
            dataset.transform(image=image, mask=mask)
            t2 = time.perf_counter()
            decode, augment, n = decode + t1 - t0, augment + t2 - t1, n + 1
    return decode / n, augment / n


def time_loader(dataset, workers: int, batch_size: int, repeats: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True,
                        drop_last=True, persistent_workers=True)
    next(iter(loader))  # start the workers outside the timing
    t0 = time.perf_counter()
    count = sum(len(batch["name"]) for _ in range(repeats) for batch in loader)
    return count / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion_seg.bench data",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(TREES), choices=list(TREES))
    parser.add_argument("--samples", type=int, default=48, help="images per generated tree")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the tree")
    parser.add_argument("--loader-workers", type=int, default=0,
                        help="also time a DataLoader with this many workers")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # a DataLoader worker should not spread over every core
    rows = []
    for name in args.datasets:
        with tempfile.TemporaryDirectory() as tmp:
            dataset, cfg, size = build(name, Path(tmp), args.samples)
            decode, augment = time_worker(dataset, args.repeats)
            loader = (
                time_loader(dataset, args.loader_workers, 8, args.repeats)
                if args.loader_workers
                else None
            )
        scale = "–".join(f"{s:g}" for s in cfg.scale_range)
        row = (f"| {name} | {size[0]}×{size[1]} | {cfg.crop_size} | {scale} | "
               f"{1e3 * decode:.1f} | {1e3 * augment:.1f} | {1 / (decode + augment):.0f} |")
        if args.loader_workers:
            row += f" {loader:.0f} |"
        rows.append(row)
    header = ("| dataset | image | crop | scale | decode ms | augment ms | img/s per worker |")
    rule = "|---|---|---:|---|---:|---:|---:|"
    if args.loader_workers:
        header += f" img/s, {args.loader_workers} workers |"
        rule += "---:|"
    print(f"Training pipeline throughput ({args.samples} images × {args.repeats} passes, "
          "OpenCV 1 thread)\n")
    print("\n".join([header, rule, *rows]))
