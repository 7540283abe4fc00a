"""The file-backed dataset every on-disk dataset builds on, with strict input checks.

A concrete dataset (ADE20K, VOC aug, ...) only lists its ``(image, mask)`` file pairs and
states its classes, palette and raw-label mapping; reading, validation and augmentation are
here, once. Nothing is silently wrong:

* a missing dataset root, split list or directory raises :class:`DatasetNotFoundError` at
  construction with the path, the expected layout and the command that prepares it;
* a file named by the split list but absent, an unreadable file, an image/mask size mismatch
  or a label value outside ``[0, K) ∪ {255}`` after the dataset's mapping raises
  :class:`BadSampleError` naming the file and the values.

``on_bad_sample="skip"`` turns the second kind into skips: files missing at construction
are dropped (with a warning), and a sample that fails to load is replaced by the next
loadable one. Every sample then carries ``"skipped"``: the newline-joined messages of the
bad files met while producing it (``""`` when none). The string travels with the batch
from the DataLoader worker that found the problem to the main process, where
:class:`diffusion_seg.lightning.callbacks.BadSampleReport` counts and reports them at the end of
the epoch (a counter in the dataset object would die with the worker process).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from diffusion_seg.data.transforms import IGNORE_INDEX
from diffusion_seg.errors import BadSampleError, ConfigError, DatasetNotFoundError

Transform = Callable[..., dict[str, Any]]
# The converters' command, named in every "dataset not found" message.
PREPARE = "python -m diffusion_seg.prepare"
log = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("error", "skip")
# A run of this many unreadable samples in a row means the tree is broken, not noisy.
MAX_CONSECUTIVE_SKIPS = 32


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved class index), ``n×3`` uint8.

    VOC, Pascal Context and Person-Part label PNGs ship with it; ADE20K and user folders
    use it too so that one palette serves every visualisation."""
    index = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            cmap[:, channel] |= (((index >> (3 * bit + channel)) & 1) << (7 - bit)).astype(
                np.uint8
            )
    return cmap


def read_image(path: Path) -> np.ndarray:
    """RGB ``H×W×3`` uint8; raises :class:`BadSampleError` naming the file if unreadable."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        raise BadSampleError(f"cannot read image {path}: {err}") from None


def read_mask(path: Path) -> np.ndarray:
    """Label map ``H×W`` as stored (palette PNGs give indices, not colours: read with PIL,
    never as OpenCV grayscale)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise BadSampleError(
                    f"mask {path} has PIL mode {img.mode!r}; expected a single-channel "
                    "label PNG (mode L or P) holding class indices"
                )
            return np.asarray(img)
    except BadSampleError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise BadSampleError(f"cannot read mask {path}: {err}") from None


