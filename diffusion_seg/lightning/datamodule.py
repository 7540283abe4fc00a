"""One LightningDataModule for every dataset.

The dataset is a class (``dataset_class``, e.g. ``diffusion_seg.data.voc.VOCAug``) called as
``dataset_class(split=..., transform=..., **dataset_options)``; this module adds the
augmentation pipelines, the loaders and the samplers. Its options and the dataset's share one
flat config node: ``dataset.root=...``, ``dataset.on_bad_sample=skip`` and
``dataset.batch_size=8`` are all keys of ``conf/dataset/<name>.yaml``.

Batch size is *per device*: the paper's global batch 16 on 8 GPUs is ``batch_size=2`` with
``trainer.devices=8``.

Under DDP the validation/test loaders shard the dataset *without* padding (each sample seen
exactly once), so the summed confusion matrix equals single-device evaluation; Lightning's
own DistributedSampler would duplicate samples to even the shards. The DDP trainer configs
therefore set ``use_distributed_sampler: false`` and the samplers are made here.

Defaults follow the data and the machine: ``crop_size: null`` is the images' size,
``num_workers: null`` what the CPUs allow, and pinned memory is used only when a GPU trains.
A dataset without a test split (``test_split: null``) is never tested under a test label.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch.distributed as dist
import torch
from lightning.fabric.utilities.data import suggested_max_num_workers
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.data.transforms import build_train_transform
from diffusion_seg.errors import ConfigError

DatasetFactory = Callable[..., Dataset]
log = logging.getLogger(__name__)

# crop_size: null takes the largest side of this many evenly spaced images, rounded up to the
# output stride and capped: 512 is the common crop of large-image benchmarks (ADE20K, VOC in
# mmsegmentation); beyond it a crop costs memory without adding context the heads use.
CROP_SAMPLES = 16
MAX_AUTO_CROP = 512
# num_workers: null never starts more workers than this per device (each holds a copy of the
# dataset and its decoding buffers; 8 feed a GPU at 100–200 images/s per worker, README).
MAX_AUTO_WORKERS = 8


def dataset_factory(dataset_class: str | type, **options: Any) -> DatasetFactory:
    """``dataset_class`` (a class or its import path) with ``options`` bound; an option the
    class does not take fails here, naming the key and the options that exist."""
    if isinstance(dataset_class, str):
        module_name, _, name = dataset_class.rpartition(".")
        try:
            dataset_class = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(
                f"dataset.dataset_class={dataset_class!r} is not an importable class; give its "
                "full path, e.g. diffusion_seg.data.voc.VOCAug"
            ) from None
    params = inspect.signature(dataset_class).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params or k in ("split", "transform")]
    if unknown and not takes_any:
        allowed = sorted(set(DATAMODULE_OPTIONS) | set(params) - {"self", "split", "transform"})
        raise ConfigError(
            f"dataset.{unknown[0]} is not an option of {dataset_class.__name__} or "
            f"SegmentationDataModule; remove it or fix its spelling. Options: {', '.join(allowed)}"
        )
    return functools.partial(dataset_class, **options)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every sample exactly once across ranks."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class NewSamplesEachEpoch(DistributedSampler):
    """The training sampler of a procedural dataset with ``fresh_samples`` (the pathfinder):
    epoch e yields the usual shuffled indices shifted by ``e × len(dataset)``, and the dataset
    renders such an index as a new image (epoch 0: its fixed set). The epoch travels inside
    the index, so DataLoader workers need no state of their own; Lightning calls ``set_epoch``
    at every epoch as for any DistributedSampler, and a DistributedSampler is not re-wrapped
    under DDP (Lightning's wrapper would hide ``set_epoch`` and repeat epoch 0's images).
    """

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * len(self.dataset)
        return (offset + index for index in super().__iter__())


def seed_worker(worker_id: int) -> None:
    """Give each worker's copy of the augmentation pipeline its own deterministic stream.

    ``torch.initial_seed()`` in a worker is the loader's base seed (drawn from the seeded main
    process RNG, new every epoch) plus the worker id.
    """
    pl_worker_init_function(worker_id)  # Lightning's seeding of random/numpy/torch
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2**32)


def image_sides(dataset: Dataset, count: int = CROP_SAMPLES) -> list[int]:
    """The longer side of up to ``count`` evenly spaced images of a file-backed dataset
    (``dataset.samples`` = ``(image, mask)`` paths), read from the file headers; ``[]`` for a
    dataset without files. Unreadable files are passed over: loading reports them."""
    samples = list(getattr(dataset, "samples", None) or [])
    sides = []
    for image_path, _ in samples[:: max(1, len(samples) // count)][:count]:
        try:
            with Image.open(image_path) as img:
                sides.append(max(img.size))
        except (OSError, ValueError, SyntaxError):
            continue
    return sides


def fitting_crop(sides: Sequence[int], size_divisor: int) -> int:
    """The crop that holds the longest of ``sides``: a multiple of the output stride, at most
    :data:`MAX_AUTO_CROP` (what ``crop_size: null`` trains with)."""
    return min(MAX_AUTO_CROP, math.ceil(max(sides) / size_divisor) * size_divisor)


def available_cpus() -> int:
    """CPUs this process may run on (a job's allocation, not the node's core count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _distributed() -> tuple[int, int] | None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


class SegmentationDataModule(L.LightningDataModule):
    """Loaders for one dataset.

    Args:
        dataset_class: the dataset class or its import path; called as
            ``dataset_class(split=name, transform=pipeline, **dataset_options)``.
        crop_size: training crop side; ``None``: the largest side of a few validation
            images, rounded up to ``size_divisor``, at most 512 (logged at start-up). A crop
            far above the images (padding at every scale) is warned about once.
        scale_range: random scale range for training.
        hflip / photometric: training augmentations.
        eval_resize: resize the longest side to this before evaluation (``None``: as is).
        size_divisor: evaluation padding multiple (set to the backbone's output stride).
        mean / std: normalisation (set from the backbone's pretrained config).
        train_split / val_split / test_split: split names passed to the factory;
            ``test_split=None`` (or the validation split's name): the dataset has no test
            split, and asking for one is an error naming the key.
        batch_size: training batch per device; val_batch_size: evaluation batch per device.
        num_workers: loader processes per device; ``None``: Lightning's suggestion for
            this machine (CPUs per device − 1), at most 8. A number above the CPUs is
            lowered to them (with a note): more would only compete for the same cores.
        pin_memory: pin batches in page-locked memory when a GPU trains (ignored on CPU,
            where it has nothing to speed up).
        persistent_workers: keep the loader processes between epochs.
        seed: seed of the augmentations and of the distributed training sampler.
        dataset_options: the dataset's own options (``root``, ``on_bad_sample``, ...).
    """

    def __init__(
        self,
        dataset_class: str | type,
        crop_size: int | None = 321,
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: bool = True,
        photometric: bool = False,
        eval_resize: int | None = None,
        size_divisor: int = 8,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int | None = None,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        **dataset_options: Any,
    ) -> None:
        super().__init__()
        self.dataset = dataset_factory(dataset_class, **dataset_options)
        # The network's input: normalisation and evaluation padding, shared with every tool
        # that feeds the trained network or undoes its input (pictures, the dense CRF).
        self.preprocessor = Preprocessor(mean, std, size_divisor, eval_resize)
        self.eval_transform = self.preprocessor.eval_transform()
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self._sets: dict[str, Dataset] = {}
        # The evaluation split is opened now: it fixes the class list the model needs, and a
        # missing dataset root fails at start-up rather than after the first epoch.
        self.val_set = self._get("val")
        self.crop_size = self._check_crop(crop_size, size_divisor, max(scale_range))
        self.train_transform = build_train_transform(
            self.crop_size, mean, std, scale_range, hflip, photometric
        )
        self.mean, self.std = self.preprocessor.mean, self.preprocessor.std
        # albumentations draws from its own generators, seeded from OS entropy unless told:
        # seed them so one `seed` gives one run (workers are re-seeded in seed_worker).
        self.train_transform.set_random_seed(seed)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.seed = seed
        self._workers: int | None = None  # num_workers resolved for this machine, once

    @property
    def has_test_split(self) -> bool:
        """A test split of its own: not none, and not the validation split under another name."""
        return self.splits["test"] not in (None, self.splits["val"])

    def _get(self, stage: str) -> Dataset:
        if stage == "test" and not self.has_test_split:
            raise ConfigError(
                f"dataset.test_split={self.splits['test'] or 'null'}: this dataset has no test "
                f"split apart from its validation split ({self.splits['val']}); evaluate "
                "split=val, or set dataset.test_split=<split name>"
            )
        if stage not in self._sets:
            transform = self.train_transform if stage == "train" else self.eval_transform
            self._sets[stage] = self.dataset(split=self.splits[stage], transform=transform)
        return self._sets[stage]

    def _check_crop(self, crop_size: int | None, size_divisor: int, max_scale: float) -> int:
        """``crop_size``, or the images' size when ``None``; warns once when a crop is larger
        than every sampled image at the largest training scale: it is then mostly padding,
        and ``crop_size: 512`` on 64² images costs 64× the pixels per step for nothing."""
        sides = image_sides(self.val_set)
        if crop_size is None:
            if not sides:
                raise ConfigError(
                    f"dataset.crop_size=null takes the images' size, but the {self.splits['val']} "
                    "split has no image files to measure; set dataset.crop_size=<pixels>"
                )
            crop_size = fitting_crop(sides, size_divisor)
            if rank_zero_only.rank == 0:
                log.info("dataset.crop_size=null: training crops of %d px (the longest side of %d "
                         "image(s) sampled, a multiple of the output stride %d, at most %d)",
                         crop_size, len(sides), size_divisor, MAX_AUTO_CROP)
        elif sides and crop_size > max(sides) * max_scale and rank_zero_only.rank == 0:
            fit = fitting_crop(sides, size_divisor)
            log.warning(
                "dataset.crop_size=%d is larger than every image even at the largest training "
                "scale (sides up to %d px in %d image(s) sampled, dataset.scale_range up to %g): "
                "crops are mostly padding and each step computes %.0f× the pixels of a %d crop. "
                "Set dataset.crop_size=%d, or null to follow the images.",
                crop_size, max(sides), len(sides), max_scale, (crop_size / fit) ** 2, fit, fit,
            )
        return crop_size

    def _num_workers(self) -> int:
        """``num_workers`` for this machine (class docstring), resolved at the first loader."""
        if self._workers is None:
            devices = self.trainer.num_devices if self.trainer is not None else 1
            if self.num_workers is None:
                self._workers = min(MAX_AUTO_WORKERS, suggested_max_num_workers(devices))
            else:
                self._workers = min(self.num_workers, available_cpus())
                if self._workers < self.num_workers and rank_zero_only.rank == 0:
                    log.info("dataset.num_workers=%d lowered to %d, the CPUs this process may use "
                             "(dataset.num_workers=null picks for the machine)",
                             self.num_workers, self._workers)
        return self._workers

    def _on_gpu(self) -> bool:
        if self.trainer is not None:
            return self.trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    @property
    def num_classes(self) -> int:
        return self.val_set.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.val_set.class_names)

    @property
    def palette(self) -> np.ndarray:
        return self.val_set.palette

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._get("train")
        if stage == "test":
            self._get("test")

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        sampler: Sampler[int] | None = None
        shard = _distributed()
        if train and getattr(dataset, "fresh_samples", False):
            rank, world = shard or (0, 1)
            sampler = NewSamplesEachEpoch(dataset, world, rank, shuffle=True, seed=self.seed, drop_last=True)
        elif shard is not None:
            rank, world = shard
            sampler = (
                DistributedSampler(dataset, world, rank, shuffle=True, seed=self.seed, drop_last=True)
                if train
                else ShardSampler(len(dataset), rank, world)
            )
        workers = self._num_workers()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train,
            num_workers=workers,
            pin_memory=self.pin_memory and self._on_gpu(),
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=seed_worker if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._get("train"), self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._get("test"), self.val_batch_size, train=False)


# Keys of a dataset config that belong to the DataModule; every other key is the dataset's.
DATAMODULE_OPTIONS = tuple(
    name for name, p in inspect.signature(SegmentationDataModule).parameters.items()
    if p.kind is not inspect.Parameter.VAR_KEYWORD and name != "dataset_class"
)


def dataset_factory_from_config(config: dict[str, Any]) -> DatasetFactory:
    """The dataset factory of a resolved dataset config node: its keys minus the
    DataModule's (for tools that read a dataset without loaders: check, benchmarks)."""
    options = {k: v for k, v in config.items() if k not in DATAMODULE_OPTIONS and k != "_target_"}
    return dataset_factory(**options)
