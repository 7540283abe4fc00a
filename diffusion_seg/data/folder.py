"""Your own data: a folder of images and masks, no code to write."""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from diffusion_seg.data.base import (
    BadSampleError,
    SegmentationDataset,
    Transform,
    check_dir,
    dataset_not_found,
    identity_label_map,
    index_files,
    read_mask,
    read_split_list,
    reduce_zero_label_map,
    voc_colormap,
)
from diffusion_seg.data.transforms import IGNORE_INDEX

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


_COLOUR_LINE = re.compile(r"^(.*?\S)\s+(\d{1,3})\s+(\d{1,3})\s+(\d{1,3})$")


def parse_classes_file(path: Path) -> tuple[list[str], np.ndarray | None, tuple | None]:
    """``classes.txt``: one class per line, line order = class index; ``name`` or
    ``name R G B``. A line ``ignore R G B`` (not a class) gives the colour of unlabelled
    pixels in colour masks. Blank lines and ``#`` comments are skipped.

    Returns names, the ``K×3`` colours (``None`` if no line has one) and the ignore colour.
    """
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    ignore = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _COLOUR_LINE.match(line)
        name, rgb = line, None
        if match:
            name, rgb = match.group(1), tuple(int(v) for v in match.groups()[1:])
        if rgb is not None and max(rgb) > 255:
            raise ValueError(f"{path}:{number}: colour {rgb} is outside 0..255")
        if name == "ignore":
            if rgb is None:
                raise ValueError(f"{path}:{number}: the ignore line needs a colour: ignore R G B")
            ignore = rgb
            continue
        names.append(name)
        colours.append(rgb)
    if not names:
        raise ValueError(f"{path} lists no classes; write one class name per line")
    if all(c is None for c in colours):
        return names, None, ignore
    if any(c is None for c in colours):
        raise ValueError(f"{path}: give a colour on every line or on none")
    if len(set(colours)) != len(colours):
        raise ValueError(f"{path}: two classes share a colour")
    return names, np.array(colours, dtype=np.uint8), ignore


def per_split_layout(root: Path) -> bool:
    """``images/<split>/`` folders and no image files directly in ``images/``."""
    entries = list((root / "images").iterdir())
    return any(p.is_dir() for p in entries) and not any(
        p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries
    )


