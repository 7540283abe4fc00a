"""Segment your own images with a checkpoint:
``python -m diffusion_seg.predict ckpt_path=<file.ckpt> input=<dir|file|glob> output=<dir>``.

For every input image ``<name>.<ext>`` it writes, in ``output``:

* ``<name>.png``: a palette PNG of class indices (the training dataset's colours), the size
  of the input; read back with PIL as indices (``np.asarray(Image.open(...))``);
* ``<name>_overlay.jpg``: the class colours over the image (``overlay_alpha``);
* ``<name>_prob.png`` with ``save_probability=true``: the probability of the winning class,
  8-bit (255 = 1.0).

A folder is searched recursively and its sub-folders are kept in ``output``. Images are
processed exactly as ``eval`` processes the validation set (the checkpoint's normalisation,
optional ``dataset.eval_resize``, padding to the output stride, then cropped back), with the
``task.inference.*`` options of ``conf/task/default.yaml``: whole image or sliding window,
multi-scale, flip. Images of one padded size are batched (``batch_size``). Grey, palette,
RGBA, CMYK and 16-bit images are converted to RGB. Unreadable files are reported by name and
skipped; the command then exits with status 1 after writing the others.
"""

from __future__ import annotations

import glob
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from diffusion_seg import CONFIG_DIR
from diffusion_seg.builders import compile_from_config
from diffusion_seg.cli.console import log, print_config
from diffusion_seg.cli.errors import hydra_command, user_errors
from diffusion_seg.config import register_resolvers
from diffusion_seg.data.base import voc_colormap
from diffusion_seg.data.transforms import build_eval_transform
from diffusion_seg.errors import BadSampleError, ConfigError, UserError
from diffusion_seg.checkpoints import load_segmentor
from diffusion_seg.models.inference import VALID_MODES, predict
from diffusion_seg.models.segmentor import Segmentor
from diffusion_seg.plots import prediction_paths, save_prediction
from diffusion_seg.runtime import keep_freed_memory

register_resolvers()

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEVICES = ("auto", "cpu", "cuda")
# The values `--help` lists for the options that take one of a few.
OPTION_CHOICES = {"device": DEVICES}
# Exit status when some inputs could not be read (the others are written).
SOME_FAILED_EXIT = 1


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


def load_rgb(path: Path) -> np.ndarray:
    """Any image file → ``H×W×3`` uint8 RGB. Grey, palette, RGBA/LA (alpha dropped, as the
    datasets do), CMYK and YCbCr convert with PIL; 16-bit and 32-bit grey are scaled to 8 bits
    (PIL would clip them). Raises :class:`BadSampleError` naming the file."""
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
    to ``failed`` for :func:`exit_if_any_failed` (predict and visualize go on with the others)."""
    try:
        return load_rgb(path)
    except BadSampleError as err:
        failed.append((path, str(err)))
        log.warning("skipping %s", err)
        return None


def exit_if_any_failed(summary: Summary) -> None:
    """After the readable inputs are written: name every skipped file on stderr and exit with
    :data:`SOME_FAILED_EXIT`; nothing when all were read."""
    if summary.failed:
        lines = "\n".join(f"  {message}" for _, message in summary.failed)
        print(f"error: {len(summary.failed)} of {len(summary.failed) + len(summary.written)} "
              f"input(s) could not be read and were skipped:\n{lines}", file=sys.stderr, flush=True)
        raise SystemExit(SOME_FAILED_EXIT)


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


def normalisation(cfg: DictConfig, net: Segmentor) -> tuple[list[float], list[float]]:
    """Mean and std as in training: the dataset config's if it set them, else the backbone's."""
    mean = OmegaConf.select(cfg, "dataset.mean") or net.backbone.mean
    std = OmegaConf.select(cfg, "dataset.std") or net.backbone.std
    return [float(v) for v in mean], [float(v) for v in std]


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
        mean / std: normalisation (0..1 scale).
        size_divisor: padding multiple (the backbone's output stride).
        inference: ``task.inference`` options (:func:`diffusion_seg.models.inference.predict`).
        device: where to run; CUDA runs under bf16 autocast.
        resize: resize the longest side to this first (``dataset.eval_resize``); the scores are
            resized back to the image size.
    """

    def __init__(
        self,
        net: Segmentor,
        mean: Sequence[float],
        std: Sequence[float],
        size_divisor: int,
        inference: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        resize: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.inference = dict(inference or {})
        mode = self.inference.get("mode", "whole")
        if mode not in VALID_MODES:
            raise ConfigError(f"task.inference.mode={mode!r} is invalid; allowed: {list(VALID_MODES)}")
        # With the dense CRF the scores are its marginals (probabilities), as after several passes.
        self.crf = bool(self.inference.get("crf", False))
        self.single_pass = (tuple(self.inference.get("scales", (1.0,))) == (1.0,)
                            and not self.inference.get("flip", False) and not self.crf)
        self.mean = torch.tensor(list(mean), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), device=self.device).view(1, 3, 1, 1)
        self.size_divisor = size_divisor
        self.resize = resize or None
        self.transform = build_eval_transform(mean, std, size_divisor, self.resize)

    def prepare(self, rgb: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
        """``H×W×3`` uint8 → the normalised padded ``3×H'×W'`` tensor (eval's pipeline) and
        the size of the image inside it."""
        out = self.transform(image=rgb, mask=np.zeros(rgb.shape[:2], dtype=np.uint8))
        valid = out["mask"] != 255
        size = (int(valid.any(1).sum()), int(valid.any(0).sum()))
        return out["image"], size

    def batch_key(self, height: int, width: int) -> tuple[int, int]:
        """The padded size an image of ``height × width`` gets (batches group by it)."""
        if self.resize:
            scale = self.resize / max(height, width)
            height, width = round(height * scale), round(width * scale)
        d = self.size_divisor
        return math.ceil(height / d) * d, math.ceil(width / d) * d

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
            rgb = (x.float() * self.std + self.mean).mul(255).clamp(0, 255) if self.crf else None
            scores = predict(self._logits, x, **self.inference, rgb=rgb).float()
        results = []
        for i, ((h, w), size) in enumerate(zip(valid, sizes)):
            s = scores[i : i + 1, :, :h, :w]
            if (h, w) != tuple(size):
                s = torch.nn.functional.interpolate(s, size=tuple(size), mode="bilinear", align_corners=False)
            probs = s.softmax(1) if self.single_pass else s
            prob, label = probs.max(1)
            label = s.argmax(1)  # the same decision eval makes on the scores
            results.append((label[0].to(torch.uint8).cpu().numpy(), prob[0].cpu().numpy()))
        return results


# --------------------------------------------------------------------------- the command


@dataclass
class Summary:
    """The inputs written (their output names) and those skipped, with the reason."""

    written: list[str]
    failed: list[tuple[Path, str]]


def _progress(total: int) -> Any:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("•"),
                    TimeElapsedColumn(), TextColumn("• ETA"), TimeRemainingColumn(),
                    disable=total == 0)


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


