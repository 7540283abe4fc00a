"""ADE20K SceneParsing (MIT Scene Parsing Benchmark), 150 classes."""

from __future__ import annotations

from pathlib import Path

from diffusion_seg.data.base import (
    PREPARE,
    SegmentationDataset,
    Transform,
    check_dir,
    index_files,
    reduce_zero_label_map,
    voc_colormap,
)

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
            check_dir("ADE20K", d, root, self.LAYOUT, prepare, "ADE20K_ROOT")
        images = index_files(image_dir, (".jpg",))
        samples = [(path, mask_dir / f"{stem}.png") for stem, path in images.items()]
        super().__init__(
            samples, ADE20K_CLASSES, voc_colormap(150), reduce_zero_label_map(), transform,
            on_bad_sample,
        )
