"""Dense CRF (diffusion_seg/models/crf.py): equality with a dense N×N implementation of the
same mean-field equations, the fused attention kernel, a constructed denoising case, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffusion_seg.models.crf import DenseCRF, dense_crf

PARAMS = {
    "iterations": 5,
    "bilateral_weight": 4.0,
    "bilateral_xy_std": 7.0,
    "bilateral_rgb_std": 20.0,
    "gaussian_weight": 3.0,
    "gaussian_xy_std": 1.5,
}


def reference_crf(
    probs: torch.Tensor,
    image: torch.Tensor,
    iterations: int,
    bilateral_weight: float,
    bilateral_xy_std: float,
    bilateral_rgb_std: float,
    gaussian_weight: float,
    gaussian_xy_std: float,
    normalize: bool,
) -> torch.Tensor:
    """K&K's mean-field update with explicit N×N kernel matrices, in float64."""
    probs, image = probs.double(), image.double()
    batch, classes, height, width = probs.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    positions = torch.stack([ys, xs], -1).reshape(-1, 2)
    out = []
    for b in range(batch):
        colours = image[b].flatten(1).T
        kernels = []
        appearance = torch.cat([positions / bilateral_xy_std, colours / bilateral_rgb_std], 1)
        for weight, f in (
            (bilateral_weight, appearance),
            (gaussian_weight, positions / gaussian_xy_std),
        ):
            k = torch.exp(-(f[:, None] - f[None]).square().sum(-1) / 2)  # N×N
            k = k / k.sum(1, keepdim=True) if normalize else k - torch.eye(len(k), dtype=k.dtype)
            kernels.append(weight * k)
        log_p = probs[b].flatten(1).T.log()  # N×K
        q = torch.softmax(log_p, 1)
        for _ in range(iterations):
            q = torch.softmax(log_p + sum(k @ q for k in kernels), 1)
        out.append(q.T.reshape(classes, height, width))
    return torch.stack(out)


def random_inputs(batch=2, classes=3, height=12, width=10, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(batch, classes, height, width, generator=generator), 1)
    image = torch.randint(0, 256, (batch, 3, height, width), generator=generator)
    return probs.to(dtype), image


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("classes", [3, 12])  # value width below / above the feature width
def test_matches_dense_reference_float64(normalize: bool, classes: int) -> None:
    probs, image = random_inputs(classes=classes)
    out = dense_crf(probs, image, normalize=normalize, **PARAMS)
    ref = reference_crf(probs, image, normalize=normalize, **PARAMS)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)


def test_matches_dense_reference_float32_with_deeplab_defaults() -> None:
    probs, image = random_inputs(dtype=torch.float32)
    out = dense_crf(probs, image)
    ref = reference_crf(probs, image, **dataclasses.asdict(DenseCRF()))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_runs_on_the_fused_flash_kernel() -> None:
    """Only the flash backend allowed: the call must not need the math (N×N) fallback."""
    for dtype in (torch.float32, torch.float64):
        for classes in (2, 21):
            probs, image = random_inputs(classes=classes, dtype=dtype)
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                out = dense_crf(probs, image, iterations=2)
            assert out.shape == probs.shape and torch.isfinite(out).all()


def test_restores_labels_along_a_colour_edge() -> None:
    """Two flat colour regions, labels = regions; the network is right with probability 0.7
    on 70 % of pixels and wrong the same way elsewhere. The CRF recovers the regions."""
    generator = torch.Generator().manual_seed(0)
    height, width = 16, 20
    labels = torch.zeros(height, width, dtype=torch.long)
    labels[:, 8:] = 1
    image = torch.zeros(1, 3, height, width)
    image[0, :, :, :8] = torch.tensor([200.0, 40.0, 40.0])[:, None, None]
    image[0, :, :, 8:] = torch.tensor([30.0, 60.0, 220.0])[:, None, None]
    image = image + 3 * torch.randn(image.shape, generator=generator)
    noisy = torch.where(torch.rand(height, width, generator=generator) < 0.3, 1 - labels, labels)
    probs = torch.full((1, 2, height, width), 0.3)
    probs.scatter_(1, noisy[None, None], 0.7)
    before = (probs.argmax(1)[0] == labels).float().mean()
    after = (DenseCRF()(probs, image).argmax(1)[0] == labels).float().mean()
    assert before < 0.75
    assert after == 1.0


def test_zero_iterations_and_batch_independence() -> None:
    probs, image = random_inputs(classes=4, dtype=torch.float32)
    torch.testing.assert_close(dense_crf(probs * 3, image, iterations=0), probs)
    both = dense_crf(probs, image, iterations=3)
    torch.testing.assert_close(both[1:], dense_crf(probs[1:], image[1:], iterations=3))


def test_low_precision_inputs_compute_in_float32() -> None:
    probs, image = random_inputs(dtype=torch.float32)
    out = dense_crf(probs.bfloat16(), image.float(), iterations=2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, dense_crf(probs.bfloat16().float(), image, iterations=2))


def test_dataclass_calls_the_function() -> None:
    probs, image = random_inputs(dtype=torch.float32)
    crf = DenseCRF(iterations=3, bilateral_rgb_std=13.0, normalize=False)
    expected = dense_crf(probs, image, iterations=3, bilateral_rgb_std=13.0, normalize=False)
    torch.testing.assert_close(crf(probs, image), expected)


def test_input_and_parameter_errors() -> None:
    probs, image = random_inputs(dtype=torch.float32)
    cases = [
        (lambda: dense_crf(probs[0], image), r"probs must be a floating-point B×K×H×W tensor"),
        (lambda: dense_crf(probs.long(), image), r"probs must be a floating-point.*torch\.int64"),
        (
            lambda: dense_crf(probs, image[..., :9]),
            r"image must be B×3×H×W RGB.*\(2, 3, 12, 10\), got \(2, 3, 12, 9\)",
        ),
        (lambda: dense_crf(-probs, image), r"probs must be non-negative"),
        (
            lambda: dense_crf(probs, image, iterations=-1),
            r"crf\.iterations=-1 is invalid; allowed: an integer >= 0",
        ),
        (
            lambda: DenseCRF(bilateral_rgb_std=0.0),
            r"crf\.bilateral_rgb_std=0\.0 is invalid; allowed: a finite number > 0",
        ),
        (
            lambda: DenseCRF(gaussian_weight=-1.0),
            r"crf\.gaussian_weight=-1\.0 is invalid; allowed: a finite number >= 0",
        ),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
