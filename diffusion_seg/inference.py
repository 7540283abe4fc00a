"""Segment images with a trained network, from Python: the library behind ``predict`` and
``visualize`` (the commands only parse their arguments and print)::

    from diffusion_seg.inference import load_predictor, load_rgb

    predictor = load_predictor("run/checkpoints/last.ckpt", device="cpu",
                               inference={"flip": True})
    labels, probability = predictor.predict_array(load_rgb("photo.jpg"))

A :class:`Predictor` scores images exactly as ``eval`` scores the validation set: the
checkpoint's :class:`~diffusion_seg.data.preprocess.Preprocessor` (normalisation, optional
``dataset.eval_resize``, padding to the output stride, cropped back), then
:func:`diffusion_seg.models.inference.predict` with the ``task.inference`` options (whole
image or sliding window, multi-scale, flip, dense CRF).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from diffusion_seg.checkpoints import load_segmentor
from diffusion_seg.data.base import voc_colormap
from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.errors import BadSampleError, ConfigError
from diffusion_seg.models.inference import VALID_MODES, predict, scores_are_logits
from diffusion_seg.models.segmentor import Segmentor
from diffusion_seg.plots import save_prediction

log = logging.getLogger("diffusion_seg")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEVICES = ("auto", "cpu", "cuda")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    path: Path
    name: str  # output name: the path relative to the input folder, without the extension


def _glob_base(pattern: str) -> Path:
    """The directory part of a glob pattern before its first wildcard."""
    parts = Path(pattern).parts
    first_magic = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
    return Path(*parts[:first_magic]) if first_magic else Path(".")


def collect_inputs(spec: str) -> tuple[list[InputImage], Path | None]:
    """The images named by ``input=``: a folder (recursively, image extensions only), one file,
    or a glob (``"photos/*.jpg"``, ``**`` recursive). Returns them with the folder they come
    from (``None`` for a single file)."""
    if not spec:
        raise ConfigError("input= is empty; give an image file, a folder or a glob pattern")
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        items = [InputImage(p, p.relative_to(path).with_suffix("").as_posix()) for p in files]
        base: Path | None = path
        what = f"folder {path} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
    elif path.is_file():
        items, base, what = [InputImage(path, path.stem)], None, ""
    elif glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        items = [InputImage(p, p.stem) for p in files]
        base = _glob_base(str(path))
        what = f"no file matches input={spec}"
    else:
        raise ConfigError(f"input={spec} does not exist; give an image file, a folder or a glob pattern")
    if not items:
        raise ConfigError(what)
    seen: dict[str, Path] = {}
    for item in items:
        if item.name in seen:
            raise ConfigError(
                f"{seen[item.name]} and {item.path} would both be written as {item.name}.png; "
                "rename one or predict them separately"
            )
        seen[item.name] = item.path
    return items, base


def check_output(output: Path, base: Path | None) -> None:
    """Refuse an output folder inside the input folder: its PNGs would be read as inputs."""
    if base is None:
        return
    out, inp = output.expanduser().resolve(), base.expanduser().resolve()
    if out == inp or inp in out.parents:
        raise ConfigError(
            f"output={output} lies inside the input folder {base}: the predictions would be read "
            "back as inputs next time. Choose an output folder outside it."
        )


def load_rgb(path: str | Path) -> np.ndarray:
    """Any image file → ``H×W×3`` uint8 RGB. Grey, palette, RGBA/LA (alpha dropped, as the
    datasets do), CMYK and YCbCr convert with PIL; 16-bit and 32-bit grey are scaled to 8 bits
    (PIL would clip them). Raises :class:`BadSampleError` naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I") or img.mode == "F":
                values = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
                if img.mode == "F" and values.max(initial=0) <= 1.0:
                    top = 1.0
                grey = (values / top * 255).clip(0, 255).round().astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadSampleError(f"cannot read image {path}: {err}") from None


def load_rgb_or_skip(path: Path, failed: list[tuple[Path, str]]) -> np.ndarray | None:
    """:func:`load_rgb`, or ``None`` for an unreadable file: named in a warning now and added
    to ``failed`` (predict and visualize go on with the others, then name them all)."""
    try:
        return load_rgb(path)
    except BadSampleError as err:
        failed.append((path, str(err)))
        log.warning("skipping %s", err)
        return None


