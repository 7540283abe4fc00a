"""Convert the public releases into the layouts the datasets read (README.md, section Datasets).

The converters, as plain functions; the command is ``python -m diffusion_seg.prepare``
(:mod:`diffusion_seg.cli.prepare`)::

    python -m diffusion_seg.prepare voc_aug --voc VOCdevkit/VOC2012 \\
        --sbd benchmark_RELEASE/dataset
    python -m diffusion_seg.prepare pascal_context --voc VOCdevkit/VOC2010 \\
        --json trainval_merged.json            # or: --mat-dir trainval/  (per-image .mat)
    python -m diffusion_seg.prepare person_part --release pascal_person_part \\
        --voc VOCdevkit/VOC2010 --out data/person_part
    python -m diffusion_seg.prepare ade20k --zip ADEChallengeData2016.zip --out data/ade20k

Every converter checks what it reads (label values, sizes, the split sizes of the full
release) and stops with one message listing every problem; ``--allow-partial`` accepts a
partial tree (split sizes that differ from the release, ids without files), never a
corrupt file. Labels are written as palette PNGs holding class indices.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io import loadmat
from scipy.io.matlab import MatReadError

from diffusion_seg.data.base import BadSampleError, read_mask, read_split_list, save_label_png
from diffusion_seg.data.ade20k import ADE20K
from diffusion_seg.data.pascal_context import CONTEXT_59, PascalContext
from diffusion_seg.data.person_part import PersonPart
from diffusion_seg.data.voc import VOCAug
from diffusion_seg.data.transforms import IGNORE_INDEX
from diffusion_seg.errors import UserError


class PrepareError(UserError, RuntimeError):
    """The input is not what the converter needs; the message lists every problem."""


def _fail(problems: Sequence[str], headline: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise PrepareError(f"{headline} ({len(problems)} problem(s)):\n  {shown}{more}")


def _map(fn: Callable[[Any], str | None], items: Sequence[Any], workers: int) -> list[str]:
    """Run ``fn`` over ``items`` (in processes when ``workers > 1``); the problems it
    returned."""
    if workers <= 1 or len(items) < 2 * workers:
        results: Iterable[str | None] = map(fn, items)
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(fn, items, chunksize=32))
    return [r for r in results if r]


def _read_list(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise PrepareError(f"{what} {path} not found: is this the right directory?")
    return read_split_list(path)


def _check_size(name: str, ids: Sequence[str], expected: int, allow_partial: bool) -> None:
    if len(ids) != expected and not allow_partial:
        raise PrepareError(
            f"{name} has {len(ids)} ids; the full release gives {expected:,}. The input is "
            "incomplete or another version; pass --allow-partial to convert it anyway."
        )


def _split_missing(
    ids: Sequence[str], paths: Callable[[str], Sequence[Path]], allow_partial: bool, what: str
) -> tuple[list[str], list[str]]:
    """Ids whose files all exist, and a problem line for each id that misses one (fatal
    unless ``allow_partial``, then the id is dropped)."""
    kept, problems = [], []
    for i in ids:
        missing = [p for p in paths(i) if not p.exists()]
        if missing:
            problems.append(f"{what} {i}: missing {', '.join(map(str, missing))}")
        else:
            kept.append(i)
    if problems and allow_partial:
        print(f"warning: dropping {len(problems)} {what} id(s) with missing files, e.g. "
              f"{problems[0]}", file=sys.stderr)
        problems = []
    return kept, problems


def _validated(label: np.ndarray, source: Path, num_classes: int) -> np.ndarray | str:
    """The label as uint8, or a problem naming the file and the values outside
    ``[0, num_classes) ∪ {255}``."""
    label = np.asarray(label)
    if label.ndim != 2:
        return f"{source}: label has shape {label.shape}, expected H×W"
    bad = np.unique(label[((label < 0) | (label >= num_classes)) & (label != IGNORE_INDEX)])
    if bad.size:
        return (
            f"{source}: label values {bad[:10].tolist()} outside 0..{num_classes - 1} and "
            f"{IGNORE_INDEX}"
        )
    return label.astype(np.uint8)


def _write_list(path: Path, ids: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


# ---------------------------------------------------------------------------------------
# VOC 2012 + SBD


def read_sbd_mat(path: Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/*.mat`` file (class indices 0..20)."""
    mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    return np.asarray(mat["GTcls"].Segmentation)


def _convert_sbd(item: tuple[Path, Path]) -> str | None:
    source, target = item
    try:
        label = read_sbd_mat(source)
    except (OSError, ValueError, KeyError, AttributeError, TypeError, MatReadError) as err:
        return f"{source}: cannot read GTcls.Segmentation ({type(err).__name__}: {err})"
    label = _validated(label, source, 21)
    if isinstance(label, str):
        return label
    save_label_png(target, label)
    return None


