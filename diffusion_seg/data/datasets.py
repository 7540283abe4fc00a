"""The on-disk datasets: ADE20K, VOC 2012 + SBD aug, Pascal Context (60 / 59), PASCAL
Person-Part, and a user's own folder.

Each class only lists its ``(image, mask)`` pairs in the exact layout of the public release
(or of ``python -m diffusion_seg.data.prepare <name>``), and states its class names,
palette and raw-label mapping; reading, validation and the skip policy are in
:class:`diffusion_seg.data.base.SegmentationDataset`. Every constructor is
``(root, split, transform=None, on_bad_sample="error", ...)`` and fails at once, naming the
path, the expected layout and the prepare command, when the root or the split is missing.
Layouts and preparation: README.md, section Datasets.
"""

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
    dataset_not_found,
    identity_label_map,
    index_files,
    read_mask,
    read_split_list,
    reduce_zero_label_map,
    voc_colormap,
)
from diffusion_seg.data.transforms import IGNORE_INDEX

PREPARE = "python -m diffusion_seg.data.prepare"

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# The 59 most frequent Pascal Context classes as (id in the full 459-class label list,
# name), in id order; train id = position + 1, 0 = background (every other class too).
CONTEXT_59 = (
    (2, "aeroplane"), (9, "bag"), (18, "bed"), (19, "bedclothes"), (22, "bench"),
    (23, "bicycle"), (25, "bird"), (31, "boat"), (33, "book"), (34, "bottle"),
    (44, "building"), (45, "bus"), (46, "cabinet"), (59, "car"), (65, "cat"),
    (68, "ceiling"), (72, "chair"), (80, "cloth"), (85, "computer"), (98, "cow"),
    (104, "cup"), (105, "curtain"), (113, "dog"), (115, "door"), (144, "fence"),
    (158, "floor"), (159, "flower"), (162, "food"), (187, "grass"), (189, "ground"),
    (207, "horse"), (220, "keyboard"), (232, "light"), (258, "motorbike"),
    (259, "mountain"), (260, "mouse"), (284, "person"), (295, "plate"), (296, "platform"),
    (308, "pottedplant"), (324, "road"), (326, "rock"), (347, "sheep"), (349, "shelves"),
    (354, "sidewalk"), (355, "sign"), (360, "sky"), (366, "snow"), (368, "sofa"),
    (397, "table"), (415, "track"), (416, "train"), (420, "tree"), (424, "truck"),
    (427, "tvmonitor"), (440, "wall"), (445, "water"), (454, "window"), (458, "wood"),
)  # fmt: skip
CONTEXT_CLASSES = ("background",) + tuple(name for _, name in CONTEXT_59)

PERSON_PART_CLASSES = (
    "background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs",
)  # fmt: skip

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _check_dir(name: str, path: Path, root: Path, layout: str, prepare: str, env: str | None):
    if not path.is_dir():
        raise dataset_not_found(name, path, root, layout, prepare, env)


def _listed_pairs(
    name: str,
    root: Path,
    list_path: Path,
    image_dir: Path,
    mask_dir: Path,
    layout: str,
    prepare: str,
    env: str,
) -> list[tuple[Path, Path]]:
    """``(image_dir/<id>.jpg, mask_dir/<id>.png)`` for every id of a split list, after
    checking that the directories and the list exist (one message naming what is missing)."""
    for path in (image_dir, mask_dir):
        _check_dir(name, path, root, layout, prepare, env)
    if not list_path.is_file():
        raise dataset_not_found(name, list_path, root, layout, prepare, env)
    return [(image_dir / f"{i}.jpg", mask_dir / f"{i}.png") for i in read_split_list(list_path)]


