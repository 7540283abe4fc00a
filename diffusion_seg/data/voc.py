"""PASCAL VOC 2012 with the SBD augmented annotations ("VOC aug"), 21 classes."""

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

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


class VOCAug(SegmentationDataset):
    """PASCAL VOC 2012 with the SBD augmented annotations: 21 classes.

    Layout under ``root``::

        VOCdevkit/VOC2012/
          JPEGImages/2007_000032.jpg ...
          SegmentationClassAug/2007_000032.png   class indices 0..20, 255 = boundary/ignore
          ImageSets/Segmentation/trainaug.txt    10,582 ids
          ImageSets/Segmentation/val.txt         1,449 ids (also train.txt, trainval.txt)

    ``SegmentationClassAug`` and ``trainaug.txt`` are written by
    ``python -m diffusion_seg.prepare voc_aug`` from the SBD ``cls/*.mat`` files and
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
        samples = listed_pairs(
            "VOC aug", root, list_path, base / "JPEGImages", base / "SegmentationClassAug",
            self.LAYOUT, prepare, "VOC_ROOT",
        )
        super().__init__(
            samples, VOC_CLASSES, voc_colormap(21), identity_label_map(), transform,
            on_bad_sample,
        )
