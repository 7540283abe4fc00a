"""Look inside a trained DifNet: the paper's Fig. 2–4 for one image.

    python -m diffusion_seg.visualize --ckpt run/checkpoints/last.ckpt --image cat.jpg \\
        --out viz/ [--pixels 120,200 300,80]

writes PNGs (every map upsampled, nearest-neighbour, to the input size):

* ``image.png``: the input, chosen pixels numbered;
* ``score_argmax.png``: argmax of the score map x (Fig. 2);
* ``influence.png``: influence map E_i = Σ_k |x_ik| (Fig. 2, Sec. 5.3);
* ``importance.png``: importance map M (Fig. 2; absent when the model has none);
* ``seed_argmax.png`` and ``walk_{t}_argmax.png``: the seed and the prediction after each
  random walk ⊕_t (Fig. 4);
* ``transition_t{t}_pixel{j}.png``: row i of P_t for chosen pixel j, reshaped to the grid
  (Fig. 3), computed as ``softmax(ψ_i · Ψ)`` — one row, never the N×N matrix.

Pixels are given as ``y,x`` in input-image coordinates; the default is the centre and the
centres of the four quadrants.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw
from torch import Tensor

from diffusion_seg.cli.errors import user_errors
from diffusion_seg.data.base import voc_colormap
from diffusion_seg.lightning.checkpoint import load_segmentor
from diffusion_seg.models.difnet import DifNetHead, transition_rows
from diffusion_seg.models.segmentor import Segmentor

def colorize_labels(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``h×w`` class ids → ``h×w×3`` colours."""
    return np.asarray(palette, dtype=np.uint8)[labels]


def colorize_scalar(values: np.ndarray) -> np.ndarray:
    """``h×w`` values → ``h×w×3`` viridis colours (perceptually uniform, readable in grey),
    min..max stretched to the full map."""
    lo, hi = float(values.min()), float(values.max())
    t = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return (matplotlib.colormaps["viridis"](t)[..., :3] * 255).round().astype(np.uint8)


