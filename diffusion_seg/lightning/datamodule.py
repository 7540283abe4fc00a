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
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch.distributed as dist
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from diffusion_seg.data.transforms import build_eval_transform, build_train_transform
from diffusion_seg.errors import ConfigError

DatasetFactory = Callable[..., Dataset]


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


def _distributed() -> tuple[int, int] | None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


class SegmentationDataModule(L.LightningDataModule):
    """Loaders for one dataset.

    Args:
        dataset_class: the dataset class or its import path; called as
            ``dataset_class(split=name, transform=pipeline, **dataset_options)``.
        crop_size: training crop side.
        scale_range: random scale range for training.
        hflip / photometric: training augmentations.
        eval_resize: resize the longest side to this before evaluation (``None``: as is).
        size_divisor: evaluation padding multiple (set to the backbone's output stride).
        mean / std: normalisation (set from the backbone's pretrained config).
        train_split / val_split / test_split: split names passed to the factory.
        batch_size: training batch per device; val_batch_size: evaluation batch per device.
        num_workers / pin_memory / persistent_workers: DataLoader options.
        seed: seed of the augmentations and of the distributed training sampler.
        dataset_options: the dataset's own options (``root``, ``on_bad_sample``, ...).
    """

    def __init__(
        self,
        dataset_class: str | type,
        crop_size: int = 321,
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
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        **dataset_options: Any,
    ) -> None:
        super().__init__()
        self.dataset = dataset_factory(dataset_class, **dataset_options)
        self.train_transform = build_train_transform(
            crop_size, mean, std, scale_range, hflip, photometric
        )
        self.eval_transform = build_eval_transform(mean, std, size_divisor, eval_resize)
        self.mean, self.std = tuple(mean), tuple(std)  # the normalisation, for tools that undo it
        # albumentations draws from its own generators, seeded from OS entropy unless told:
        # seed them so one `seed` gives one run (workers are re-seeded in seed_worker).
        self.train_transform.set_random_seed(seed)
        self.splits = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self._sets: dict[str, Dataset] = {}
        # The evaluation split is opened now: it fixes the class list the model needs, and a
        # missing dataset root fails at start-up rather than after the first epoch.
        self.val_set = self._get("val")

    def _get(self, stage: str) -> Dataset:
        if stage not in self._sets:
            transform = self.train_transform if stage == "train" else self.eval_transform
            self._sets[stage] = self.dataset(split=self.splits[stage], transform=transform)
        return self._sets[stage]

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
        if shard is not None:
            rank, world = shard
            sampler = (
                DistributedSampler(dataset, world, rank, shuffle=True, seed=self.seed, drop_last=True)
                if train
                else ShardSampler(len(dataset), rank, world)
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            worker_init_fn=seed_worker if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._get("train"), self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._get("test"), self.val_batch_size, train=False)

    def describe(self) -> dict[str, Any]:
        """Sizes of the splits opened so far (printed at start-up)."""
        return {stage: len(ds) for stage, ds in self._sets.items()}


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
