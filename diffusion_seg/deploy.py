"""A trained network as one deployable module, and its export to ONNX, TorchScript and
``torch.export`` programs (torch only: no Lightning, no Hydra).

:class:`DeployableSegmentor` does whole-image inference exactly as ``eval`` does, with the
preprocessing inside, so a deployment feeds raw pixels::

    input   N×3×H×W RGB in 0..255 (any N, H, W), float32 or uint8: the PyTorch module takes
            either; an exported file takes the one it was written for (``input_dtype``)
    pad     bottom-right to a multiple of the output stride with 0 (eval's padding)
    norm    (x − 255·mean) / (255·std)
            (both :class:`~diffusion_seg.data.preprocess.Preprocessor`'s, as in eval)
    net     logits at feature resolution
    output  N×K×H×W float32 logits, bilinearly upsampled to the padded size, cropped to H×W
            (argmax over K = the class map)

:func:`export` writes one of :data:`FORMATS`, reloads the file with its runtime and compares
its output with the PyTorch module's on a sample (:func:`check`): a format a network cannot
use fails with :class:`ExportError` naming the head, the format and the exporter's reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.errors import UserError
from diffusion_seg.models.segmentor import Segmentor

FORMATS = ("onnx", "torchscript", "torch_export")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "torch_export": ".pt2"}
# The input dtypes an export can be written for. An ONNX input and a torch.export program have
# one dtype each (ONNX Runtime refuses any other), so the file is written for one: float32, what
# ONNX Runtime users feed by default, or uint8 (decoded images as they are, 4× less to copy).
INPUT_DTYPES = {"float32": torch.float32, "uint8": torch.uint8}
# ONNX opset of the exports (torch.onnx's dynamo exporter; 18 has every op the heads use).
ONNX_OPSET = 18

log = logging.getLogger(__name__)


class ExportError(UserError, RuntimeError):
    """A network that cannot be written in a format, or an export whose output differs from
    the PyTorch model's; the message names the head, the format and the reason."""


class DeployableSegmentor(nn.Module):
    """Raw RGB pixels in, logits at the input size out (module docstring).

    Args:
        net: the trained network (put in eval mode).
        mean / std: normalisation on the 0..1 scale (the checkpoint's).
        size_divisor: padding multiple, the backbone's output stride.
    """

    def __init__(self, net: Segmentor, mean: Sequence[float], std: Sequence[float], size_divisor: int) -> None:
        super().__init__()
        self.net = net.eval()
        self.preprocessor = Preprocessor(mean, std, size_divisor)

    def forward(self, image: Tensor) -> Tensor:
        x = self.preprocessor(image)
        logits = self.net(x).logits.float()
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return Preprocessor.unpad(logits, image.shape[-2:])


def head_name(module: DeployableSegmentor) -> str:
    return type(module.net.head).__name__


