"""Export round trips on CPU: FCN, DeepLab-v2, PDN (a module hooked inside the backbone and one
on its output) and DifNet, as ONNX, TorchScript and torch.export programs, reloaded and compared
with the PyTorch model; the command on a trained checkpoint; clear failures."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from diffusion_seg.cli.export import run_export
from diffusion_seg.config import compose_config
from diffusion_seg.deploy import (
    EXPORTERS,
    INPUT_DTYPES,
    SUFFIXES,
    DeployableSegmentor,
    ExportError,
    export,
    load_exported,
    sample_input,
)
from diffusion_seg.errors import UserError
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.difnet import DifNetHead
from diffusion_seg.models.heads import DeepLabV2Head, FCNHead
from diffusion_seg.models.inference import predict
from diffusion_seg.models.pdn import PDNHead
from diffusion_seg.models.segmentor import Segmentor

from .conftest import run_cli

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export needs the export extra (onnx, onnxruntime)")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HEADS = {
    "fcn": functools.partial(FCNHead, channels=8),
    "deeplabv2": functools.partial(DeepLabV2Head, dilations=(2, 4)),
    "pdn": functools.partial(PDNHead, neighbors=8, layers=1, hidden=8, modules=2, classifier="1x1"),
    "difnet": functools.partial(DifNetHead, walks=2, psi_channels=8, aspp=False),
}


@functools.cache
def tiny(name: str) -> Segmentor:
    torch.manual_seed(0)
    net = Segmentor(TimmBackbone("test_resnet"), HEADS[name], 3).eval()
    if name == "pdn":
        with torch.no_grad():
            for m in net.head.pdn:
                m.proj_out.weight.normal_(0, 0.5)
    return net


def test_the_wrapper_is_eval_on_raw_pixels():
    net = tiny("fcn")
    module = DeployableSegmentor(net, MEAN, STD, 8)
    x = sample_input(45, 61)
    normalised = (x.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    padded = torch.nn.functional.pad(normalised, (0, 3, 0, 3))
    padded[..., 45:, :] = (-torch.tensor(MEAN) / torch.tensor(STD))[:, None, None]
    padded[..., :, 61:] = (-torch.tensor(MEAN) / torch.tensor(STD))[:, None, None]
    with torch.no_grad():
        expected = predict(lambda i: net(i).logits, padded)[..., :45, :61]
        got = module(x)
    assert got.shape == (1, 3, 45, 61) and torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(module(x.float()), got)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "torch_export"])
@pytest.mark.parametrize("head", list(HEADS))
def test_round_trip(head, fmt, tmp_path):
    """Written, reloaded with the format's runtime, compared with PyTorch. Static shapes keep
    the test fast (a dynamic export traces 5–10× longer); TorchScript is checked at a second
    size, and the command's test covers a dynamic export."""
    samples = [sample_input(37, 51), sample_input(29, 43, seed=1)]
    dynamic = fmt == "torchscript"  # tracing is as fast either way
    result = export(tiny(head), fmt, tmp_path / f"{head}{SUFFIXES[fmt]}", MEAN, STD, 8, samples, dynamic=dynamic)
    assert result.path.is_file() and result.max_abs_diff <= 1e-4
    assert result.dynamic == dynamic and len(result.checked_sizes) == (2 if dynamic else 1)
    print(f"{head} {fmt}: max abs diff {result.max_abs_diff:.3g}")


@pytest.mark.parametrize("input_dtype", list(INPUT_DTYPES))
def test_onnx_takes_its_input_dtype_and_sessions_print_no_warning(input_dtype, tmp_path, capfd):
    """The file takes the dtype it was written for, with ONNX Runtime as a user runs it (default
    session options), equal to PyTorch; PDN's ring kernels once left CastLike nodes that made
    every session print a constant-folding warning per node. The other dtype is refused."""
    net = tiny("pdn")
    dtype = INPUT_DTYPES[input_dtype]
    result = export(net, "onnx", tmp_path / "pdn.onnx", MEAN, STD, 8, [sample_input(37, 51)],
                    dynamic=False, input_dtype=input_dtype)
    assert result.input_dtype == input_dtype
    capfd.readouterr()
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = sample_input(37, 51, seed=3).to(dtype)
    (got,) = session.run(None, {"image": x.numpy()})
    assert "[W:onnxruntime" not in capfd.readouterr().err
    assert session.get_inputs()[0].type == {"float32": "tensor(float)", "uint8": "tensor(uint8)"}[input_dtype]
    with torch.no_grad():
        expected = DeployableSegmentor(net, MEAN, STD, 8)(x)
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-4)
    other = next(d for d in INPUT_DTYPES.values() if d != dtype)
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument):
        session.run(None, {"image": x.to(other).numpy()})


def test_an_exporter_failure_names_head_format_and_reason(tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("aten::foo is not supported at opset 18\nlong details")

    monkeypatch.setitem(EXPORTERS, "onnx", fails)
    with pytest.raises(ExportError) as info:
        export(tiny("difnet"), "onnx", tmp_path / "x.onnx", MEAN, STD, 8, [sample_input(16, 16)], dynamic=False)
    assert str(info.value) == ("DifNetHead cannot be exported as onnx: RuntimeError: aten::foo is not "
                               "supported at opset 18. Try format=torch_export.")
    with pytest.raises(ExportError, match="format='tflite' is invalid"):
        export(tiny("fcn"), "tflite", tmp_path / "x", MEAN, STD, 8)


@pytest.mark.slow
def test_export_command(trained_pdn, tmp_path):
    """TorchScript here (tracing takes a second; the dynamic ONNX export of the same model
    takes 15–25 s on 2 CPU cores): the command checks two sizes, so "any input size" is tested."""
    _, ckpt = trained_pdn
    proc = run_cli("diffusion_seg.export", f"ckpt_path={ckpt}", "format=torchscript",
                   f"output={tmp_path / 'model'}", "input_size=[64,72]", log_dir=tmp_path / "logs")
    assert "max abs diff vs PyTorch" in proc.stdout and "sizes 64×72, 35×41" in proc.stdout
    assert "any input size" in proc.stdout
    meta = json.loads((tmp_path / "model" / "last.json").read_text())
    assert meta["dynamic_size"] and meta["class_names"][1] == "disk_red" and meta["check"]["max_abs_diff"] < 1e-3
    run = load_exported(tmp_path / "model" / "last.pt", "torchscript")
    with torch.no_grad():
        assert tuple(run(sample_input(41, 90)).shape) == (1, 5, 41, 90)
    cfg = compose_config([f"ckpt_path={ckpt}", "format=torchscript", f"output={tmp_path / 'model'}"], "export")
    with pytest.raises(UserError, match="last.pt exists; pass overwrite=true"):
        run_export(cfg)


@pytest.mark.slow
def test_onnx_command_json_describes_the_model(trained_pdn, tmp_path):
    """The .json's input dtype and layout are the ONNX model's: uint8 here, any batch size."""
    _, ckpt = trained_pdn
    run_cli("diffusion_seg.export", f"ckpt_path={ckpt}", "format=onnx", "input_dtype=uint8",
            f"output={tmp_path / 'model.onnx'}", "input_size=[40,56]", log_dir=tmp_path / "logs")
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["input_dtype"] == "uint8" and meta["input"].startswith("N×3×H×W RGB uint8") and meta["dynamic_size"]
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    (logits,) = session.run(None, {"image": sample_input(33, 47, batch=3).numpy()})
    assert logits.shape == (3, len(meta["class_names"]), 33, 47)
