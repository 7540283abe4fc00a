"""The papers' figures for any trained model (``python -m diffusion_seg.visualize`` draws them
for image files; :func:`figures` for a normalised image in Python). Every map is upsampled,
nearest-neighbour, to the input size. What is drawn depends on the head (``pixels`` are
``[y, x]`` input pixels; default: the centre and the centres of the four quadrants):

Every head
    ``prediction.png`` (class colours), ``overlay.png`` (colours over the image),
    ``predictions.png`` (image | prediction | overlay with the class legend) and
    ``aux_<name>.png`` for each auxiliary output.

PDN (the PDN paper's Fig. 4 and Table 2)
    ``receptive_field.png``: for each chosen site, the gradient of that site's logit (its
    predicted class, at the classifier's output) w.r.t. the input image, |∂| summed over the
    colour channels, as a heat map over the image — for the network *without* its diffusion
    modules (each module's residual branch ``W_out H`` bypassed: the backbone's own valid
    receptive field, Fig. 4b) and *with* them (Fig. 4c/d). The title of each panel gives the
    area holding 90% of the gradient mass; a fourth panel shows |with − without| on its own
    scale (what the modules change). ``receptive_field_pixel{j}{,_no_modules}.png``
    are the single heat maps. ``layers.png``: the prediction of every diffusion layer's
    auxiliary classifier (``pdn{m}_layer{t}``) next to the final one.

DifNet (the DifNet paper's Fig. 2–4)
    ``image.png`` (chosen pixels numbered), ``score_argmax.png``, ``influence.png``
    (E_i = Σ_k |x_ik|), ``importance.png`` (when the model has one), ``seed_argmax.png``,
    ``walk_{t}_argmax.png``, ``transition_t{t}_pixel{j}.png`` (row i of P_t for chosen
    pixel j, computed as ``softmax(ψ_i · Ψ)``: one row, never the N×N matrix), and the
    composites ``difnet_maps.png`` and ``transitions.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image, ImageDraw
from torch import Tensor

from diffusion_seg.analysis import bypass_pdn_modules, default_pixels, grid_cells, mass_area, receptive_field
from diffusion_seg.data.base import voc_colormap
from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.models.difnet import DifNetHead, transition_rows
from diffusion_seg.models.inference import predict
from diffusion_seg.models.pdn import PDNHead
from diffusion_seg.models.segmentor import Segmentor
from diffusion_seg.plots import colorize, heatmap, overlay


def colorize_labels(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``h×w`` class ids → ``h×w×3`` colours (:func:`diffusion_seg.plots.colorize`)."""
    return colorize(labels, palette)


def colorize_scalar(values: np.ndarray) -> np.ndarray:
    """``h×w`` values → ``h×w×3`` viridis colours (perceptually uniform, readable in grey),
    min..max stretched to the full map (:func:`diffusion_seg.plots.heatmap`)."""
    return heatmap(values)


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


def _rgb(net: Segmentor, image: Tensor, preprocessor: Preprocessor | None) -> np.ndarray:
    """The network input back in RGB: ``preprocessor``'s, else the backbone's statistics."""
    return (preprocessor or Preprocessor.for_backbone(net.backbone)).to_rgb(image)


