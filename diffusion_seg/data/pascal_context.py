"""Pascal Context on VOC 2010 images: 59 classes + background (60), or 59 with background ignored."""

from __future__ import annotations

from pathlib import Path

from diffusion_seg.data.base import (
    PREPARE,
    SegmentationDataset,
    Transform,
    identity_label_map,
    listed_pairs,
    reduce_zero_label_map,
    voc_colormap,
)

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


class PascalContext(SegmentationDataset):
    """Pascal Context: 59 classes + background, on VOC 2010 images.

    Layout under ``root``::

        VOCdevkit/VOC2010/
          JPEGImages/2008_000002.jpg ...
          SegmentationClassContext/2008_000002.png   0 = background, 1..59 = classes
          ImageSets/SegmentationContext/train.txt    4,998 ids
          ImageSets/SegmentationContext/val.txt      5,105 ids

    written by ``python -m diffusion_seg.prepare pascal_context`` from the Detail
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
                f"dataset.classes={classes} is invalid; allowed: 60 (background is "
                "class 0), 59 (background ignored)"
            )
        root = Path(root)
        base = root / "VOCdevkit" / "VOC2010"
        prepare = (
            f"{PREPARE} pascal_context --voc {base} --json trainval_merged.json  (VOC: "
            "VOCtrainval_03-May-2010.tar; JSON: the PASCAL in Detail trainval_merged.json)"
        )
        list_path = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        samples = listed_pairs(
            "Pascal Context", root, list_path, base / "JPEGImages",
            base / "SegmentationClassContext", self.LAYOUT, prepare, "PASCAL_CONTEXT_ROOT",
        )
        if classes == 60:
            names, label_map = CONTEXT_CLASSES, identity_label_map()
        else:
            names, label_map = CONTEXT_CLASSES[1:], reduce_zero_label_map()
        palette = voc_colormap(60)[60 - classes :]
        super().__init__(samples, names, palette, label_map, transform, on_bad_sample)