def _copy_label(item: tuple[Path, Path], num_classes: int) -> str | None:
    """A label PNG re-written as a palette PNG of its indices, values checked."""
    source, target = item
    try:
        label = _validated(read_mask(source), source, num_classes)
    except BadSampleError as err:
        return str(err)
    if isinstance(label, str):
        return label
    save_label_png(target, label)
    return None


def prepare_voc_aug(
    voc: Path, sbd: Path, allow_partial: bool = False, workers: int = 1
) -> dict[str, int]:
    """SBD ``cls/*.mat`` + VOC ``SegmentationClass/*.png`` → ``SegmentationClassAug/*.png``
    and ``ImageSets/Segmentation/trainaug.txt`` inside ``voc`` (``VOCdevkit/VOC2012``).

    trainaug = (VOC train ∪ SBD train ∪ SBD val) − VOC val: 10,582 ids on the full
    releases. For ids labelled by both, VOC's PNG wins: it is finer and carries the 255
    boundary band, and VOC val must be scored on VOC's own labels."""
    sets = voc / "ImageSets" / "Segmentation"
    voc_train = _read_list(sets / "train.txt", "VOC 2012 split list")
    voc_val = _read_list(sets / "val.txt", "VOC 2012 split list")
    sbd_train = _read_list(sbd / "train.txt", "SBD split list")
    sbd_val = _read_list(sbd / "val.txt", "SBD split list")
    trainaug = sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))
    _check_size("trainaug = (VOC train ∪ SBD train ∪ SBD val) − VOC val", trainaug,
                VOCAug.EXPECTED_SIZES["trainaug"], allow_partial)
    _check_size("VOC val", voc_val, VOCAug.EXPECTED_SIZES["val"], allow_partial)

    out = voc / "SegmentationClassAug"
    sbd_ids = sorted(set(sbd_train) | set(sbd_val))
    sbd_ids, missing_sbd = _split_missing(
        sbd_ids, lambda i: [sbd / "cls" / f"{i}.mat"], allow_partial, "SBD"
    )
    voc_ids = sorted(set(voc_train) | set(voc_val))
    voc_ids, missing_voc = _split_missing(
        voc_ids, lambda i: [voc / "SegmentationClass" / f"{i}.png"], allow_partial, "VOC"
    )
    _fail(missing_sbd + missing_voc, "voc_aug: label files missing")
    print(f"voc_aug: converting {len(sbd_ids)} SBD .mat labels into {out}")
    problems = _map(_convert_sbd, [(sbd / "cls" / f"{i}.mat", out / f"{i}.png") for i in sbd_ids],
                    workers)
    _fail(problems, "voc_aug: bad SBD labels")
    # VOC second: it overwrites SBD's label for the ids both annotate.
    print(f"voc_aug: copying {len(voc_ids)} VOC labels into {out}")
    items = [(voc / "SegmentationClass" / f"{i}.png", out / f"{i}.png") for i in voc_ids]
    _fail(_map(partial(_copy_label, num_classes=21), items, workers), "voc_aug: bad VOC labels")

    def files(i: str) -> list[Path]:
        return [voc / "JPEGImages" / f"{i}.jpg", out / f"{i}.png"]

    trainaug, missing_train = _split_missing(trainaug, files, allow_partial, "trainaug")
    voc_val, missing_val = _split_missing(voc_val, files, allow_partial, "val")
    _fail(missing_train + missing_val, "voc_aug: images or labels missing")
    _write_list(sets / "trainaug.txt", trainaug)
    summary = {"trainaug": len(trainaug), "val": len(voc_val), "labels": len(set(sbd_ids) | set(voc_ids))}
    print(f"voc_aug: wrote {sets / 'trainaug.txt'}: {summary}")
    return summary


# ---------------------------------------------------------------------------------------
# Pascal Context


def _context_lut(max_id: int) -> np.ndarray:
    """Full label id (0..459) → 0 (background and every class outside the 59) or 1..59."""
    lut = np.zeros(max(max_id, 459) + 1, dtype=np.uint8)
    for train_id, (full_id, _) in enumerate(CONTEXT_59, start=1):
        lut[full_id] = train_id
    return lut