class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing (MIT Scene Parsing Benchmark): 150 classes.

    Layout under ``root`` (``ADEChallengeData2016.zip`` unpacked as is)::

        ADEChallengeData2016/
          images/training/ADE_train_00000001.jpg ...    20,210 images
          images/validation/ADE_val_00000001.jpg ...     2,000 images
          annotations/training/ADE_train_00000001.png   mode L: 0 = other, 1..150 classes
          annotations/validation/ADE_val_00000001.png

    Raw 0 ("other objects") → ignore 255, raw 1..150 → train ids 0..149 (the benchmark's
    convention). Splits: ``train``, ``val``. Root: ``$ADE20K_ROOT`` or
    ``<data_dir>/ade20k``.
    """

    SPLITS = {"train": "training", "val": "validation"}
    EXPECTED_SIZES = {"train": 20210, "val": 2000}
    LAYOUT = """\
  ADEChallengeData2016/
    images/{training,validation}/*.jpg
    annotations/{training,validation}/*.png   (0 = other → ignore, 1..150 = classes)"""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        on_bad_sample: str = "error",
    ) -> None:
        root = Path(root)
        if split not in self.SPLITS:
            raise ValueError(
                f"ADE20K has no split {split!r} (dataset.train_split / val_split / "
                f"test_split); allowed: {', '.join(self.SPLITS)}"
            )
        prepare = (
            f"{PREPARE} ade20k --zip ADEChallengeData2016.zip --out {root}  (the zip is at "
            "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip)"
        )
        base = root / "ADEChallengeData2016"
        image_dir = base / "images" / self.SPLITS[split]
        mask_dir = base / "annotations" / self.SPLITS[split]
        for d in (image_dir, mask_dir):
            _check_dir("ADE20K", d, root, self.LAYOUT, prepare, "ADE20K_ROOT")
        images = index_files(image_dir, (".jpg",))
        samples = [(path, mask_dir / f"{stem}.png") for stem, path in images.items()]
        super().__init__(
            samples, ADE20K_CLASSES, voc_colormap(150), reduce_zero_label_map(), transform,
            on_bad_sample,
        )


class VOCAug(SegmentationDataset):
    """PASCAL VOC 2012 with the SBD augmented annotations: 21 classes.

    Layout under ``root``::

        VOCdevkit/VOC2012/
          JPEGImages/2007_000032.jpg ...
          SegmentationClassAug/2007_000032.png   class indices 0..20, 255 = boundary/ignore
          ImageSets/Segmentation/trainaug.txt    10,582 ids
          ImageSets/Segmentation/val.txt         1,449 ids (also train.txt, trainval.txt)

    ``SegmentationClassAug`` and ``trainaug.txt`` are written by
    ``python -m diffusion_seg.data.prepare voc_aug`` from the SBD ``cls/*.mat`` files and
    VOC's own ``SegmentationClass`` PNGs. A split is any list in ``ImageSets/Segmentation``.
    Root: ``$VOC_ROOT`` or ``<data_dir>/voc``.
    """

    EXPECTED_SIZES = {"trainaug": 10582, "train": 1464, "val": 1449, "trainval": 2913}
    LAYOUT = """\
  VOCdevkit/VOC2012/
    JPEGImages/*.jpg
    SegmentationClassAug/*.png            (indices 0..20, 255 = ignore)
    ImageSets/Segmentation/{trainaug,train,val}.txt"""

    def __init__(
        self,
        root: str | Path,
        split: str = "trainaug",
        transform: Transform | None = None,
        on_bad_sample: str = "error",
    ) -> None:
        root = Path(root)
        base = root / "VOCdevkit" / "VOC2012"
        prepare = (
            f"{PREPARE} voc_aug --voc {base} --sbd <benchmark_RELEASE>/dataset  (VOC: "
            "VOCtrainval_11-May-2012.tar; SBD: benchmark.tgz)"
        )
        list_path = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        samples = _listed_pairs(
            "VOC aug", root, list_path, base / "JPEGImages", base / "SegmentationClassAug",
            self.LAYOUT, prepare, "VOC_ROOT",
        )
        super().__init__(
            samples, VOC_CLASSES, voc_colormap(21), identity_label_map(), transform,
            on_bad_sample,
        )


class PascalContext(SegmentationDataset):
    """Pascal Context: 59 classes + background, on VOC 2010 images.

    Layout under ``root``::

        VOCdevkit/VOC2010/
          JPEGImages/2008_000002.jpg ...
          SegmentationClassContext/2008_000002.png   0 = background, 1..59 = classes
          ImageSets/SegmentationContext/train.txt    4,998 ids
          ImageSets/SegmentationContext/val.txt      5,105 ids

    written by ``python -m diffusion_seg.data.prepare pascal_context`` from the Detail
    API's ``trainval_merged.json`` (or the per-image ``.mat`` labels).

    Args:
        classes: ``60`` keeps background as class 0 (mmsegmentation's "Context-60";
            DifNet's 59 + background); ``59`` ignores background (label 0 → 255) and
            shifts the rest to 0..58 ("Context-59").

    Root: ``$PASCAL_CONTEXT_ROOT`` or ``<data_dir>/pascal_context``.
    """

    EXPECTED_SIZES = {"train": 4998, "val": 5105}
    LAYOUT = """\
  VOCdevkit/VOC2010/
    JPEGImages/*.jpg
    SegmentationClassContext/*.png        (0 = background, 1..59 = classes)
    ImageSets/SegmentationContext/{train,val}.txt"""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        on_bad_sample: str = "error",
        classes: int = 60,
    ) -> None:
        if classes not in (59, 60):
            raise ValueError(
                f"dataset.dataset.classes={classes} is invalid; allowed: 60 (background is "
                "class 0), 59 (background ignored)"
            )
        root = Path(root)
        base = root / "VOCdevkit" / "VOC2010"
        prepare = (
            f"{PREPARE} pascal_context --voc {base} --json trainval_merged.json  (VOC: "
            "VOCtrainval_03-May-2010.tar; JSON: the PASCAL in Detail trainval_merged.json)"
        )
        list_path = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        samples = _listed_pairs(
            "Pascal Context", root, list_path, base / "JPEGImages",
            base / "SegmentationClassContext", self.LAYOUT, prepare, "PASCAL_CONTEXT_ROOT",
        )
        if classes == 60:
            names, label_map = CONTEXT_CLASSES, identity_label_map()
        else:
            names, label_map = CONTEXT_CLASSES[1:], reduce_zero_label_map()
        palette = voc_colormap(60)[60 - classes :]
        super().__init__(samples, names, palette, label_map, transform, on_bad_sample)


class PersonPart(SegmentationDataset):
    """PASCAL-Person-Part (Chen et al. 2014): 7 classes (background + 6 parts).

    Layout under ``root``::

        JPEGImages/2008_000003.jpg ...        VOC 2010 images
        SegmentationPart/2008_000003.png      palette PNG, indices 0..6
        train_id.txt                          1,716 ids
        val_id.txt                            1,817 ids

    written by ``python -m diffusion_seg.data.prepare person_part`` from the release's
    ``pascal_person_part_gt/`` and ``pascal_person_part_trainval_list/``. The label PNGs
    are palette images: the indices are read with PIL, never as OpenCV grayscale (that
    would give luminance of the colours). Root: ``$PERSON_PART_ROOT`` or
    ``<data_dir>/person_part``.
    """

    EXPECTED_SIZES = {"train": 1716, "val": 1817}
    LAYOUT = """\
  JPEGImages/*.jpg
  SegmentationPart/*.png                (palette PNGs, indices 0..6)
  {train,val}_id.txt"""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        on_bad_sample: str = "error",
    ) -> None:
        root = Path(root)
        prepare = (
            f"{PREPARE} person_part --release <pascal_person_part> --voc "
            f"<VOCdevkit/VOC2010> --out {root}"
        )
        samples = _listed_pairs(
            "Person-Part", root, root / f"{split}_id.txt", root / "JPEGImages",
            root / "SegmentationPart", self.LAYOUT, prepare, "PERSON_PART_ROOT",
        )
        super().__init__(
            samples, PERSON_PART_CLASSES, voc_colormap(7), identity_label_map(), transform,
            on_bad_sample,
        )


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


class FolderDataset(SegmentationDataset):
    """Your own data: a folder of images and masks, no code to write.

    Layout under ``root``::

        images/<name>.jpg        any of .jpg .jpeg .png .bmp .tif .tiff .webp
        masks/<name>.png         class indices (mode L or P), 255 = ignore;
                                 or RGB colours listed in classes.txt
        classes.txt              optional: one class per line, "name" or "name R G B";
                                 "ignore R G B" gives the colour of unlabelled pixels
        splits/train.txt         optional: names (file stems), one per line;
        splits/val.txt           any splits/<split>.txt is a split

    Without ``splits/``, ``val`` is a fixed pseudo-random ``val_fraction`` of the names
    (rounded up: those with the smallest crc32 of the name, the same on every machine)
    and ``train`` the rest; ``all`` is every pair. Without ``classes.txt``, give
    ``num_classes``.

    Args:
        classes_file: name of the classes file under ``root``.
        num_classes: number of classes when there is no classes file (names ``class_0``..).
        reduce_zero_label: masks store 0 = unlabelled and classes from 1: map 0 → ignore
            and v → v-1 (as ADE20K).
        val_fraction: share of the names in ``val`` when there is no ``splits/``.
    """

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
        layout = """\
  images/<name>.jpg|.png|...
  masks/<name>.png              (class indices, 255 = ignore; or colours from classes.txt)
  classes.txt                   (optional: "name" or "name R G B" per line)
  splits/{train,val}.txt        (optional: names, one per line)"""
        prepare = "nothing to run: put the files in place (README.md, 'Your own data')"
        for path in (root / "images", root / "masks"):
            _check_dir("Folder dataset", path, root, layout, prepare, None)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"dataset.dataset.val_fraction={val_fraction} must be in [0, 1)")

        self.colours, self.ignore_colour = None, None
        classes_path = root / classes_file
        if classes_path.is_file():
            names, self.colours, self.ignore_colour = parse_classes_file(classes_path)
            if num_classes is not None and num_classes != len(names):
                raise ValueError(
                    f"dataset.dataset.num_classes={num_classes} but {classes_path} lists "
                    f"{len(names)} classes; drop num_classes or fix the file"
                )
        elif num_classes is not None and num_classes >= 1:
            names = [f"class_{i}" for i in range(num_classes)]
        else:
            raise ValueError(
                f"Folder dataset: no classes file {classes_path} and dataset.dataset."
                "num_classes is not set; write the file (one class name per line) or set "
                "num_classes"
            )
        if len(names) > 255:
            raise ValueError(f"Folder dataset: {len(names)} classes; at most 255 fit a PNG mask")

        images = index_files(root / "images", IMAGE_EXTENSIONS)
        if not images:
            raise dataset_not_found(
                "Folder dataset", root / "images" / "<name>.jpg", root, layout, prepare
            )
        split_dir = root / "splits"
        if split_dir.is_dir():
            list_path = split_dir / f"{split}.txt"
            if not list_path.is_file():
                raise dataset_not_found("Folder dataset", list_path, root, layout, prepare)
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
        elif split == "all":
            stems = list(images)
        elif split in ("train", "val"):
            # The names with the smallest crc32 are val: the same on every run and machine,
            # and adding files moves only names at the boundary.
            ranked = sorted(images, key=lambda s: (zlib.crc32(s.encode()), s))
            n_val = math.ceil(val_fraction * len(ranked)) if len(ranked) > 1 else 0
            val = set(ranked[:n_val])
            stems = [s for s in images if (s in val) == (split == "val")]
        else:
            raise ValueError(
                f"Folder dataset has no split {split!r}: without {split_dir} the splits are "
                "train, val and all"
            )
        samples = [(images[s], root / "masks" / f"{s}.png") for s in stems]
        palette = self.colours if self.colours is not None else voc_colormap(len(names))
        label_map = reduce_zero_label_map() if reduce_zero_label else identity_label_map()
        super().__init__(samples, names, palette, label_map, transform, on_bad_sample)

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
