"""The papers' figures for any trained model, one command:

    python -m diffusion_seg.visualize ckpt_path=run/checkpoints/last.ckpt input=photo.jpg \
        output=viz/ ["pixels=[[120,200],[300,80]]"] [device=cpu]

``input`` is an image file (PNGs go straight into ``output``), a folder or a glob (one
sub-folder of ``output`` per image). Every map is upsampled, nearest-neighbour, to the input
size. What is drawn depends on the head (:mod:`diffusion_seg.figures` lists the files;
``pixels`` are ``[y, x]`` input pixels; default: the centre and the centres of the four
quadrants).

Unreadable images are named and skipped, as ``predict`` does: the others are drawn, then the
command lists the skipped files and exits with status 1.

The old flags still work: ``--ckpt F --image I --out D [--pixels Y,X ...] [--device cpu]``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffusion_seg.cli.console import command_help
from diffusion_seg.cli.errors import exit_if_any_failed, user_errors
from diffusion_seg.errors import ConfigError
from diffusion_seg.figures import figures
from diffusion_seg.inference import (
    DEVICES,
    Summary,
    checkpoint_palette,
    checkpoint_preprocessor,
    collect_inputs,
    load_rgb_or_skip,
    select_device,
)


# The values `--help` lists for the options that take one of a few.
OPTION_CHOICES = {"device": DEVICES}
LEGACY_FLAGS = {"--ckpt": "ckpt_path", "--image": "input", "--out": "output", "--device": "device"}
USAGE = ("python -m diffusion_seg.visualize ckpt_path=<file.ckpt> input=<image|dir|glob> "
         "output=<dir> [\"pixels=[[y,x],...]\"] [device=cpu|cuda|auto] [overlay_alpha=0.5]")


def translate_legacy(args: Sequence[str]) -> list[str]:
    """The 0.1 flags (``--ckpt F --image I --out D --pixels Y,X ... --device D``) as
    ``key=value`` overrides; ``key=value`` arguments pass through. An unknown flag is a
    :class:`ConfigError` naming the new form."""
    overrides: list[str] = []
    pixels: list[tuple[int, int]] | None = None
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=")
        if arg.startswith("--") and flag in LEGACY_FLAGS:
            if eq:
                value = inline
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise ConfigError(f"{flag} needs a value; usage: {USAGE}")
            overrides.append(f"{LEGACY_FLAGS[flag]}={value}")
        elif flag == "--pixels":
            pixels = []
            values = [inline] if eq else []
            while not eq and i + 1 < len(args) and not args[i + 1].startswith("-") and "=" not in args[i + 1]:
                i += 1
                values.append(args[i])
            for text in values:
                pixels.append(_pixel(text))
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg}; usage: {USAGE}")
        else:
            overrides.append(arg)
        i += 1
    if pixels:
        overrides.append("pixels=[" + ",".join(f"[{y},{x}]" for y, x in pixels) + "]")
    return overrides


def _pixel(text: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--pixels wants y,x integer pairs, got {text!r}") from None
    return y, x


def _compose(overrides: list[str]) -> DictConfig:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from diffusion_seg.config import compose_config

    try:
        cfg = compose_config(overrides, "visualize")
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{str(err).splitlines()[0]}; usage: {USAGE}") from None
    for key in ("ckpt_path", "input", "output"):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key}=... is required; usage: {USAGE}")
    from diffusion_seg.validation import validate_config

    validate_config(cfg, "visualize")  # types and ranges, before the checkpoint is read
    return cfg


def _pixels(cfg: DictConfig) -> list[tuple[int, int]] | None:
    value = cfg.get("pixels")
    if value is None:
        return None
    try:
        pairs = [(int(p[0]), int(p[1])) for p in value]
        if any(len(p) != 2 for p in value):
            raise ValueError
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"pixels={OmegaConf.to_container(value)} must be a list of [y, x] pairs") from None
    return pairs


def run_visualize(cfg: DictConfig) -> tuple[list[Path], Summary]:
    """Load the checkpoint, then write the figures of every readable input image. Returns
    the written files and which images were drawn and skipped."""
    from diffusion_seg.checkpoints import load_segmentor

    device = select_device(str(cfg.device))
    pixels = _pixels(cfg)
    net, train_cfg = load_segmentor(cfg.ckpt_path)
    items, base = collect_inputs(str(cfg.input))
    net = net.to(device)
    # The figures draw the whole image as it is: eval's statistics, no resize or padding.
    preprocessor = checkpoint_preprocessor(train_cfg, net)
    palette = checkpoint_palette(train_cfg, net.num_classes)
    names = list(train_cfg.class_names)
    output = Path(str(cfg.output))
    written: list[Path] = []
    summary = Summary([], [])
    for item in items:
        out_dir = output if base is None else output / item.name
        rgb = load_rgb_or_skip(item.path, summary.failed)
        if rgb is None:
            continue
        image = preprocessor.normalise_rgb(rgb)
        try:
            files = figures(net, image, out_dir, pixels, palette, names, float(cfg.overlay_alpha),
                            preprocessor)
        except ValueError as err:  # a pixel outside the image
            raise ConfigError(f"{item.path}: {err}") from None
        print(f"{item.path}: {len(files)} PNGs in {out_dir}", flush=True)
        written += files
        summary.written.append(item.name)
    return written, summary


def main(argv: list[str] | None = None) -> int:
    """The command; 0 when every image was drawn, else :func:`~diffusion_seg.cli.errors.exit_if_any_failed`
    exits with 1 after the others."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        from diffusion_seg.config import compose_config

        print(command_help("visualize", compose_config([], "visualize")), end="")
        return 0
    with user_errors():
        cfg = _compose(translate_legacy(args))
        files, summary = run_visualize(cfg)
    print(f"wrote {len(files)} PNGs to {cfg.output}")
    exit_if_any_failed(summary)
    return 0
