"""The DifNet visualisation writes the paper's Fig. 2–4 PNGs for a freshly built tiny model."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.difnet import DifNetHead
from diffusion_seg.models.heads import DeepLabV2Head
from diffusion_seg.models.segmentor import Segmentor
from diffusion_seg.cli.visualize import colorize_scalar, grid_cells, load_image, main, visualize
from diffusion_seg.data.base import voc_colormap


def tiny_difnet(walks: int = 3) -> Segmentor:
    torch.manual_seed(0)
    return Segmentor(TimmBackbone("test_resnet"), functools.partial(DifNetHead, walks=walks), 4)


def test_visualize_writes_every_map(tmp_path: Path) -> None:
    net = tiny_difnet(walks=3)
    image = torch.randn(3, 40, 56)
    pixels = [(5, 7), (39, 55)]
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    files = visualize(net, image, tmp_path, pixels=pixels, palette=palette)
    expected = {
        "image.png", "score_argmax.png", "influence.png", "importance.png", "seed_argmax.png",
        *(f"walk_{t}_argmax.png" for t in (1, 2, 3)),
        *(f"transition_t{t}_pixel{j}.png" for t in (1, 2, 3) for j in (1, 2)),
    }
    assert {f.name for f in files} == expected
    assert {f.name for f in tmp_path.iterdir()} == expected
    for f in files:
        with Image.open(f) as img:
            assert img.size == (56, 40) and img.mode == "RGB"
    # label maps use only palette colours
    with Image.open(tmp_path / "walk_3_argmax.png") as img:
        colours = {tuple(c) for c in np.asarray(img).reshape(-1, 3)}
    assert colours <= {tuple(c) for c in palette}


def test_visualize_default_pixels_and_no_importance(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = functools.partial(DifNetHead, walks=1, importance=False)
    net = Segmentor(TimmBackbone("test_resnet"), head, 3)
    names = {f.name for f in visualize(net, torch.randn(1, 3, 32, 32), tmp_path)}
    assert "importance.png" not in names
    assert {f"transition_t1_pixel{j}.png" for j in range(1, 6)} <= names


def test_visualize_rejects_other_heads(tmp_path: Path) -> None:
    net = Segmentor(TimmBackbone("test_resnet"), DeepLabV2Head, 3)
    with pytest.raises(ValueError, match="model=difnet"):
        visualize(net, torch.randn(3, 32, 32), tmp_path)


def test_helpers(tmp_path: Path) -> None:
    palette = voc_colormap(21)
    assert palette.shape == (21, 3) and len({tuple(c) for c in palette}) == 21
    assert palette[1].tolist() == [128, 0, 0] and palette[15].tolist() == [192, 128, 128]  # VOC
    rgb = colorize_scalar(np.array([[0.0, 1.0], [2.0, 3.0]]))
    assert rgb.shape == (2, 2, 3) and rgb[0, 0].tolist() == [68, 1, 84]
    assert grid_cells([(0, 0), (47, 63)], (48, 64), (6, 8)) == [(0, 0), (5, 7)]
    with pytest.raises(ValueError, match="outside"):
        grid_cells([(48, 0)], (48, 64), (6, 8))
    path = tmp_path / "x.png"
    Image.fromarray(np.full((4, 6, 3), 255, dtype=np.uint8)).save(path)
    x = load_image(path, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (3, 4, 6) and torch.allclose(x, torch.ones_like(x))


def test_main_needs_a_checkpoint(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(tmp_path / "none.ckpt"), "--image", "x.png", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: no checkpoint at {tmp_path / 'none.ckpt'}")