def run_predict(cfg: DictConfig) -> Summary:
    """Check the arguments, load the checkpoint and write every prediction."""
    for key in ("ckpt_path", "input", "output"):
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise ConfigError(f"{key}=... is required: predict ckpt_path=<file.ckpt> input=<dir|file|glob> output=<dir>")
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} is invalid; allowed: an integer >= 1")
    if not 0.0 <= float(cfg.overlay_alpha) <= 1.0:
        raise ConfigError(f"overlay_alpha={cfg.overlay_alpha} is invalid; allowed: 0..1")
    if cfg.get("malloc_keep_freed", True):
        keep_freed_memory()
    device = select_device(str(cfg.device))
    items, base = collect_inputs(str(cfg.input))
    output = Path(str(cfg.output)).expanduser()
    check_output(output, base)
    overlay, probability = bool(cfg.save_overlay), bool(cfg.save_probability)
    if not cfg.overwrite:
        for item in items:
            for path in prediction_paths(output, item.name, overlay, probability):
                if path.exists():
                    raise UserError(
                        f"{path} exists; pass overwrite=true to replace the outputs in {output}, "
                        "or choose another output="
                    )

    net, train_cfg = load_segmentor(cfg.ckpt_path)
    compile_from_config(cfg, net)
    mean, std = normalisation(train_cfg, net)
    divisor = OmegaConf.select(train_cfg, "dataset.size_divisor") or max(net.backbone.reductions)
    resize = cfg.get("resize")
    if resize is None:
        resize = OmegaConf.select(train_cfg, "dataset.eval_resize")
    inference = OmegaConf.to_container(cfg.task.inference, resolve=True)
    assert isinstance(inference, dict)
    predictor = Predictor(net, mean, std, int(divisor), inference, device, resize)
    palette = checkpoint_palette(train_cfg, net.num_classes)
    log.info("Predicting %d image(s) with %s (%s, %s) on %s → %s", len(items),
             Path(cfg.ckpt_path).name, type(net.head).__name__,
             f"{len(train_cfg.class_names)} classes", device, output)

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
    with _progress(len(items)) as progress:
        task = progress.add_task("predict", total=len(items))
        for batch in _batches(keyed, int(cfg.batch_size)):
            loaded: list[tuple[InputImage, np.ndarray, Tensor, tuple[int, int]]] = []
            for item in batch:
                rgb = load_rgb_or_skip(item.path, summary.failed)
                if rgb is None:
                    progress.advance(task)
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
                    save_prediction(output, item.name, label, palette,
                                    rgb=rgb if overlay else None, alpha=float(cfg.overlay_alpha),
                                    probability=prob if probability else None)
                    summary.written.append(item.name)
                    progress.advance(task)
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def _main(cfg: DictConfig) -> None:
    if cfg.get("print_config"):
        print_config(cfg)
    with user_errors():
        summary = run_predict(cfg)
    log.info("Wrote %d prediction(s) to %s", len(summary.written), cfg.output)
    log.info("Run dir: %s", HydraConfig.get().runtime.output_dir)
    exit_if_any_failed(summary)


def main() -> None:
    hydra_command(_main, "predict")


if __name__ == "__main__":
    main()