def _prepare(
    net: Segmentor,
    image: Tensor,
    out_dir: str | Path,
    palette: np.ndarray | None,
    class_names: Sequence[str] | None = None,
) -> tuple[Path, Tensor, tuple[int, int], np.ndarray, list[str]]:
    """What every figure starts from: the output dir (created), the network in eval mode, the
    image as a batch on the network's device, its size, the palette and the class names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net.eval()
    param = next(net.parameters())
    batch = (image if image.dim() == 4 else image[None]).to(param.device, param.dtype)
    palette = voc_colormap(net.num_classes) if palette is None else np.asarray(palette)
    names = list(class_names) if class_names else [f"class_{k}" for k in range(net.num_classes)]
    return out_dir, batch, tuple(batch.shape[-2:]), palette, names


@torch.no_grad()
def visualize(
    net: Segmentor,
    image: Tensor,
    out_dir: str | Path,
    pixels: Sequence[tuple[int, int]] | None = None,
    palette: np.ndarray | None = None,
    preprocessor: Preprocessor | None = None,
) -> list[Path]:
    """Write the PNGs listed in the module docstring for one normalised image.

    Args:
        net: a Segmentor with a :class:`DifNetHead` (put in eval mode here).
        image: ``3×H×W`` (or ``1×3×H×W``) normalised like the training data.
        out_dir: created if needed.
        pixels: ``(y, x)`` input pixels whose P_t rows to show (default: 5 spread points).
        palette: ``K×3`` uint8 class colours (default: the VOC colour map, :func:`~diffusion_seg.data.base.voc_colormap`).
        preprocessor: what normalised ``image`` (default: the backbone's statistics).

    Returns:
        The written files.
    """
    head = net.head
    if not isinstance(head, DifNetHead):
        raise ValueError(
            f"visualize needs a DifNet model (model=difnet), got {type(head).__name__}"
        )
    out_dir, batch, size, palette, _ = _prepare(net, image, out_dir, palette)

    out = net(batch)
    score = out.extras["score"][0].float()
    grid = tuple(score.shape[-2:])
    pixels = list(pixels) if pixels else default_pixels(size)
    cells = grid_cells(pixels, size, grid)
    marks = list(enumerate(pixels, start=1))

    def labels(name: str) -> np.ndarray:
        return colorize_labels(out.extras[name][0].argmax(0).cpu().numpy(), palette)

    rgb = _rgb(net, batch[0], preprocessor)
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



# --------------------------------------------------------------------------- every head


def _labels_at(logits: Tensor, size: tuple[int, int]) -> np.ndarray:
    """Feature-resolution logits ``1×K×h×w`` → class ids at ``size``, nearest-neighbour (the
    grid as the network sees it)."""
    labels = logits[0].float().argmax(0)[None, None].float()
    return torch.nn.functional.interpolate(labels, size=size, mode="nearest")[0, 0].long().cpu().numpy()


def _legend(fig: Figure, class_names: Sequence[str], palette: np.ndarray, present: Sequence[int]) -> None:
    handles = [Patch(facecolor=np.asarray(palette[k]) / 255, edgecolor="0.5", label=class_names[k])
               for k in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7,
                   frameon=False)


def _figure(panels: Sequence[tuple[np.ndarray, str]], columns: int, path: Path, title: str = "",
            class_names: Sequence[str] | None = None, palette: np.ndarray | None = None,
            present: Sequence[int] = (), panel_inches: float = 2.2) -> Path:
    """Labelled panels in a grid (matplotlib, no pyplot), optional class legend below."""
    rows = -(-len(panels) // columns)
    legend = 0.35 if class_names is not None and len(present) else 0.0
    header = 0.25 + 0.17 * (title.count("\n") + 1 if title else 0)  # inches above the panels
    fig = Figure(figsize=(columns * panel_inches, rows * panel_inches + header + legend))
    FigureCanvasAgg(fig)
    for i, (rgb, caption) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    if legend and palette is not None and class_names is not None:
        _legend(fig, class_names, palette, present)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - header / fig.get_figheight(),
                        bottom=(legend + 0.05) / fig.get_figheight(), wspace=0.04, hspace=0.25)
    fig.savefig(path, dpi=100)
    return path


@torch.no_grad()
def visualize_prediction(
    net: Segmentor,
    image: Tensor,
    out_dir: str | Path,
    palette: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    preprocessor: Preprocessor | None = None,
) -> list[Path]:
    """``prediction.png``, ``overlay.png``, ``predictions.png`` and ``aux_<name>.png`` for any
    head (see the module docstring)."""
    out_dir, batch, size, palette, names = _prepare(net, image, out_dir, palette, class_names)
    out = net(batch)
    label = predict(lambda _: out.logits.float(), batch)[0].argmax(0).cpu().numpy()
    rgb = _rgb(net, batch[0], preprocessor)
    written = [
        _save(colorize(label, palette), out_dir / "prediction.png", size),
        _save(overlay(rgb, label, palette, alpha), out_dir / "overlay.png", size),
    ]
    for name, logits in out.aux.items():
        written.append(_save(colorize(_labels_at(logits, size), palette), out_dir / f"aux_{name}.png", size))
    present = [int(k) for k in np.unique(label)]
    written.append(_figure(
        [(rgb, "image"), (colorize(label, palette), "prediction"),
         (overlay(rgb, label, palette, alpha), "overlay")],
        3, out_dir / "predictions.png", f"{type(net.head).__name__}", names, palette, present))
    return written


# --------------------------------------------------------------------------- PDN


def _heat_over(rgb: np.ndarray, values: np.ndarray, mark: tuple[int, int]) -> np.ndarray:
    """Heat map (inferno, max-normalised) blended over the greyscale image, site marked."""
    grey = rgb.astype(np.float32).mean(2, keepdims=True)
    heat = heatmap(values / max(float(values.max()), 1e-12), "inferno").astype(np.float32)
    blend = Image.fromarray((0.35 * grey + 0.65 * heat).clip(0, 255).astype(np.uint8))
    y, x = mark
    ImageDraw.Draw(blend).ellipse([x - 3, y - 3, x + 3, y + 3], outline=(0, 255, 0), width=2)
    return np.asarray(blend)


def visualize_pdn(
    net: Segmentor,
    image: Tensor,
    out_dir: str | Path,
    pixels: Sequence[tuple[int, int]] | None = None,
    palette: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    preprocessor: Preprocessor | None = None,
) -> list[Path]:
    """The PDN figures (module docstring): receptive fields with and without the diffusion
    modules, and every diffusion layer's prediction."""
    head = net.head
    if not isinstance(head, PDNHead):
        raise ValueError(f"visualize_pdn needs a PDN model (model=pdn), got {type(head).__name__}")
    out_dir, batch, size, palette, names = _prepare(net, image, out_dir, palette, class_names)
    rgb = _rgb(net, batch[0], preprocessor)
    with torch.no_grad():
        out = net(batch)
    grid = tuple(out.logits.shape[-2:])
    pixels = list(pixels) if pixels else default_pixels(size)
    cells = grid_cells(pixels, size, grid)
    written: list[Path] = []
    panels: list[tuple[np.ndarray, str]] = []
    for j, (pixel, cell) in enumerate(zip(pixels, cells), start=1):
        with_modules, k = receptive_field(net, batch, cell)
        with bypass_pdn_modules(head):
            without, _ = receptive_field(net, batch, cell, class_index=k)
        marked = _mark(rgb, pixel)
        a_without, a_with = mass_area(without), mass_area(with_modules)
        change = np.abs(with_modules - without)
        share = float(change.max() / max(float(with_modules.max()), 1e-12))
        panels += [
            (marked, f"site {j} (y={pixel[0]}, x={pixel[1]}): {names[k]}"),
            (_heat_over(rgb, without, pixel), f"without modules: 90% in {100 * a_without:.1f}%"),
            (_heat_over(rgb, with_modules, pixel), f"with modules: 90% in {100 * a_with:.1f}%"),
            (_heat_over(rgb, change, pixel), f"|with − without|: max {100 * share:.2g}% of with"),
        ]
        written.append(_save(_heat_over(rgb, with_modules, pixel), out_dir / f"receptive_field_pixel{j}.png", size))
        written.append(_save(_heat_over(rgb, without, pixel), out_dir / f"receptive_field_pixel{j}_no_modules.png", size))
    written.append(_figure(
        panels, 4, out_dir / "receptive_field.png",
        "Valid receptive field |∂ logit(site) / ∂ image| (PDN Fig. 4)\n"
        "90% of the gradient mass lies in the given share of the image"))
    final = _labels_at(out.logits, size)
    layer_panels = [(rgb, "image")]
    present: set[int] = set(np.unique(final).tolist())
    for name, logits in out.aux.items():
        labels = _labels_at(logits, size)
        present |= set(np.unique(labels).tolist())
        written.append(_save(colorize(labels, palette), out_dir / f"aux_{name}.png", size))
        layer_panels.append((colorize(labels, palette), name))
    layer_panels.append((colorize(final, palette), "final (classifier)"))
    written.append(_figure(
        layer_panels, min(len(layer_panels), 6), out_dir / "layers.png",
        "Every diffusion layer's classifier (PDN Table 2), feature grid",
        names, palette, sorted(k for k in present if k < len(names))))
    return written


def _mark(rgb: np.ndarray, pixel: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(rgb.copy())
    y, x = pixel
    ImageDraw.Draw(img).ellipse([x - 3, y - 3, x + 3, y + 3], outline=(255, 0, 0), width=2)
    return np.asarray(img)


# --------------------------------------------------------------------------- DifNet composites


def difnet_composites(out_dir: Path, files: Sequence[Path], walks: int, pixels: int,
                      class_names: Sequence[str], palette: np.ndarray) -> list[Path]:
    """``difnet_maps.png`` (image, score, influence, importance, seed, every walk) and
    ``transitions.png`` (P_t rows: one row per pixel, one column per walk) from the PNGs
    :func:`visualize` wrote."""
    def read(name: str) -> np.ndarray | None:
        path = out_dir / name
        return np.asarray(Image.open(path).convert("RGB")) if path in set(files) else None

    names = [("image.png", "image, pixels numbered"), ("score_argmax.png", "score map x"),
             ("influence.png", "influence Σ|x|"), ("importance.png", "importance M"),
             ("seed_argmax.png", "seed s = M ⊙ x")]
    names += [(f"walk_{t}_argmax.png", f"after walk {t}") for t in range(1, walks + 1)]
    panels = [(img, caption) for name, caption in names if (img := read(name)) is not None]
    written = [_figure(panels, min(len(panels), 5), out_dir / "difnet_maps.png",
                       "DifNet maps (paper Fig. 2 and 4)", class_names, palette,
                       list(range(len(class_names))))]
    rows = [(img, f"P_{t} row of pixel {j}") for j in range(1, pixels + 1) for t in range(1, walks + 1)
            if (img := read(f"transition_t{t}_pixel{j}.png")) is not None]
    if rows:  # one row per pixel, one column per walk
        written.append(_figure(rows, max(walks, 2), out_dir / "transitions.png",
                               "Rows of the transition matrices P_t (paper Fig. 3)", panel_inches=1.8))
    return written


def figures(
    net: Segmentor,
    image: Tensor,
    out_dir: str | Path,
    pixels: Sequence[tuple[int, int]] | None = None,
    palette: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    preprocessor: Preprocessor | None = None,
) -> list[Path]:
    """Every figure for the network's head: predictions for any head, plus PDN's receptive
    fields and layers or DifNet's maps (module docstring). ``image`` is a network input
    (``preprocessor``'s, default the backbone's statistics)."""
    palette = voc_colormap(net.num_classes) if palette is None else np.asarray(palette)
    names = list(class_names) if class_names else [f"class_{k}" for k in range(net.num_classes)]
    written = visualize_prediction(net, image, out_dir, palette, names, alpha, preprocessor)
    if isinstance(net.head, PDNHead):
        written += [p for p in visualize_pdn(net, image, out_dir, pixels, palette, names, preprocessor)
                    if not p.name.startswith("aux_")]
    elif isinstance(net.head, DifNetHead):
        size = tuple(image.shape[-2:])
        chosen = list(pixels) if pixels else default_pixels(size)
        maps = visualize(net, image, out_dir, chosen, palette, preprocessor)
        written += maps + difnet_composites(Path(out_dir), maps, len(net.head.walks), len(chosen), names, palette)
    return written