def grid_cells(
    pixels: Sequence[tuple[int, int]], image_size: tuple[int, int], grid_size: tuple[int, int]
) -> list[tuple[int, int]]:
    """Input-image pixels ``(y, x)`` → the grid nodes ``(gy, gx)`` that hold them."""
    (height, width), (h, w) = image_size, grid_size
    cells = []
    for y, x in pixels:
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"--pixels {y},{x} lies outside the {height}×{width} image")
        cells.append((y * h // height, x * w // width))
    return cells


def default_pixels(image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """The centre, then the centres of the four quadrants."""
    height, width = image_size
    return [(height // 2, width // 2)] + [
        (height * fy // 4, width * fx // 4) for fy in (1, 3) for fx in (1, 3)
    ]


def _save(
    rgb: np.ndarray,
    path: Path,
    size: tuple[int, int],
    marks: Sequence[tuple[int, tuple[int, int]]] = (),
) -> Path:
    """Upsample to ``size`` (H, W) nearest-neighbour, draw numbered marks, write a PNG."""
    img = Image.fromarray(rgb).resize((size[1], size[0]), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for number, (y, x) in marks:
        draw.rectangle([x - 3, y - 3, x + 3, y + 3], outline=(255, 255, 255), width=2)
        draw.text((x + 5, y - 5), str(number), fill=(255, 255, 255))
    img.save(path)
    return path


def _denormalise(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    rgb = image.float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


@torch.no_grad()
def visualize(
    net: Segmentor,
    image: Tensor,
    out_dir: str | Path,
    pixels: Sequence[tuple[int, int]] | None = None,
    palette: np.ndarray | None = None,
) -> list[Path]:
    """Write the PNGs listed in the module docstring for one normalised image.

    Args:
        net: a Segmentor with a :class:`DifNetHead` (put in eval mode here).
        image: ``3×H×W`` (or ``1×3×H×W``) normalised like the training data.
        out_dir: created if needed.
        pixels: ``(y, x)`` input pixels whose P_t rows to show (default: 5 spread points).
        palette: ``K×3`` uint8 class colours (default: the VOC colour map, :func:`~diffusion_seg.data.base.voc_colormap`).

    Returns:
        The written files.
    """
    head = net.head
    if not isinstance(head, DifNetHead):
        raise ValueError(
            f"visualize needs a DifNet model (model=difnet), got {type(head).__name__}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net.eval()
    param = next(net.parameters())
    batch = (image if image.dim() == 4 else image[None]).to(param.device, param.dtype)
    size = tuple(batch.shape[-2:])
    palette = voc_colormap(net.num_classes) if palette is None else np.asarray(palette)

    out = net(batch)
    score = out.extras["score"][0].float()
    grid = tuple(score.shape[-2:])
    pixels = list(pixels) if pixels else default_pixels(size)
    cells = grid_cells(pixels, size, grid)
    marks = list(enumerate(pixels, start=1))

    def labels(name: str) -> np.ndarray:
        return colorize_labels(out.extras[name][0].argmax(0).cpu().numpy(), palette)

    rgb = _denormalise(batch[0], net.backbone.mean, net.backbone.std)
    written = [
        _save(rgb, out_dir / "image.png", size, marks),
        _save(labels("score"), out_dir / "score_argmax.png", size),
        _save(colorize_scalar(score.abs().sum(0).cpu().numpy()), out_dir / "influence.png", size),
        _save(labels("seed"), out_dir / "seed_argmax.png", size),
    ]
    if "importance" in out.extras:
        importance = out.extras["importance"][0, 0].float().cpu().numpy()
        written.append(_save(colorize_scalar(importance), out_dir / "importance.png", size))
    written += [
        _save(labels(f"walk_{t}"), out_dir / f"walk_{t}_argmax.png", size)
        for t in range(1, len(head.walks) + 1)
    ]
    index = torch.tensor([gy * grid[1] + gx for gy, gx in cells], device=batch.device)
    for t, psi in enumerate(head.similarities(batch, grid), start=1):
        rows = transition_rows(psi, index)[0].reshape(len(cells), *grid).cpu().numpy()
        for j, row in enumerate(rows, start=1):
            path = out_dir / f"transition_t{t}_pixel{j}.png"
            written.append(_save(colorize_scalar(row), path, size, [marks[j - 1]]))
    return written


def load_image(path: str | Path, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """RGB file → normalised ``3×H×W`` float tensor (as the evaluation pipeline does)."""
    with Image.open(path) as img:
        rgb = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
    mean_, std_ = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    return (rgb.float() / 255 - mean_) / std_


def _palette_from_config(cfg: DictConfig) -> np.ndarray | None:
    """The training dataset's class colours, when its class declares them."""
    from hydra.utils import get_class

    try:
        palette = getattr(get_class(cfg.dataset.dataset_class), "palette", None)
    except Exception:  # any unresolvable dataset target: fall back to generated colours
        return None
    return None if palette is None else np.asarray(palette, dtype=np.uint8)


def _pixel(text: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pixels wants y,x integer pairs, got {text!r}")
    return y, x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by diffusion_seg.train")
    parser.add_argument("--image", required=True, help="an RGB image file")
    parser.add_argument("--out", required=True, help="output directory for the PNGs")
    parser.add_argument("--pixels", nargs="*", type=_pixel, default=None, metavar="Y,X")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    with user_errors():
        net, cfg = load_segmentor(args.ckpt)
    net = net.to(args.device)
    # normalise as in training: the dataset's statistics if it set them, else the backbone's
    mean = OmegaConf.select(cfg, "dataset.mean") or net.backbone.mean
    std = OmegaConf.select(cfg, "dataset.std") or net.backbone.std
    image = load_image(args.image, list(mean), list(std))
    files = visualize(net, image, args.out, args.pixels, _palette_from_config(cfg))
    print(f"wrote {len(files)} PNGs to {args.out}")


if __name__ == "__main__":
    main()
