"""PASCAL-Person-Part (Chen et al. 2014): background + 6 body parts on VOC 2010 images."""

from __future__ import annotations

from pathlib import Path

from diffusion_seg.data.base import (
    PREPARE,
    SegmentationDataset,
    Transform,
    identity_label_map,
    listed_pairs,
    voc_colormap,
)

PERSON_PART_CLASSES = (
    "background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs",
)  # fmt: skip


class PersonPart(SegmentationDataset):
    """PASCAL-Person-Part (Chen et al. 2014): 7 classes (background + 6 parts).

    Layout under ``root``::

        JPEGImages/2008_000003.jpg ...        VOC 2010 images
        SegmentationPart/2008_000003.png      palette PNG, indices 0..6
        train_id.txt                          1,716 ids
        val_id.txt                            1,817 ids

    written by ``python -m diffusion_seg.prepare person_part`` from the release's
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
        samples = listed_pairs(
            "Person-Part", root, root / f"{split}_id.txt", root / "JPEGImages",
            root / "SegmentationPart", self.LAYOUT, prepare, "PERSON_PART_ROOT",
        )
        super().__init__(
            samples, PERSON_PART_CLASSES, voc_colormap(7), identity_label_map(), transform,
            on_bad_sample,
        )