@dataclass
class Summary:
    """The inputs written (their output names) and those skipped, with the reason."""

    written: list[str]
    failed: list[tuple[Path, str]]


# --------------------------------------------------------------------------- the network


def checkpoint_palette(cfg: DictConfig, num_classes: int) -> np.ndarray:
    """The training dataset's class colours (its class's ``palette``), else VOC's map."""
    from hydra.utils import get_class

    palette = None
    try:
        palette = getattr(get_class(str(cfg.dataset.dataset_class)), "palette", None)
    except Exception:  # any unresolvable dataset target: fall back to generated colours
        palette = None
    if palette is None or len(np.asarray(palette).reshape(-1, 3)) < num_classes:
        return voc_colormap(num_classes)
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)


def checkpoint_preprocessor(run_config: DictConfig, net: Segmentor, resize: int | None = None) -> Preprocessor:
    """The input pipeline the network was evaluated with: the dataset config's mean / std and
    padding multiple if it set them, else the backbone's (as training set them), and its
    ``dataset.eval_resize`` unless ``resize`` is given."""
    default = Preprocessor.for_backbone(net.backbone)
    mean = OmegaConf.select(run_config, "dataset.mean") or default.mean
    std = OmegaConf.select(run_config, "dataset.std") or default.std
    divisor = OmegaConf.select(run_config, "dataset.size_divisor") or default.size_divisor
    if resize is None:
        resize = OmegaConf.select(run_config, "dataset.eval_resize")
    return Preprocessor(mean, std, int(divisor), resize)


def select_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"device={name!r} is invalid; allowed: {list(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or auto")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        "cpu" if name == "auto" else name)


