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

The work is :mod:`diffusion_seg.inference`'s (a :class:`~diffusion_seg.inference.Predictor`
does the same from Python); this module parses the options and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from diffusion_seg import CONFIG_DIR
from diffusion_seg.builders import compile_from_config
from diffusion_seg.checkpoints import load_segmentor
from diffusion_seg.cli.console import log, print_config
from diffusion_seg.cli.errors import exit_if_any_failed, hydra_command, user_errors
from diffusion_seg.config import register_resolvers
from diffusion_seg.errors import ConfigError, UserError
from diffusion_seg.inference import (
    DEVICES,
    Summary,
    checkpoint_palette,
    collect_inputs,
    check_output,
    predict_files,
    predictor_for,
    select_device,
)
from diffusion_seg.plots import prediction_paths
from diffusion_seg.runtime import keep_freed_memory

register_resolvers()

# The values `--help` lists for the options that take one of a few.
OPTION_CHOICES = {"device": DEVICES}
def _progress(total: int) -> Any:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("•"),
                    TimeElapsedColumn(), TextColumn("• ETA"), TimeRemainingColumn(),
                    disable=total == 0)


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
    inference = OmegaConf.to_container(cfg.task.inference, resolve=True)
    assert isinstance(inference, dict)
    predictor = predictor_for(net, train_cfg, inference, device, cfg.get("resize"))
    palette = checkpoint_palette(train_cfg, net.num_classes)
    log.info("Predicting %d image(s) with %s (%s, %s) on %s → %s", len(items),
             Path(cfg.ckpt_path).name, type(net.head).__name__,
             f"{len(train_cfg.class_names)} classes", device, output)
    with _progress(len(items)) as progress:
        task = progress.add_task("predict", total=len(items))
        return predict_files(predictor, items, output, palette, int(cfg.batch_size), overlay,
                             probability, float(cfg.overlay_alpha), lambda: progress.advance(task))


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