class FolderDataset(SegmentationDataset):
    """Your own data: a folder of images and masks, no code to write.

    Two layouts under ``root``. Flat::

        images/<name>.jpg        any of .jpg .jpeg .png .bmp .tif .tiff .webp
        masks/<name>.png         class indices (mode L or P), 255 = ignore;
                                 or RGB colours listed in classes.txt
        classes.txt              optional: one class per line, "name" or "name R G B";
                                 "ignore R G B" gives the colour of unlabelled pixels
        splits/train.txt         optional: names (file stems), one per line;
        splits/val.txt           any splits/<split>.txt is a split

    or one folder per split, as exported datasets and mmsegmentation's custom datasets
    are laid out::

        images/<split>/<name>.jpg    split = train, val, test, ... (any folder name)
        masks/<split>/<name>.png
        classes.txt                  optional, as above

    Flat without ``splits/``: ``val`` is a fixed pseudo-random ``val_fraction`` of the
    names (rounded up: those with the smallest crc32 of the name, the same on every
    machine) and ``train`` the rest; ``all`` is every pair. Without ``classes.txt``, give
    ``num_classes``.

    Args:
        classes_file: name of the classes file under ``root``.
        num_classes: number of classes when there is no classes file (names ``class_0``..).
        reduce_zero_label: masks store 0 = unlabelled and classes from 1: map 0 → ignore
            and v → v-1 (as ADE20K).
        val_fraction: share of the names in ``val`` when there is no ``splits/``.
    """

    LAYOUT = """\
  images/<name>.jpg|.png|...    (or images/<split>/<name>.jpg|...)
  masks/<name>.png              (or masks/<split>/<name>.png; class indices, 255 = ignore,
                                 or colours from classes.txt)
  classes.txt                   (optional: "name" or "name R G B" per line)
  splits/{train,val}.txt        (optional, flat layout: names, one per line)"""
    PREPARE = "nothing to run: put the files in place (README.md, 'Your own data')"
    # The user's own files: nothing to re-extract.
    BAD_FILE_ADVICE = "fix, replace or remove the file, or set dataset.on_bad_sample=skip to train without it"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        on_bad_sample: str = "error",
        classes_file: str = "classes.txt",
        num_classes: int | None = None,
        reduce_zero_label: bool = False,
        val_fraction: float = 0.1,
    ) -> None:
        root = Path(root)
        for path in (root / "images", root / "masks"):
            check_dir("Folder dataset", path, root, self.LAYOUT, self.PREPARE, None)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"dataset.val_fraction={val_fraction} must be in [0, 1)")
        names = self._class_names(root / classes_file, num_classes)
        if per_split_layout(root):
            image_dir, mask_dir = root / "images" / split, root / "masks" / split
            if not image_dir.is_dir():
                splits = sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
                raise dataset_not_found(
                    f"Folder dataset (one folder per split: {', '.join(splits)})",
                    image_dir, root, self.LAYOUT, self.PREPARE,
                )
            check_dir("Folder dataset", mask_dir, root, self.LAYOUT, self.PREPARE, None)
            images = index_files(image_dir, IMAGE_EXTENSIONS)
            stems = list(images)
        else:
            mask_dir = root / "masks"
            images = index_files(root / "images", IMAGE_EXTENSIONS)
            stems = self._flat_split(root, images, split, val_fraction)
        if not images:
            raise dataset_not_found(
                "Folder dataset", root / "images" / "<name>.jpg", root, self.LAYOUT, self.PREPARE
            )
        samples = [(images[s], mask_dir / f"{s}.png") for s in stems]
        palette = self.colours if self.colours is not None else voc_colormap(len(names))
        label_map = reduce_zero_label_map() if reduce_zero_label else identity_label_map()
        super().__init__(samples, names, palette, label_map, transform, on_bad_sample)

    def _class_names(self, classes_path: Path, num_classes: int | None) -> list[str]:
        """Names from the classes file (colours kept on ``self``), else ``class_0..``."""
        self.colours, self.ignore_colour = None, None
        if classes_path.is_file():
            names, self.colours, self.ignore_colour = parse_classes_file(classes_path)
            if num_classes is not None and num_classes != len(names):
                raise ValueError(
                    f"dataset.num_classes={num_classes} but {classes_path} lists "
                    f"{len(names)} classes; drop num_classes or fix the file"
                )
        elif num_classes is not None and num_classes >= 1:
            names = [f"class_{i}" for i in range(num_classes)]
        else:
            raise ValueError(
                f"Folder dataset: no classes file {classes_path} and dataset.num_classes is "
                "not set; write the file (one class name per line) or set num_classes"
            )
        if len(names) > 255:
            raise ValueError(f"Folder dataset: {len(names)} classes; at most 255 fit a PNG mask")
        return names

    def _flat_split(
        self, root: Path, images: dict[str, Path], split: str, val_fraction: float
    ) -> list[str]:
        """The stems of ``split`` in the flat layout: ``splits/<split>.txt`` if present,
        else a stable hashed ``val`` / ``train`` partition (or ``all``)."""
        split_dir = root / "splits"
        if split_dir.is_dir():
            list_path = split_dir / f"{split}.txt"
            if not list_path.is_file():
                raise dataset_not_found("Folder dataset", list_path, root, self.LAYOUT, self.PREPARE)
            # "name" or "name.jpg": both mean the image images/name.*
            stems = [
                Path(s).stem if Path(s).suffix.lower() in IMAGE_EXTENSIONS else s
                for s in read_split_list(list_path)
            ]
            unknown = [s for s in stems if s not in images]
            if unknown:
                raise BadSampleError(
                    f"{list_path} names {len(unknown)} image(s) not in {root / 'images'}: "
                    f"{unknown[:10]}"
                )
            return stems
        if split == "all":
            return list(images)
        if split in ("train", "val"):
            # The names with the smallest crc32 are val: the same on every run and machine,
            # and adding files moves only names at the boundary.
            ranked = sorted(images, key=lambda s: (zlib.crc32(s.encode()), s))
            n_val = math.ceil(val_fraction * len(ranked)) if len(ranked) > 1 else 0
            val = set(ranked[:n_val])
            return [s for s in images if (s in val) == (split == "val")]
        raise ValueError(
            f"Folder dataset has no split {split!r}: without {split_dir} the splits are "
            "train, val and all"
        )

    def read_label(self, path: Path) -> np.ndarray:
        """Index masks as stored; RGB(A) masks through the classes file's colours."""
        try:
            return read_mask(path)
        except BadSampleError:
            if self.colours is None:
                raise
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise BadSampleError(f"cannot read mask {path}: {err}") from None
        return self.colours_to_index(rgb, path)

    def colours_to_index(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8)
        packed |= rgb[..., 2]
        colours = self.colours.astype(np.int32)
        keys = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
        values = np.arange(len(keys), dtype=np.uint8)
        if self.ignore_colour is not None:
            r, g, b = self.ignore_colour
            keys = np.append(keys, (r << 16) | (g << 8) | b)
            values = np.append(values, np.uint8(IGNORE_INDEX))
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
        known = keys[pos] == packed
        if not known.all():
            unknown = np.unique(packed[~known])[:5]
            shown = [((int(v) >> 16) & 255, (int(v) >> 8) & 255, int(v) & 255) for v in unknown]
            raise BadSampleError(
                f"mask {path} has colours {shown} that are not in the classes file; add "
                "them (name R G B) or an 'ignore R G B' line"
            )
        return values[pos]
