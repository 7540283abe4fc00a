"""Export a checkpoint as a deployable model:
``python -m diffusion_seg.export ckpt_path=<file.ckpt> format=onnx|torchscript|torch_export output=<file or dir>``.

The exported model does whole-image inference with the preprocessing inside
(:class:`diffusion_seg.deploy.DeployableSegmentor`): ``N×3×H×W`` RGB in 0..255 in, as
``input_dtype`` (float32, or uint8: an ONNX input has one dtype, so the file takes the one it
was written for); ``N×K×H×W`` float32 logits at the input size out (argmax over K = class map).
After writing, the file is loaded with its runtime (ONNX Runtime, ``torch.jit.load``,
``torch.export.load``) and compared with the PyTorch model on an image and a batch of two of
another size (``sample=<image>`` or a random one, and a random batch); the max abs difference is printed
and the command fails above ``tolerance``. A format the network cannot be written in fails
with one line naming the head, the format, the exporter's reason and the format to try.

Next to the model, ``<name>.json`` records what a deployment needs: the class names, the
palette, the input and output layout, whether any input size works, and the check.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from diffusion_seg import CONFIG_DIR
from diffusion_seg.checkpoints import load_segmentor
from diffusion_seg.cli.console import log
from diffusion_seg.cli.errors import hydra_command, user_errors
from diffusion_seg.config import register_resolvers
from diffusion_seg.deploy import FORMATS, INPUT_DTYPES, SUFFIXES, ExportResult, export, sample_input
from diffusion_seg.errors import ConfigError, UserError
from diffusion_seg.inference import checkpoint_palette, checkpoint_preprocessor, load_rgb

register_resolvers()

# The values `--help` lists for the options that take one of a few.
OPTION_CHOICES = {"format": FORMATS, "input_dtype": tuple(INPUT_DTYPES)}


def output_path(output: str, fmt: str, ckpt_path: str) -> Path:
    """``output`` as given when it has a file suffix, else ``<output>/<checkpoint name>.<suffix>``."""
    path = Path(output).expanduser()
    if path.suffix and not path.is_dir():
        return path
    stem = Path(ckpt_path).stem
    return path / f"{stem}{SUFFIXES[fmt]}"


def check_samples(cfg: DictConfig) -> list[torch.Tensor]:
    """The check's inputs: ``sample=<image>`` (or a random uint8 image of ``input_size``),
    then a random image of another, odd size."""
    size = list(cfg.input_size)
    if len(size) != 2 or min(int(v) for v in size) < 8:
        raise ConfigError(f"input_size={size} is invalid; give [height, width], each >= 8")
    height, width = int(size[0]), int(size[1])
    if cfg.get("sample"):
        rgb = load_rgb(str(cfg.sample))
        first = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].contiguous()
    else:
        first = sample_input(height, width)
    h, w = first.shape[-2:]
    return [first, sample_input(max(h // 2 + 3, 9), max(w // 2 + 5, 9), batch=2, seed=1)]


def run_export(cfg: DictConfig) -> ExportResult:
    for key in ("ckpt_path", "output"):
        if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
            raise ConfigError(f"{key}=... is required: export ckpt_path=<file.ckpt> format=onnx output=<file or dir>")
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is invalid; allowed: {list(FORMATS)}")
    input_dtype = str(cfg.input_dtype)
    if input_dtype not in INPUT_DTYPES:
        raise ConfigError(f"input_dtype={input_dtype} is invalid; allowed: {list(INPUT_DTYPES)}")
    path = output_path(str(cfg.output), fmt, str(cfg.ckpt_path))
    if path.exists() and not cfg.overwrite:
        raise UserError(f"{path} exists; pass overwrite=true to replace it, or choose another output=")
    samples = check_samples(cfg)
    net, train_cfg = load_segmentor(cfg.ckpt_path)
    # What eval feeds the network; the export does whole images (no eval_resize).
    preprocessor = checkpoint_preprocessor(train_cfg, net)
    mean, std, divisor = list(preprocessor.mean), list(preprocessor.std), preprocessor.size_divisor
    log.info("Exporting %s (%s + %s, %d classes) as %s → %s", Path(cfg.ckpt_path).name,
             train_cfg.backbone.name, type(net.head).__name__, net.num_classes, fmt, path)
    result = export(net, fmt, path, mean, std, divisor, samples, float(cfg.tolerance), bool(cfg.dynamic),
                    input_dtype)
    meta = {
        "format": fmt,
        "file": path.name,
        "checkpoint": str(cfg.ckpt_path),
        "head": type(net.head).__name__,
        "backbone": str(train_cfg.backbone.name),
        "input": f"N×3×H×W RGB {result.input_dtype} in 0..255 (normalisation inside)",
        "input_dtype": result.input_dtype,
        "output": "N×K×H×W float32 logits at the input size; argmax over K = class ids",
        "dynamic_size": result.dynamic,
        "example_size": list(result.checked_sizes[0]),
        "note": result.note,
        "class_names": list(train_cfg.class_names),
        "palette": checkpoint_palette(train_cfg, net.num_classes).tolist(),
        "mean": mean,
        "std": std,
        "size_divisor": divisor,
        "check": {"sizes": [list(s) for s in result.checked_sizes], "max_abs_diff": result.max_abs_diff,
                  "tolerance": float(cfg.tolerance)},
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def _main(cfg: DictConfig) -> None:
    with user_errors():
        result = run_export(cfg)
    sizes = ", ".join(f"{h}×{w}" for h, w in result.checked_sizes)
    print(f"max abs diff vs PyTorch: {result.max_abs_diff:.3g} (tolerance {cfg.tolerance:g}; sizes {sizes})", flush=True)
    if result.note:
        log.warning("%s", result.note)
    print(f"wrote {result.path} ({'any input size' if result.dynamic else 'fixed input size'}) "
          f"and {result.path.with_suffix('.json').name}", flush=True)
    log.info("Run dir: %s", HydraConfig.get().runtime.output_dir)


def main() -> None:
    hydra_command(_main, "export")