def rle_decode(rle: dict) -> np.ndarray:
    """COCO run-length encoding (``{"size": [h, w], "counts": str | list}``, compressed or
    not, as the Detail JSON stores segmentations) → ``h×w`` uint8 0/1, decoded by
    pycocotools, the format's reference implementation (``pip install -e .[prepare]``)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise PrepareError(
            "pascal_context --json needs pycocotools to decode the Detail masks: "
            "pip install -e '.[prepare]' (or pip install pycocotools)"
        ) from None
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed runs → pycocotools' compressed form
        if any(c < 0 for c in counts) or sum(counts) != h * w:
            raise ValueError(f"RLE runs sum to {sum(counts)}, not {h}×{w} = {h * w}")
        encoded = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        encoded = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(encoded)


def _convert_detail_image(item: tuple[dict, list[tuple[int, dict]], Path]) -> str | None:
    """One image of the Detail JSON: paint its annotations in file order (a later one wins
    where two overlap, as ``Detail.getMask``), then map the full ids to 0..59."""
    image, annotations, target = item
    h, w = int(image["height"]), int(image["width"])
    full = np.zeros((h, w), dtype=np.int32)
    for category_id, rle in annotations:
        try:
            mask = rle_decode(rle)
        except (ValueError, KeyError, TypeError, IndexError) as err:
            return f"{image['file_name']}: bad segmentation of category {category_id}: {err}"
        if mask.shape != (h, w):
            return (
                f"{image['file_name']}: segmentation is {mask.shape[1]}×{mask.shape[0]} but "
                f"the image is {w}×{h}"
            )
        full[mask.astype(bool)] = category_id
    save_label_png(target, _context_lut(int(full.max()))[full])
    return None


def _convert_context_mat(item: tuple[Path, Path]) -> str | None:
    source, target = item
    try:
        full = np.asarray(loadmat(str(source))["LabelMap"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError, MatReadError) as err:
        return f"{source}: cannot read LabelMap ({type(err).__name__}: {err})"
    if full.ndim != 2 or full.min(initial=0) < 0:
        return f"{source}: LabelMap has shape {full.shape} / negative values"
    save_label_png(target, _context_lut(int(full.max(initial=0)))[full])
    return None


def prepare_pascal_context(
    voc: Path,
    json_path: Path | None = None,
    mat_dir: Path | None = None,
    allow_partial: bool = False,
    workers: int = 1,
) -> dict[str, int]:
    """Detail API ``trainval_merged.json`` (or per-image ``.mat`` LabelMaps) →
    ``SegmentationClassContext/*.png`` (0 = background, 1..59) and
    ``ImageSets/SegmentationContext/{train,val}.txt`` inside ``voc`` (VOCdevkit/VOC2010).

    Classes outside the 59 become background, as in the benchmark's definition. Splits:
    the JSON's ``phase`` field; for ``.mat`` labels, VOC 2010's ``ImageSets/Main`` lists
    (the same 4,998 / 5,105 images)."""
    if (json_path is None) == (mat_dir is None):
        raise PrepareError("pascal_context: give exactly one of --json and --mat-dir")
    out = voc / "SegmentationClassContext"
    splits: dict[str, list[str]] = {"train": [], "val": []}
    if json_path is not None:
        if not json_path.is_file():
            raise PrepareError(f"pascal_context: {json_path} not found")
        with open(json_path) as f:
            data = json.load(f)
        missing_keys = [k for k in ("images", "annos_segmentation") if k not in data]
        if missing_keys:
            raise PrepareError(
                f"{json_path} is not a PASCAL in Detail annotation file (no {missing_keys})"
            )
        by_image: dict[int, list[tuple[int, dict]]] = defaultdict(list)
        for ann in data["annos_segmentation"]:
            by_image[ann["image_id"]].append((int(ann["category_id"]), ann["segmentation"]))
        images = {}
        for image in data["images"]:
            if image.get("phase") in splits:
                stem = Path(image["file_name"]).stem
                splits[image["phase"]].append(stem)
                images[stem] = image
        tasks = {
            stem: (image, by_image.get(image["image_id"], []), out / f"{stem}.png")
            for stem, image in images.items()
        }
        convert: Callable[[Any], str | None] = _convert_detail_image

        def sources(stem: str) -> list[Path]:
            return [voc / "JPEGImages" / images[stem]["file_name"]]

    else:
        for split in splits:
            splits[split] = _read_list(voc / "ImageSets" / "Main" / f"{split}.txt", "VOC 2010 list")
        tasks = {
            i: (mat_dir / f"{i}.mat", out / f"{i}.png") for ids in splits.values() for i in ids
        }
        convert = _convert_context_mat

        def sources(stem: str) -> list[Path]:
            return [voc / "JPEGImages" / f"{stem}.jpg", mat_dir / f"{stem}.mat"]

    for split, ids in splits.items():
        splits[split] = sorted(ids)
        _check_size(f"Pascal Context {split}", ids, PascalContext.EXPECTED_SIZES[split],
                    allow_partial)
    problems = []
    for split in splits:
        splits[split], missing = _split_missing(splits[split], sources, allow_partial, split)
        problems += missing
    _fail(problems, "pascal_context: images or labels missing")
    keep = [i for ids in splits.values() for i in ids]
    print(f"pascal_context: writing {len(keep)} labels into {out}")
    _fail(_map(convert, [tasks[i] for i in keep], workers), "pascal_context: bad labels")
    for split, ids in splits.items():
        _write_list(voc / "ImageSets" / "SegmentationContext" / f"{split}.txt", ids)
    summary = {split: len(ids) for split, ids in splits.items()}
    print(f"pascal_context: done: {summary}")
    return summary


# ---------------------------------------------------------------------------------------
# PASCAL-Person-Part


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    try:
        os.link(source, target)  # no extra disk space when on the same file system
    except OSError:
        shutil.copy2(source, target)


def prepare_person_part(
    release: Path, voc: Path, out: Path, allow_partial: bool = False, workers: int = 1
) -> dict[str, int]:
    """The release's ``pascal_person_part_gt/*.png`` and ``pascal_person_part_trainval_list``
    (``{train,val}_id.txt``, or DeepLab's ``{train,val}.txt`` pairs) + VOC 2010
    ``JPEGImages`` → ``out/{JPEGImages,SegmentationPart,train_id.txt,val_id.txt}``.
    Images are hard-linked (copied across file systems)."""
    gt = release / "pascal_person_part_gt"
    lists = release / "pascal_person_part_trainval_list"
    if not gt.is_dir():
        raise PrepareError(f"person_part: {gt} not found: --release is the unpacked "
                           "pascal_person_part directory")
    splits = {}
    for split in ("train", "val"):
        ids_file, pairs_file = lists / f"{split}_id.txt", lists / f"{split}.txt"
        path = ids_file if ids_file.is_file() else pairs_file
        splits[split] = sorted(dict.fromkeys(_read_list(path, "Person-Part split list")))
        _check_size(f"Person-Part {split}", splits[split], PersonPart.EXPECTED_SIZES[split],
                    allow_partial)
    problems = []
    for split in splits:
        splits[split], missing = _split_missing(
            splits[split], lambda i: [voc / "JPEGImages" / f"{i}.jpg", gt / f"{i}.png"],
            allow_partial, split,
        )
        problems += missing
    _fail(problems, "person_part: images or labels missing")
    ids = sorted({i for s in splits.values() for i in s})
    print(f"person_part: writing {len(ids)} labels and images into {out}")
    items = [(gt / f"{i}.png", out / "SegmentationPart" / f"{i}.png") for i in ids]
    _fail(_map(partial(_copy_label, num_classes=7), items, workers), "person_part: bad labels")
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for i in ids:
        _link_or_copy(voc / "JPEGImages" / f"{i}.jpg", out / "JPEGImages" / f"{i}.jpg")
    for split, split_ids in splits.items():
        _write_list(out / f"{split}_id.txt", split_ids)
    summary = {split: len(s) for split, s in splits.items()}
    print(f"person_part: done: {summary}")
    return summary


# ---------------------------------------------------------------------------------------
# ADE20K


def prepare_ade20k(zip_path: Path, out: Path, allow_partial: bool = False) -> dict[str, int]:
    """Unpack ``ADEChallengeData2016.zip`` into ``out`` (no conversion: the release is
    the layout) and check that every image has its annotation."""
    if not zip_path.is_file():
        raise PrepareError(f"ade20k: {zip_path} not found")
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        if not any(n.startswith("ADEChallengeData2016/") for n in names):
            raise PrepareError(f"{zip_path} does not hold ADEChallengeData2016/")
        print(f"ade20k: extracting {len(names)} entries into {out}")
        archive.extractall(out)  # extractall drops absolute paths and '..'
    summary = {}
    problems = []
    for split in ADE20K.SPLITS:
        try:
            dataset = ADE20K(out, split, on_bad_sample="skip")
        except FileNotFoundError as err:
            raise PrepareError(str(err)) from None
        problems += [f"missing {p}" for p in dataset.missing]
        summary[split] = len(dataset)
        _check_size(f"ADE20K {split}", dataset.samples, ADE20K.EXPECTED_SIZES[split],
                    allow_partial)
    if not allow_partial:
        _fail(problems, "ade20k: annotations missing")
    print(f"ade20k: done: {summary}")
    return summary
