"""`predict`: label PNGs and overlays for a folder of any images, equal to eval's argmax."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_seg.checkpoints import load_segmentor
from diffusion_seg.cli.predict import run_predict
from diffusion_seg.config import compose_config
from diffusion_seg.data.base import read_image
from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.data.transforms import build_eval_transform
from diffusion_seg.errors import BadSampleError, ConfigError, UserError
from diffusion_seg.inference import Predictor, collect_inputs, load_rgb
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import DeepLabV2Head
from diffusion_seg.models.inference import predict
from diffusion_seg.models.segmentor import Segmentor

from .conftest import run_cli

# name → (size H×W, how it is stored); read back by eval's reader except the 16-bit one
SIZES = {"rgb": (50, 70), "wide": (37, 121), "grey": (33, 40), "rgba": (64, 64), "cmyk": (30, 45),
         "g16": (20, 90)}


def mixed_folder(root: Path) -> Path:
    """RGB (PNG and JPEG), grey, RGBA, CMYK JPEG, 16-bit grey in a sub-folder, one corrupt file
    and a non-image file."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (*SIZES["rgb"], 3), dtype=np.uint8)).save(root / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (*SIZES["wide"], 3), dtype=np.uint8)).save(root / "wide.jpg")
    Image.fromarray(rng.integers(0, 256, SIZES["grey"], dtype=np.uint8)).save(root / "grey.png")
    Image.fromarray(rng.integers(0, 256, (*SIZES["rgba"], 4), dtype=np.uint8), "RGBA").save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (*SIZES["cmyk"], 4), dtype=np.uint8), "CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65536, SIZES["g16"]).astype(np.uint16)).save(root / "sub" / "g16.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    (root / "notes.txt").write_text("not an image")
    return root


def eval_argmax(net: Segmentor, rgb: np.ndarray, mean, std, divisor: int) -> np.ndarray:
    """What eval computes: eval transform (pad + normalise), predict, argmax, padding cut off."""
    image = build_eval_transform(mean, std, divisor)(image=rgb)["image"][None]
    with torch.no_grad():
        scores = predict(lambda x: net(x).logits, image)
    return scores.argmax(1)[0, : rgb.shape[0], : rgb.shape[1]].numpy()


@pytest.mark.slow
def test_predict_writes_labels_equal_to_eval_for_a_mixed_folder(trained_pdn, tmp_path):
    _, ckpt = trained_pdn
    inputs = mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    proc = run_cli("diffusion_seg.predict", f"ckpt_path={ckpt}", f"input={inputs}", f"output={out}",
                   "save_probability=true", "batch_size=2", log_dir=tmp_path / "logs", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "broken.jpg" in proc.stderr and "1 of 7 input(s) could not be read" in proc.stderr
    assert "Traceback" not in proc.stderr

    net, cfg = load_segmentor(ckpt)
    mean, std = list(net.backbone.mean), list(net.backbone.std)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if not p.stem.endswith("_prob"))
    assert written == sorted(f"{'sub/' if n == 'g16' else ''}{n}.png" for n in SIZES)
    for name, (h, w) in SIZES.items():
        base = out / ("sub" if name == "g16" else "") / name
        with Image.open(f"{base}.png") as img:
            assert img.mode == "P" and img.size == (w, h)
            palette = np.asarray(img.getpalette()[:15]).reshape(5, 3)
            label = np.asarray(img)
        assert palette.tolist() == [[0, 0, 0], [230, 60, 60], [60, 90, 230], [250, 160, 120], [120, 200, 250]]
        with Image.open(f"{base}_overlay.jpg") as img:
            assert img.size == (w, h) and img.mode == "RGB"
        with Image.open(f"{base}_prob.png") as img:
            prob = np.asarray(img)
            assert img.size == (w, h) and prob.min() >= 255 // 5  # winning class ≥ 1/K
        if name != "g16":  # eval's reader clips 16-bit grey; predict scales it
            src = next((inputs).glob(f"{name}.*"))
            assert np.array_equal(label, eval_argmax(net, read_image(src), mean, std, 8)), name
    assert not (out / "broken.png").exists()


def _cfg(tmp_path: Path, *overrides: str):
    return compose_config([f"ckpt_path={tmp_path / 'none.ckpt'}", *overrides], "predict")