def sample_input(height: int = 67, width: int = 93, batch: int = 1, seed: int = 0) -> Tensor:
    """A uint8 RGB batch of an odd size (exercises the padding)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=g)


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress and warnings; keep them out of the command's output."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"


def _dynamic_shapes(example: Tensor) -> dict[str, dict[int, Any]]:
    dim = torch.export.Dim
    return {"image": {0: dim.DYNAMIC, 2: dim.DYNAMIC, 3: dim.DYNAMIC}}


def _session(path: str) -> Any:
    """An ONNX Runtime CPU session with the default options, as a deployment creates it (so
    the check sees any warning a user would)."""
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _export_onnx(module: DeployableSegmentor, example: Tensor, path: Path, dynamic: bool) -> Callable[[Tensor], Tensor]:
    import onnx  # noqa: F401  (the exporter needs it; fail early with its name)
    import onnxruntime  # noqa: F401

    # optimize=True runs onnxscript's graph optimiser: it folds the constant subgraphs, among
    # them the CastLike nodes torchlib writes for every `new_zeros` (PDN's ring kernels are
    # built from the taps with one). Left in, ONNX Runtime cannot constant-fold them (it has no
    # CPU kernel for the CastLike function) and every session prints one warning per node.
    torch.onnx.export(
        module, (example,), str(path), input_names=["image"], output_names=["logits"],
        dynamo=True, opset_version=ONNX_OPSET,
        dynamic_shapes=_dynamic_shapes(example) if dynamic else None,
        external_data=False, optimize=True,
    )
    session = _session(str(path))

    def run(image: Tensor) -> Tensor:
        (out,) = session.run(["logits"], {"image": image.cpu().numpy()})
        return torch.from_numpy(np.asarray(out))

    return run


def _export_torchscript(module: DeployableSegmentor, example: Tensor, path: Path, dynamic: bool) -> Callable[[Tensor], Tensor]:
    # Tracing records the size arithmetic (padding, upsampling) as graph ops, so the traced
    # module takes any size; check() verifies it on a second size.
    traced = torch.jit.trace(module, (example,), check_trace=False)
    traced.save(str(path))
    loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda image: loaded(image)


def _export_torch_export(module: DeployableSegmentor, example: Tensor, path: Path, dynamic: bool) -> Callable[[Tensor], Tensor]:
    program = torch.export.export(
        module, (example,), dynamic_shapes=_dynamic_shapes(example) if dynamic else None
    )
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    return lambda image: loaded(image)


EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript, "torch_export": _export_torch_export}
# What to suggest when a format fails.
FALLBACK = {"onnx": "torch_export", "torchscript": "torch_export", "torch_export": "torchscript"}


@dataclass
class ExportResult:
    """What :func:`export` wrote: ``dynamic`` is whether the file takes any H×W (else only
    ``checked_sizes[0]``; ``note`` says why)."""

    path: Path
    format: str
    max_abs_diff: float
    checked_sizes: list[tuple[int, int]]
    dynamic: bool
    note: str = ""
    input_dtype: str = "float32"


def check(module: nn.Module, run: Callable[[Tensor], Tensor], samples: Sequence[Tensor], tolerance: float) -> float:
    """Max |exported − PyTorch| over the ``samples``; raises :class:`ExportError` above
    ``tolerance`` or on a shape mismatch."""
    worst = 0.0
    with torch.no_grad():
        for x in samples:
            ref = module(x).float()
            got = run(x).float()
            if got.shape != ref.shape:
                raise ExportError(
                    f"the exported model returns shape {tuple(got.shape)} for input "
                    f"{tuple(x.shape)}, PyTorch {tuple(ref.shape)}"
                )
            worst = max(worst, float((got - ref).abs().max()))
    return worst


def export(
    net: Segmentor,
    fmt: str,
    path: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    size_divisor: int,
    samples: Sequence[Tensor] | None = None,
    tolerance: float = 1e-3,
    dynamic: bool = True,
    input_dtype: str = "float32",
) -> ExportResult:
    """Wrap ``net`` (:class:`DeployableSegmentor`), write it as ``fmt`` to ``path`` for
    ``input_dtype`` images (:data:`INPUT_DTYPES`), reload it with the format's runtime and
    compare with PyTorch on ``samples`` (0..255 pixels, cast to ``input_dtype``; default: an
    image and a batch of two of another size, both odd; the first is the export's example).

    ``dynamic``: any batch size, height and width (ONNX and ``torch.export`` with dynamic
    shapes; TorchScript's trace records the size arithmetic), checked on the second sample. When the
    dynamic export fails (e.g. timm's ``AvgPool2dSame`` in deep-stem / tiny ResNets computes
    ``math.ceil`` on the size, which ``torch.export`` cannot serialize) or the dynamic program
    fails the check at the second size (a shape guard the exporter added), the file is written
    for the example's size only: ``result.dynamic`` is False and ``result.note`` says why.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format={fmt!r} is invalid; allowed: {list(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"input_dtype={input_dtype!r} is invalid; allowed: {list(INPUT_DTYPES)}")
    module = DeployableSegmentor(net.cpu(), mean, std, size_divisor).eval()
    samples = list(samples) if samples else [sample_input(67, 93), sample_input(50, 41, batch=2, seed=1)]
    samples = [s.to(INPUT_DTYPES[input_dtype]) for s in samples]
    path = Path(path)
    if fmt == "torch_export" and path.suffix != ".pt2":
        raise ExportError(f"{path}: torch.export programs are .pt2 files; name the output *.pt2")
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = EXPORTERS[fmt]
    note = ""
    is_dynamic = dynamic

    def attempt(dynamic_shapes: bool) -> float:
        example = samples[0]
        if dynamic_shapes and len(example) == 1:
            # torch.export specialises a dimension whose example size is 1 (0/1 specialisation):
            # a batch of one would fix the batch size at 1.
            example = example.repeat(2, 1, 1, 1)
        run = exporter(module, example, path, dynamic_shapes)
        same = [s for s in samples if s.shape == samples[0].shape]
        return check(module, run, samples if dynamic_shapes else same, tolerance)

    try:
        with _quiet(), torch.no_grad():
            try:
                diff = attempt(dynamic)
            except ImportError:
                raise
            except Exception as err:  # includes a dynamic program that fails at the 2nd size
                if not dynamic:
                    raise
                note = (f"dynamic shapes failed ({_reason(err)}); exported for the example size "
                        f"{tuple(samples[0].shape[-2:])} only")
                log.warning("%s as %s: %s", head_name(module), fmt, note)
                is_dynamic = False
                diff = attempt(False)
    except ExportError:
        raise
    except ImportError as err:
        raise ExportError(
            f"format={fmt} needs the package {err.name or '?'}: pip install 'diffusion-seg[export]' "
            "(onnx, onnxscript, onnxruntime)"
        ) from None
    except Exception as err:  # the exporters raise anything: name head, format and reason
        path.unlink(missing_ok=True)
        raise ExportError(
            f"{head_name(module)} cannot be exported as {fmt}: {_reason(err)}. "
            f"Try format={FALLBACK[fmt]}."
        ) from err
    if not is_dynamic:
        samples = [s for s in samples if s.shape == samples[0].shape]
    if not diff <= tolerance:
        raise ExportError(
            f"{head_name(module)} exported as {fmt} to {path} differs from PyTorch by "
            f"{diff:.3g} (max abs logit), above the tolerance {tolerance:g}"
        )
    return ExportResult(path, fmt, diff, [tuple(s.shape[-2:]) for s in samples], is_dynamic, note, input_dtype)


def load_exported(path: str | Path, fmt: str) -> Callable[[Tensor], Tensor]:
    """A callable ``N×3×H×W image → logits`` for an exported file (tests, quick checks); the
    image has the dtype the file was written for."""
    path = Path(path)
    if fmt == "onnx":
        session = _session(str(path))
        return lambda x: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path), map_location="cpu")
    if fmt == "torch_export":
        return torch.export.load(str(path)).module()
    raise ExportError(f"format={fmt!r} is invalid; allowed: {list(FORMATS)}")
