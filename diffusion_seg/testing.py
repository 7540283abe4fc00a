"""Small generated dataset trees in the exact on-disk layout of each public release.

No dataset can be downloaded where the tests and benchmarks run, so they build these:
the same loaders and converters then run unchanged on the real data. Every builder
returns the label arrays it wrote (as the dataset must read them back) so tests compare
pixel by pixel. Images are smooth random colour fields (JPEG-compressible like photos,
so decode timings are realistic), labels a few rectangles and disks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy.io import savemat

from diffusion_seg.data.base import save_label_png, voc_colormap


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random ``H×W×3`` uint8 image (low-frequency colour field + fine noise)."""
    coarse = rng.integers(0, 256, size=(max(2, height // 32), max(2, width // 32), 3))
    image = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def label_map(
    rng: np.random.Generator, width: int, height: int, values: Sequence[int], shapes: int = 4
) -> np.ndarray:
    """``H×W`` labels: the first value as background, then ``shapes`` rectangles / disks
    of values drawn from ``values``."""
    label = np.full((height, width), values[0], dtype=np.int64)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(shapes):
        value = values[int(rng.integers(len(values)))]
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        ry, rx = int(rng.integers(2, max(3, height // 3))), int(rng.integers(2, max(3, width // 3)))
        if rng.random() < 0.5:
            inside = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        else:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        label[inside] = value
    return label


def write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=90)


def write_gray_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(path)  # mode L, as ADE20K's annotations


def write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _size(rng: np.random.Generator, size: tuple[int, int], jitter: bool) -> tuple[int, int]:
    if not jitter:
        return size
    return size[0] + int(rng.integers(-4, 5)), size[1] + int(rng.integers(-4, 5))


# ---------------------------------------------------------------------------------------
# Prepared layouts (what the datasets read)


def make_ade20k(
    root: Path, counts: dict[str, int] | None = None, size=(48, 36), seed=0, jitter=True
) -> dict[str, dict[str, np.ndarray]]:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}``; raw labels
    0..150 (0 = other). Returns the raw labels by split and id."""
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, n in (counts or {"train": 4, "val": 2}).items():
        folder, prefix = {"train": ("training", "train"), "val": ("validation", "val")}[split]
        out[split] = {}
        for k in range(1, n + 1):
            name = f"ADE_{prefix}_{k:08d}"
            w, h = _size(rng, size, jitter)
            raw = label_map(rng, w, h, [0, 1, 2, 13, 150, int(rng.integers(1, 151))])
            write_jpeg(base / "images" / folder / f"{name}.jpg", photo(rng, w, h))
            write_gray_png(base / "annotations" / folder / f"{name}.png", raw)
            out[split][name] = raw
    return out


def _voc_ids(rng: np.random.Generator, n: int, year_from: int = 2007) -> list[str]:
    ids = {f"{int(rng.integers(year_from, 2012))}_{int(rng.integers(0, 999999)):06d}"
           for _ in range(3 * n)}
    return sorted(ids)[:n]


def _voc_label(rng: np.random.Generator, w: int, h: int, classes: int, border: bool) -> np.ndarray:
    label = label_map(rng, w, h, [0] + list(rng.integers(1, classes, size=3)))
    if border:  # VOC's 255 band around objects
        edges = np.zeros_like(label, dtype=bool)
        edges[:, 1:] |= label[:, 1:] != label[:, :-1]
        edges[1:, :] |= label[1:, :] != label[:-1, :]
        label[edges] = 255
    return label


def _make_listed_tree(
    rng: np.random.Generator,
    ids: list[str],
    counts: dict[str, int],
    image_dir: Path,
    mask_dir: Path,
    list_path: Callable[[str], Path],
    make_label: Callable[[int, int], np.ndarray],
    size: tuple[int, int],
    jitter: bool,
) -> dict[str, dict[str, np.ndarray]]:
    """JPEGs in ``image_dir``, palette label PNGs in ``mask_dir`` and one id list per split
    (``counts`` ids each, taken in order from ``ids``); returns ``{split: {id: label}}``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, n in counts.items():
        out[split] = {}
        for i in ids[:n]:
            w, h = _size(rng, size, jitter)
            write_jpeg(image_dir / f"{i}.jpg", photo(rng, w, h))
            out[split][i] = make_label(w, h)
            save_label_png(mask_dir / f"{i}.png", out[split][i])
        ids = ids[n:]
        write_lines(list_path(split), list(out[split]))
    return out


def make_voc_aug(
    root: Path, counts: dict[str, int] | None = None, size=(50, 38), seed=0, jitter=True
) -> dict[str, dict[str, np.ndarray]]:
    """Prepared ``VOCdevkit/VOC2012`` with ``SegmentationClassAug`` and split lists."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2012"
    counts = counts or {"trainaug": 4, "val": 2}
    return _make_listed_tree(
        rng, _voc_ids(rng, sum(counts.values())), counts,
        base / "JPEGImages", base / "SegmentationClassAug",
        lambda split: base / "ImageSets" / "Segmentation" / f"{split}.txt",
        lambda w, h: _voc_label(rng, w, h, 21, border=True),
        size, jitter,
    )


def make_pascal_context(
    root: Path, counts: dict[str, int] | None = None, size=(50, 38), seed=0, jitter=True
) -> dict[str, dict[str, np.ndarray]]:
    """Prepared ``VOCdevkit/VOC2010`` with ``SegmentationClassContext`` (0..59)."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2010"
    counts = counts or {"train": 4, "val": 2}
    return _make_listed_tree(
        rng, _voc_ids(rng, sum(counts.values()), 2008), counts,
        base / "JPEGImages", base / "SegmentationClassContext",
        lambda split: base / "ImageSets" / "SegmentationContext" / f"{split}.txt",
        lambda w, h: label_map(rng, w, h, [0, 59] + list(rng.integers(1, 60, size=3))),
        size, jitter,
    )


def make_person_part(
    root: Path, counts: dict[str, int] | None = None, size=(50, 38), seed=0, jitter=True
) -> dict[str, dict[str, np.ndarray]]:
    """Prepared ``JPEGImages/``, ``SegmentationPart/`` (palette PNGs), ``{split}_id.txt``."""
    rng = np.random.default_rng(seed)
    counts = counts or {"train": 4, "val": 2}
    return _make_listed_tree(
        rng, _voc_ids(rng, sum(counts.values()), 2008), counts,
        root / "JPEGImages", root / "SegmentationPart",
        lambda split: root / f"{split}_id.txt",
        lambda w, h: label_map(rng, w, h, list(range(7))),
        size, jitter,
    )


def make_folder(
    root: Path,
    n: int = 6,
    classes: Sequence[str] = ("background", "road", "car"),
    colours: np.ndarray | None = None,
    splits: dict[str, int] | None = None,
    size=(40, 30),
    seed=0,
    per_split: bool = False,
) -> dict[str, np.ndarray]:
    """``images/*.jpg`` + ``masks/*.png`` + ``classes.txt`` (+ ``splits/`` if ``splits``).
    With ``colours`` the masks are RGB colour images and classes.txt lists the colours.
    ``per_split``: ``images/<split>/`` + ``masks/<split>/`` folders instead (``splits`` gives
    the counts), as exported datasets are laid out."""
    rng = np.random.default_rng(seed)
    out = {}
    folders = [s for s, count in (splits or {}).items() for _ in range(count)] if per_split else []
    for k in range(len(folders) or n):
        name = f"img_{k:03d}"
        sub = folders[k] if per_split else ""
        write_jpeg(root / "images" / sub / f"{name}.jpg", photo(rng, *size))
        label = label_map(rng, *size, list(range(len(classes))))
        if colours is None:
            write_gray_png(root / "masks" / sub / f"{name}.png", label)
        else:
            (root / "masks" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(colours[label].astype(np.uint8)).save(root / "masks" / sub / f"{name}.png")
        out[name] = label
    lines = [
        name if colours is None else f"{name} {' '.join(str(int(v)) for v in colours[k])}"
        for k, name in enumerate(classes)
    ]
    write_lines(root / "classes.txt", lines)
    if splits and not per_split:
        names = list(out)
        for split, count in splits.items():
            write_lines(root / "splits" / f"{split}.txt", names[:count])
            names = names[count:]
    return out


# ---------------------------------------------------------------------------------------
# Release formats (what the converters read)


def rle_encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a binary ``H×W`` mask, encoded by pycocotools (the format's
    reference implementation), as the Detail JSON stores it (counts as a string)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_sbd_mat(path: Path, label: np.ndarray) -> None:
    """An SBD ``cls/<id>.mat``: struct ``GTcls`` with ``Segmentation`` (uint8 indices),
    ``Boundaries`` and ``CategoriesPresent``, as in benchmark_RELEASE."""
    present = np.unique(label[(label > 0) & (label < 255)]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros(label.shape, dtype=bool)
    savemat(
        str(path),
        {"GTcls": {"Segmentation": label.astype(np.uint8), "Boundaries": boundaries,
                   "CategoriesPresent": present.reshape(-1, 1)}},
    )


def make_voc2012_sbd_release(
    root: Path, voc_train=3, voc_val=2, sbd_train=3, sbd_val=2, overlap=2, size=(50, 38), seed=0
) -> dict:
    """``root/VOCdevkit/VOC2012`` (JPEGImages, SegmentationClass, ImageSets/Segmentation)
    and ``root/benchmark_RELEASE/dataset`` (cls/*.mat, train.txt, val.txt). SBD's lists
    share ``overlap`` ids with VOC train and one id with VOC val (as the real ones do).
    Returns the lists and each id's label ({"voc": {...}, "sbd": {...}})."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    ids = _voc_ids(rng, voc_train + voc_val + sbd_train + sbd_val)
    lists = {
        "voc_train": ids[:voc_train],
        "voc_val": ids[voc_train : voc_train + voc_val],
    }
    rest = ids[voc_train + voc_val :]
    lists["sbd_train"] = rest[:sbd_train] + lists["voc_train"][:overlap]
    lists["sbd_val"] = rest[sbd_train:] + lists["voc_val"][:1]
    labels: dict[str, dict[str, np.ndarray]] = {"voc": {}, "sbd": {}}
    shapes = {}
    for i in ids:
        w, h = size[0] + int(rng.integers(-4, 5)), size[1] + int(rng.integers(-4, 5))
        shapes[i] = (w, h)
        write_jpeg(voc / "JPEGImages" / f"{i}.jpg", photo(rng, w, h))
    for i in lists["voc_train"] + lists["voc_val"]:
        labels["voc"][i] = _voc_label(rng, *shapes[i], 21, border=True)
        save_label_png(voc / "SegmentationClass" / f"{i}.png", labels["voc"][i])
    for i in lists["sbd_train"] + lists["sbd_val"]:
        labels["sbd"][i] = _voc_label(rng, *shapes[i], 21, border=False)
        write_sbd_mat(sbd / "cls" / f"{i}.mat", labels["sbd"][i])
    sets = voc / "ImageSets" / "Segmentation"
    write_lines(sets / "train.txt", lists["voc_train"])
    write_lines(sets / "val.txt", lists["voc_val"])
    write_lines(sets / "trainval.txt", lists["voc_train"] + lists["voc_val"])
    write_lines(sbd / "train.txt", lists["sbd_train"])
    write_lines(sbd / "val.txt", lists["sbd_val"])
    return {"voc": voc, "sbd": sbd, "lists": lists, "labels": labels}


def make_context_release(
    root: Path, train=3, val=2, size=(50, 38), seed=0
) -> dict:
    """``root/VOCdevkit/VOC2010`` (JPEGImages, ImageSets/Main/{train,val}.txt), the Detail
    ``trainval_merged.json`` and per-image ``trainval/<id>.mat`` (``LabelMap``, uint16 ids
    of the full 459-class list). Each image gets one annotation per class present, plus
    an overlapping later annotation (later wins), and classes outside the 59.

    Returns paths, the full-id label maps and the expected 0..59 labels."""
    from diffusion_seg.data.pascal_context import CONTEXT_59

    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2010"
    ids = _voc_ids(rng, train + val, 2008)
    phases = {i: "train" for i in ids[:train]} | {i: "val" for i in ids[train:]}
    full_ids = [full for full, _ in CONTEXT_59]
    lut = {full: k for k, full in enumerate(full_ids, 1)}
    images, annotations, full_labels, expected = [], [], {}, {}
    for n, i in enumerate(ids):
        w, h = size[0] + int(rng.integers(-4, 5)), size[1] + int(rng.integers(-4, 5))
        write_jpeg(voc / "JPEGImages" / f"{i}.jpg", photo(rng, w, h))
        # 0 = unlabelled, 1 and 3 are outside the 59, the rest inside.
        values = [0, 1, 3] + [full_ids[int(k)] for k in rng.integers(0, 59, size=3)]
        full = label_map(rng, w, h, values, shapes=5)
        image_id = int(i.replace("_", ""))
        images.append({"image_id": image_id, "file_name": f"{i}.jpg", "height": h, "width": w,
                       "phase": phases[i], "annotations": [], "categories": []})
        for category in sorted(set(np.unique(full).tolist()) - {0}):
            annotations.append(_detail_annotation(len(annotations) + 1, image_id, category,
                                                  full == category))
        # A later annotation overlapping the others: Detail.getMask paints it on top.
        top = np.zeros_like(full, dtype=bool)
        top[: h // 3, : w // 2] = True
        annotations.append(_detail_annotation(len(annotations) + 1, image_id, full_ids[n], top))
        full[top] = full_ids[n]
        full_labels[i] = full
        expected[i] = np.vectorize(lambda v: lut.get(int(v), 0))(full).astype(np.uint8)
        (root / "trainval").mkdir(parents=True, exist_ok=True)
        savemat(str(root / "trainval" / f"{i}.mat"), {"LabelMap": full.astype(np.uint16)})
    categories = [{"category_id": full, "name": name, "supercategory": "object",
                   "onlysemantic": 0, "parts": []} for full, name in CONTEXT_59]
    categories += [{"category_id": 1, "name": "accordion", "supercategory": "object",
                    "onlysemantic": 0, "parts": []},
                   {"category_id": 3, "name": "air conditioner", "supercategory": "object",
                    "onlysemantic": 0, "parts": []}]
    data = {"info": {"description": "PASCAL in Detail (generated fixture)"}, "images": images,
            "annos_segmentation": annotations, "annos_occlusion": [],
            "categories": categories, "parts": []}
    json_path = root / "trainval_merged.json"
    json_path.write_text(json.dumps(data))
    write_lines(voc / "ImageSets" / "Main" / "train.txt", ids[:train])
    write_lines(voc / "ImageSets" / "Main" / "val.txt", ids[train:])
    return {"voc": voc, "json": json_path, "mat_dir": root / "trainval", "ids": ids,
            "phases": phases, "full": full_labels, "expected": expected}


def _detail_annotation(ann_id: int, image_id: int, category: int, mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
    return {"id": ann_id, "image_id": image_id, "category_id": int(category),
            "segmentation": rle_encode(mask), "area": int(mask.sum()), "bbox": bbox,
            "iscrowd": 0, "parts": []}


def make_person_part_release(
    root: Path, train=3, val=2, size=(50, 38), seed=0, id_lists=True
) -> dict:
    """``root/pascal_person_part/{pascal_person_part_gt/*.png, pascal_person_part_trainval_list/}``
    (palette PNGs, DeepLab ``{train,val}.txt`` pairs and, with ``id_lists``,
    ``{train,val}_id.txt``) and ``root/VOCdevkit/VOC2010/JPEGImages``."""
    rng = np.random.default_rng(seed)
    release = root / "pascal_person_part"
    voc = root / "VOCdevkit" / "VOC2010"
    ids = _voc_ids(rng, train + val, 2008)
    splits = {"train": ids[:train], "val": ids[train:]}
    labels = {}
    for i in ids:
        w, h = size[0] + int(rng.integers(-4, 5)), size[1] + int(rng.integers(-4, 5))
        write_jpeg(voc / "JPEGImages" / f"{i}.jpg", photo(rng, w, h))
        labels[i] = label_map(rng, w, h, list(range(7)))
        save_label_png(release / "pascal_person_part_gt" / f"{i}.png", labels[i],
                       voc_colormap())
    lists = release / "pascal_person_part_trainval_list"
    for split, split_ids in splits.items():
        write_lines(lists / f"{split}.txt",
                    [f"/JPEGImages/{i}.jpg /SegmentationPart/{i}.png" for i in split_ids])
        if id_lists:
            write_lines(lists / f"{split}_id.txt", split_ids)
    return {"release": release, "voc": voc, "splits": splits, "labels": labels}