def test_output_inside_input_and_existing_outputs_are_refused(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.new("RGB", (16, 16)).save(inputs / "a.png")
    with pytest.raises(ConfigError, match="lies inside the input folder"):
        run_predict(_cfg(tmp_path, f"input={inputs}", f"output={inputs / 'pred'}"))
    out = tmp_path / "out"
    (out).mkdir()
    (out / "a_overlay.jpg").write_bytes(b"old")
    with pytest.raises(UserError, match=rf"{out / 'a_overlay.jpg'} exists; pass overwrite=true"):
        run_predict(_cfg(tmp_path, f"input={inputs}", f"output={out}"))
    # overwrite=true gets past the check (to the missing checkpoint)
    with pytest.raises(UserError, match="no checkpoint at"):
        run_predict(_cfg(tmp_path, f"input={inputs}", f"output={out}", "overwrite=true"))
    with pytest.raises(ConfigError, match="device='gpu' is invalid"):
        run_predict(_cfg(tmp_path, f"input={inputs}", f"output={out}", "device=gpu"))


def test_inputs_folder_file_glob(tmp_path):
    root = mixed_folder(tmp_path / "in")
    items, base = collect_inputs(str(root))
    assert base == root and [i.name for i in items] == ["broken", "cmyk", "grey", "rgb", "rgba", "sub/g16", "wide"]
    items, base = collect_inputs(str(root / "*.png"))
    assert base == root and [i.name for i in items] == ["grey", "rgb", "rgba"]
    items, base = collect_inputs(str(root / "rgb.png"))
    assert base is None and [i.name for i in items] == ["rgb"]
    with pytest.raises(ConfigError, match="does not exist"):
        collect_inputs(str(root / "nope"))
    (root / "rgb.jpg").write_bytes((root / "wide.jpg").read_bytes())
    with pytest.raises(ConfigError, match="would both be written as rgb.png"):
        collect_inputs(str(root))


def test_every_image_mode_becomes_rgb(tmp_path):
    root = mixed_folder(tmp_path / "in")
    for path, (h, w) in [(root / "grey.png", SIZES["grey"]), (root / "rgba.png", SIZES["rgba"]),
                         (root / "cmyk.jpg", SIZES["cmyk"]), (root / "sub" / "g16.png", SIZES["g16"])]:
        rgb = load_rgb(path)
        assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8, path
    g16 = np.asarray(Image.open(root / "sub" / "g16.png")).astype(np.float64)
    assert np.abs(load_rgb(root / "sub" / "g16.png")[..., 0] - g16 / 65535 * 255).max() <= 0.5
    assert np.array_equal(load_rgb(root / "rgba.png"), read_image(root / "rgba.png"))
    with pytest.raises(BadSampleError, match="broken.jpg"):
        load_rgb(root / "broken.jpg")


def test_batches_and_sliding_window_give_the_image_size():
    torch.manual_seed(0)
    net = Segmentor(TimmBackbone("test_resnet"), functools.partial(DeepLabV2Head), 3).eval()
    mean, std = [0.5] * 3, [0.25] * 3
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (45, 61, 3), dtype=np.uint8) for _ in range(2)]
    whole = Predictor(net, Preprocessor(mean, std, 8))
    tensors, valid = zip(*(whole.prepare(i) for i in images))
    assert tensors[0].shape == (3, 48, 64) and valid[0] == (45, 61)
    batched = whole(torch.stack(tensors), valid, [i.shape[:2] for i in images])
    single = whole(tensors[1][None], valid[1:], [images[1].shape[:2]])
    assert np.array_equal(batched[1][0], single[0][0]) and batched[0][0].shape == (45, 61)
    slide = Predictor(net, Preprocessor(mean, std, 8), {"mode": "slide", "crop": 32, "stride": 24, "flip": True})
    label, prob = slide(tensors[0][None], valid[:1], [(45, 61)])[0]
    assert label.shape == prob.shape == (45, 61) and 1 / 3 - 1e-6 <= prob.min() and prob.max() <= 1
    resized = Predictor(net, Preprocessor(mean, std, 8, resize=32))
    tensor, size = resized.prepare(images[0])
    assert tensor.shape == (3, 24, 32) and size == (24, 32)
    assert resized(tensor[None], [size], [(45, 61)])[0][0].shape == (45, 61)