class Predictor:
    """Images → class ids and winning-class probabilities, the way ``eval`` scores them.

    Args:
        net: the network (moved to ``device``, eval mode).
        preprocessor: the network's input pipeline (:func:`checkpoint_preprocessor`); its
            ``resize`` resizes the longest side first, and the scores are resized back.
        inference: ``task.inference`` options (:func:`diffusion_seg.models.inference.predict`;
            ``None``: whole image, one scale, no flip).
        device: where to run; CUDA runs under bf16 autocast.
    """

    def __init__(
        self,
        net: Segmentor,
        preprocessor: Preprocessor,
        inference: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.inference = dict(inference or {})
        mode = self.inference.get("mode", "whole")
        if mode not in VALID_MODES:
            raise ConfigError(f"task.inference.mode={mode!r} is invalid; allowed: {list(VALID_MODES)}")
        self.crf = bool(self.inference.get("crf", False))
        self.preprocessor = preprocessor.to(self.device)

    def prepare(self, rgb: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
        """``H×W×3`` uint8 → the normalised padded ``3×H'×W'`` tensor (eval's pipeline) and
        the size of the image inside it."""
        return self.preprocessor.prepare(rgb)

    def batch_key(self, height: int, width: int) -> tuple[int, int]:
        """The padded size an image of ``height × width`` gets (batches group by it)."""
        return self.preprocessor.padded_size(height, width)

    def _logits(self, x: Tensor) -> Tensor:
        return self.net(x).logits.float()

    @torch.no_grad()
    def __call__(
        self, images: Tensor, valid: Sequence[tuple[int, int]], sizes: Sequence[tuple[int, int]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``B×3×H'×W'`` (one padded size) → per image ``(labels, probability)``, each
        ``h×w`` at its ``sizes`` entry (the input image's size)."""
        x = images.to(self.device, non_blocking=True)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                    else nullcontext())
        with autocast:
            rgb = self.preprocessor.denormalise(x) if self.crf else None
            scores = predict(self._logits, x, **self.inference, rgb=rgb).float()
        logits = scores_are_logits(**self.inference)
        results = []
        for i, (valid_size, size) in enumerate(zip(valid, sizes)):
            s = Preprocessor.unpad(scores[i : i + 1], valid_size)
            if tuple(s.shape[-2:]) != tuple(size):
                s = torch.nn.functional.interpolate(s, size=tuple(size), mode="bilinear", align_corners=False)
            prob, _ = (s.softmax(1) if logits else s).max(1)
            label = s.argmax(1)  # the same decision eval makes on the scores
            results.append((label[0].to(torch.uint8).cpu().numpy(), prob[0].cpu().numpy()))
        return results

    def predict_array(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One ``H×W×3`` uint8 RGB image → ``(labels, probability)``, both ``H×W``."""
        image, valid = self.prepare(rgb)
        return self(image[None], [valid], [rgb.shape[:2]])[0]


def predictor_for(
    net: Segmentor,
    run_config: DictConfig,
    inference: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    resize: int | None = None,
) -> Predictor:
    """A :class:`Predictor` of a network rebuilt from a checkpoint with its run config
    (:func:`~diffusion_seg.checkpoints.load_segmentor`)."""
    return Predictor(net, checkpoint_preprocessor(run_config, net, resize), inference, device)


def load_predictor(
    ckpt_path: str | Path,
    inference: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    resize: int | None = None,
) -> Predictor:
    """Load a checkpoint and return its :class:`Predictor` (module docstring). ``device``
    takes ``auto`` as the command does (:func:`select_device`)."""
    net, run_config = load_segmentor(ckpt_path)
    device = select_device(device) if isinstance(device, str) else device
    return predictor_for(net, run_config, inference, device, resize)


# --------------------------------------------------------------------------- many files


def _batches(items: list[tuple[InputImage, tuple[int, int]]], size: int) -> Iterator[list[InputImage]]:
    """Consecutive runs of one batch key, at most ``size`` long (items sorted by key)."""
    run: list[InputImage] = []
    key = None
    for item, k in items:
        if run and (k != key or len(run) == size):
            yield run
            run = []
        run.append(item)
        key = k
    if run:
        yield run


def predict_files(
    predictor: Predictor,
    items: Sequence[InputImage],
    output: Path,
    palette: np.ndarray,
    batch_size: int = 1,
    overlay: bool = True,
    probability: bool = False,
    alpha: float = 0.5,
    advance: Callable[[], None] = lambda: None,
) -> Summary:
    """Write ``<name>.png`` (+ ``_overlay.jpg``, ``_prob.png``) for every input under
    ``output`` (:func:`diffusion_seg.plots.save_prediction`). Images of one padded size are
    batched, at most ``batch_size``; an unreadable file is skipped and listed in the summary.
    ``advance`` is called once per input (a progress bar)."""
    # Group images of one padded size into batches: sort by it (from the file headers).
    keyed: list[tuple[InputImage, tuple[int, int]]] = []
    for item in items:
        try:
            with Image.open(item.path) as img:
                width, height = img.size
            keyed.append((item, predictor.batch_key(height, width)))
        except Exception:  # unreadable: fails again, reported, when loaded
            keyed.append((item, (0, 0)))
    keyed.sort(key=lambda pair: pair[1])

    summary = Summary([], [])
    for batch in _batches(keyed, batch_size):
        loaded: list[tuple[InputImage, np.ndarray, Tensor, tuple[int, int]]] = []
        for item in batch:
            rgb = load_rgb_or_skip(item.path, summary.failed)
            if rgb is None:
                advance()
                continue
            tensor, valid = predictor.prepare(rgb)
            loaded.append((item, rgb, tensor, valid))
        # A header can lie about the size: predict each padded shape on its own.
        shapes: dict[tuple[int, ...], list[int]] = {}
        for i, (_, _, tensor, _) in enumerate(loaded):
            shapes.setdefault(tuple(tensor.shape), []).append(i)
        for indices in shapes.values():
            group = [loaded[i] for i in indices]
            results = predictor(torch.stack([g[2] for g in group]), [g[3] for g in group],
                                [g[1].shape[:2] for g in group])
            for (item, rgb, _, _), (label, prob) in zip(group, results):
                save_prediction(output, item.name, label, palette, rgb=rgb if overlay else None,
                                alpha=alpha, probability=prob if probability else None)
                summary.written.append(item.name)
                advance()
    return summary
