"""`visualize`: the DifNet maps (Fig. 2–4), PDN's receptive fields with and without its modules
and per-layer predictions, predictions for any head; from tiny models and trained checkpoints."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_seg.analysis import grid_cells
from diffusion_seg.cli.visualize import main
from diffusion_seg.data.base import voc_colormap
from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.figures import colorize_scalar, visualize
from diffusion_seg.inference import load_rgb
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.difnet import DifNetHead
from diffusion_seg.models.heads import DeepLabV2Head
from diffusion_seg.models.segmentor import Segmentor


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
    x = Preprocessor((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).normalise_rgb(load_rgb(path))
    assert x.shape == (3, 4, 6) and torch.allclose(x, torch.ones_like(x))


def test_main_needs_a_checkpoint(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(tmp_path / "none.ckpt"), "--image", "x.png", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: no checkpoint at {tmp_path / 'none.ckpt'}")


# ---------------------------------------------------------------- every head, PDN, the command

from diffusion_seg.analysis import bypass_pdn_modules, mass_area, receptive_field  # noqa: E402
from diffusion_seg.cli.visualize import translate_legacy  # noqa: E402
from diffusion_seg.errors import ConfigError  # noqa: E402
from diffusion_seg.figures import figures  # noqa: E402
from diffusion_seg.models.pdn import PDNHead  # noqa: E402


def tiny_pdn(modules: int = 1) -> Segmentor:
    torch.manual_seed(0)
    head = functools.partial(PDNHead, neighbors=8, layers=2, hidden=8, modules=modules)
    net = Segmentor(TimmBackbone("test_resnet"), head, 3).eval()
    with torch.no_grad():  # a trained module writes into the stream (proj_out starts at 0)
        for m in net.head.pdn:
            m.proj_out.weight.normal_(0, 1.0)
    return net


def test_pdn_bypass_is_the_network_without_its_modules():
    net = tiny_pdn(modules=2)  # one module hooked inside the backbone, one on its output
    x = torch.randn(1, 3, 48, 64)
    weights = [m.proj_out.weight.clone() for m in net.head.pdn]
    with torch.no_grad():
        full = net(x).logits
        with bypass_pdn_modules(net.head):
            bypassed = net(x).logits
            zeroed = all(float(m.proj_out.weight.abs().max()) == 0 for m in net.head.pdn)
    assert zeroed and not torch.allclose(full, bypassed)
    assert all(torch.equal(w, m.proj_out.weight) for w, m in zip(weights, net.head.pdn))  # restored
    rf_with, k = receptive_field(net, x, (3, 4))
    with bypass_pdn_modules(net.head):
        rf_without, _ = receptive_field(net, x, (3, 4), class_index=k)
    assert rf_with.shape == (48, 64) and rf_with.min() >= 0 and not np.allclose(rf_with, rf_without)
    assert 0 < mass_area(rf_with) <= 1 and mass_area(np.zeros((4, 4))) == 0.0
    assert mass_area(np.eye(10)) == pytest.approx(0.09)  # 9 of the 10 equal values


def test_figures_for_pdn_and_other_heads(tmp_path: Path) -> None:
    names = {f.name for f in figures(tiny_pdn(), torch.randn(3, 40, 56), tmp_path / "pdn", pixels=[(20, 28)])}
    assert {"prediction.png", "overlay.png", "predictions.png", "receptive_field.png", "layers.png",
            "receptive_field_pixel1.png", "receptive_field_pixel1_no_modules.png",
            "aux_pdn1_layer1.png", "aux_pdn1_layer2.png"} <= names
    with Image.open(tmp_path / "pdn" / "aux_pdn1_layer2.png") as img:
        assert img.size == (56, 40)
    net = Segmentor(TimmBackbone("test_resnet"), DeepLabV2Head, 3)
    names = {f.name for f in figures(net, torch.randn(3, 32, 40), tmp_path / "dl")}
    assert names == {"prediction.png", "overlay.png", "predictions.png"}


def test_old_flags_become_overrides():
    assert translate_legacy(["--ckpt", "a.ckpt", "--image=x.png", "--out", "o", "--pixels", "1,2", "3,4",
                             "device=cpu"]) == [
        "ckpt_path=a.ckpt", "input=x.png", "output=o", "device=cpu", "pixels=[[1,2],[3,4]]"]
    with pytest.raises(ConfigError, match="unknown option --bogus; usage: python -m diffusion_seg.visualize ckpt_path="):
        translate_legacy(["--bogus", "1"])


@pytest.mark.slow
def test_pdn_figures_from_a_trained_checkpoint(trained_pdn, tmp_path: Path, capsys) -> None:
    _, ckpt = trained_pdn
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(image)
    assert main([f"ckpt_path={ckpt}", f"input={image}", f"output={tmp_path / 'viz'}", "pixels=[[32,40]]"]) == 0
    for name in ("receptive_field.png", "receptive_field_pixel1.png", "receptive_field_pixel1_no_modules.png",
                 "layers.png", "aux_pdn1_layer1.png", "aux_pdn1_layer2.png", "predictions.png"):
        assert (tmp_path / "viz" / name).is_file(), name
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_difnet_figures_from_a_trained_checkpoint_with_the_old_flags(trained_difnet, tmp_path: Path) -> None:
    _, ckpt = trained_difnet
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    main(["--ckpt", str(ckpt), "--image", str(folder), "--out", str(tmp_path / "viz"), "--pixels", "10,10"])
    for name in ("a", "b"):  # a folder: one sub-folder per image
        out = tmp_path / "viz" / name
        for png in ("difnet_maps.png", "transitions.png", "importance.png", "walk_2_argmax.png",
                    "transition_t2_pixel1.png", "predictions.png"):
            assert (out / png).is_file(), (name, png)


def test_unreadable_images_are_named_and_skipped_as_predict_does(tmp_path: Path, monkeypatch, capsys) -> None:
    """A corrupt file among good ones: the others are drawn, then every skipped file is named
    and the command exits with 1 (it used to stop at the first with exit 2)."""
    from omegaconf import OmegaConf

    import diffusion_seg.checkpoints as checkpoint

    net = Segmentor(TimmBackbone("test_resnet"), DeepLabV2Head, 3).eval()
    monkeypatch.setattr(checkpoint, "load_segmentor",
                        lambda path: (net, OmegaConf.create({"class_names": ["a", "b", "c"]})))
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a", "c"):
        Image.fromarray(np.zeros((24, 32, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (tmp_path / "x.ckpt").touch()  # read by the patched loader only
    with pytest.raises(SystemExit) as exit_info:
        main([f"ckpt_path={tmp_path / 'x.ckpt'}", f"input={folder}", f"output={tmp_path / 'viz'}"])
    assert exit_info.value.code == 1
    assert (tmp_path / "viz" / "a" / "predictions.png").is_file() and (tmp_path / "viz" / "c" / "predictions.png").is_file()
    err = capsys.readouterr().err
    assert f"error: 1 of 3 input(s) could not be read and were skipped:\n  cannot read image {folder / 'b.jpg'}" in err
    assert "Traceback" not in err