def save_label_png(path: Path, label: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write class indices ``H×W`` (values ≤ 255) as a palette PNG: viewers show colours,
    :func:`read_mask` gets the indices back unchanged."""
    if label.ndim != 2 or label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f"label for {path} must be H×W with values in 0..255")
    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))
    img.putpalette((voc_colormap() if palette is None else palette).astype(np.uint8).tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def identity_label_map() -> np.ndarray:
    """Raw value v → v (the dataset already stores train ids 0..K-1 and 255)."""
    return np.arange(256, dtype=np.int64)


def reduce_zero_label_map() -> np.ndarray:
    """Raw 0 → ignore, v → v-1 (ADE20K's "other" and Pascal Context-59's background)."""
    lut = np.arange(256, dtype=np.int64) - 1
    lut[0] = IGNORE_INDEX
    return lut


def dataset_not_found(
    name: str, missing: Path, root: Path, layout: str, prepare: str, env: str | None = None
) -> DatasetNotFoundError:
    """The one message for a missing dataset piece: what is missing, what should be there,
    and how to get it there."""
    where = "dataset.root=<dir>" + (f" or the environment variable {env}" if env else "")
    return DatasetNotFoundError(
        f"{name}: {missing} does not exist.\n"
        f"Expected layout under the dataset root {root}:\n{layout.rstrip()}\n"
        f"Set the root with {where}.\n"
        f"Prepare it with: {prepare}"
    )


def read_split_list(path: Path) -> list[str]:
    """Ids in a split list, one per line; blank lines skipped. Lines of the form
    ``/JPEGImages/x.jpg /Seg/x.png`` (DeepLab lists) give the first file's stem."""
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            ids.append(Path(line.split()[0]).stem if "/" in line or " " in line else line)
    return ids


def check_dir(
    name: str, path: Path, root: Path, layout: str, prepare: str, env: str | None
) -> None:
    """Raise the dataset-not-found message unless ``path`` is a directory."""
    if not path.is_dir():
        raise dataset_not_found(name, path, root, layout, prepare, env)


def listed_pairs(
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
        check_dir(name, path, root, layout, prepare, env)
    if not list_path.is_file():
        raise dataset_not_found(name, list_path, root, layout, prepare, env)
    return [(image_dir / f"{i}.jpg", mask_dir / f"{i}.png") for i in read_split_list(list_path)]


class SegmentationDataset(Dataset):
    """``(image, mask)`` file pairs → ``{"image": 3×H×W float, "mask": H×W long, "name": str}``.

    Args:
        samples: ``(image_path, mask_path)`` pairs.
        class_names: the K class names (index = train id).
        palette: ``K×3`` uint8 colours for visualisation.
        label_map: length-256 lookup from the stored value to the train id (255 = ignore).
        transform: an albumentations ``Compose`` (called with ``image=``, ``mask=``).
        on_bad_sample: ``error`` (default) raises on the first bad sample; ``skip`` drops
            missing files, replaces unloadable samples by the next loadable one and reports
            them (module docstring).
    """

    # What to do about a bad file, after the message naming it: the files of a benchmark
    # come from its release (FolderDataset, the user's own files, says otherwise).
    BAD_FILE_ADVICE = (
        "check that dataset= names this dataset, re-extract and re-convert it "
        f"({PREPARE}), or set dataset.on_bad_sample=skip to train without the file"
    )

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        class_names: Sequence[str],
        palette: np.ndarray,
        label_map: np.ndarray | None = None,
        transform: Transform | None = None,
        on_bad_sample: str = "error",
    ) -> None:
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ConfigError(
                f"dataset.on_bad_sample={on_bad_sample!r} is invalid; allowed: "
                + ", ".join(BAD_SAMPLE_POLICIES)
            )
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.palette = np.asarray(palette, dtype=np.uint8)
        lut = identity_label_map() if label_map is None else np.asarray(label_map)
        if lut.shape != (256,) or lut.min() < 0 or lut.max() > 255:
            raise ValueError("label_map must map each of the 256 raw values into 0..255")
        self.label_map = lut.astype(np.uint8)
        # Raw values whose mapped train id is neither a class nor ignore.
        self._invalid_raw = (lut >= self.num_classes) & (lut != IGNORE_INDEX)
        self.transform = transform
        self.on_bad_sample = on_bad_sample
        pairs = [(Path(i), Path(m)) for i, m in samples]
        self.missing = [p for pair in pairs for p in pair if not p.is_file()]
        if self.missing:
            shown = "\n  ".join(map(str, self.missing[:10]))
            more = f"\n  ... and {len(self.missing) - 10} more" if len(self.missing) > 10 else ""
            message = (
                f"{type(self).__name__}: {len(self.missing)} file(s) named by the split are "
                f"missing:\n  {shown}{more}"
            )
            if on_bad_sample == "error":
                raise BadSampleError(f"{message}\nWhat to do: {self.BAD_FILE_ADVICE}.")
            log.warning("%s\nSkipping them (on_bad_sample=skip).", message)
            missing = set(self.missing)
            pairs = [p for p in pairs if p[0] not in missing and p[1] not in missing]
        self.samples = pairs

    def __len__(self) -> int:
        return len(self.samples)

    def read_label(self, path: Path) -> np.ndarray:
        """The stored label map of one mask file (override for other encodings)."""
        return read_mask(path)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read, map and validate one pair (no augmentation)."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        raw = self.read_label(mask_path)
        if raw.shape != image.shape[:2]:
            raise BadSampleError(
                f"size mismatch: image {image_path} is {image.shape[1]}×{image.shape[0]} but "
                f"mask {mask_path} is {raw.shape[1]}×{raw.shape[0]} (W×H)"
            )
        if raw.dtype != np.uint8:
            if raw.max(initial=0) > 255 or raw.min(initial=0) < 0:
                values = np.unique(raw[(raw > 255) | (raw < 0)])[:10].tolist()
                raise BadSampleError(
                    f"mask {mask_path} holds values {values} outside 0..255; label PNGs "
                    "store class indices"
                )
            raw = raw.astype(np.uint8)
        raw = np.ascontiguousarray(raw)
        # One histogram pass finds every raw value present (OpenCV's is ~4x numpy's
        # bincount, and a sort-based np.unique is slower still).
        present = cv2.calcHist([raw], [0], None, [256], [0, 256]).ravel() > 0
        bad = np.flatnonzero(present & self._invalid_raw)
        if bad.size:
            raise BadSampleError(
                f"mask {mask_path} has label values {bad.tolist()} outside the "
                f"{self.num_classes} classes (allowed after this dataset's mapping: "
                f"0..{self.num_classes - 1} and {IGNORE_INDEX} = ignore)"
            )
        return image, cv2.LUT(raw, self.label_map)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_bad_sample == "error":
            try:
                image, mask = self.load(index)
            except BadSampleError as err:  # what to do about it: this dataset's advice
                raise BadSampleError(f"{err}; {self.BAD_FILE_ADVICE}") from None
            return apply_transform(self.transform, image, mask, self.samples[index][0].stem)
        skipped: list[str] = []
        for attempt in range(min(len(self), MAX_CONSECUTIVE_SKIPS)):
            i = (index + attempt) % len(self)
            try:
                image, mask = self.load(i)
            except BadSampleError as err:
                message = " ".join(str(err).split())
                log.warning("skipping bad sample: %s", message)
                skipped.append(message)
                continue
            sample = apply_transform(self.transform, image, mask, self.samples[i][0].stem)
            sample["skipped"] = "\n".join(skipped)
            return sample
        raise BadSampleError(
            f"{len(skipped)} consecutive bad samples from index {index} of "
            f"{type(self).__name__}; the dataset is broken, run "
            "`python -m diffusion_seg.check dataset=...` on it. Last: " + skipped[-1]
        )


def apply_transform(
    transform: Transform | None,
    image: np.ndarray,
    mask: np.ndarray,
    name: str,
    maps: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run the albumentations pipeline (if any) and return tensors.

    ``maps`` (``H×W`` arrays, e.g. the pathfinder's distance from the cue) go through the
    pipeline as masks, so every geometric step (scale, crop, flip) moves them with the label;
    padding fills them with 255 where the label is ignored. They come back under their keys."""
    maps = maps or {}
    if transform is not None:
        out = transform(image=image, mask=mask, **({"masks": list(maps.values())} if maps else {}))
        image_t, mask_t = out["image"], out["mask"]
        maps_t = dict(zip(maps, out.get("masks", [])))
        # the evaluation pipelines say where their padding starts (pictures, prediction files)
        extra = {"image_size": out["image_size"]} if "image_size" in out else {}
    else:
        # PIL-backed arrays are read-only; torch wants writable memory.
        image_t = torch.from_numpy(np.require(image, requirements="CW")).permute(2, 0, 1)
        image_t = image_t.float() / 255
        mask_t = torch.from_numpy(np.require(mask, requirements="CW"))
        maps_t = {k: torch.from_numpy(np.require(v, requirements="CW")) for k, v in maps.items()}
        extra = {}
    sample = {"image": image_t, "mask": torch.as_tensor(mask_t).long(), "name": name, **extra}
    return sample | {k: torch.as_tensor(v) for k, v in maps_t.items()}


def index_files(directory: Path, extensions: Iterable[str]) -> dict[str, Path]:
    """``stem → path`` for the files in ``directory`` with one of ``extensions``
    (case-insensitive); two files with one stem is an error (which one is the sample?)."""
    exts = {e.lower() for e in extensions}
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix.lower() in exts:
            if path.stem in found:
                raise BadSampleError(
                    f"two files for sample {path.stem!r}: {found[path.stem]} and {path}; "
                    "keep one"
                )
            found[path.stem] = path
    return found
