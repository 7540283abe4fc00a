"""Dense CRF (diffusion_seg/models/crf.py, lattice.py): the exact backend against a dense
N×N implementation of the same mean-field equations; the lattice backend against the exact
one on natural-looking scenes, differentiable, under autocast; pydensecrf2 where installed;
progress reports; errors."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import CustomProgress
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from rich.console import Console
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffusion_seg.bench.crf import agreement, scene
from diffusion_seg.errors import ConfigError
from diffusion_seg.lightning.progress import crf_progress
from diffusion_seg.models import crf as crf_module
from diffusion_seg.models.crf import DenseCRF, _appearance_features, dense_crf
from diffusion_seg.models.inference import predict
from diffusion_seg.models.lattice import PermutohedralLattice

PARAMS = {
    "iterations": 5,
    "bilateral_weight": 4.0,
    "bilateral_xy_std": 7.0,
    "bilateral_rgb_std": 20.0,
    "gaussian_weight": 3.0,
    "gaussian_xy_std": 1.5,
}
released = pytest.mark.skipif(crf_module._pydensecrf() is None,
                              reason="pydensecrf2 is not installed (pip install '.[crf]')")


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: the results do not depend on it, and on a busy 2-core machine a second
    thread waiting for the other core made these tests up to 40× slower (sparse products)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_crf(
    probs: torch.Tensor,
    image: torch.Tensor,
    iterations: int,
    bilateral_weight: float,
    bilateral_xy_std: float,
    bilateral_rgb_std: float,
    gaussian_weight: float,
    gaussian_xy_std: float,
    normalize: str,
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
            sums = k.sum(1, keepdim=True)
            k = {"after": k / sums, "symmetric": k / sums.sqrt() / sums.sqrt().T,
                 "none": k - torch.eye(len(k), dtype=k.dtype)}[normalize]
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


# ------------------------------------------------------------------------- exact backend


@pytest.mark.parametrize("normalize", ["after", "symmetric", "none"])
@pytest.mark.parametrize("classes", [3, 12])  # value width below / above the feature width
def test_exact_matches_dense_reference_float64(normalize: str, classes: int) -> None:
    probs, image = random_inputs(classes=classes)
    out = dense_crf(probs, image, normalize=normalize, backend="exact", **PARAMS)
    ref = reference_crf(probs, image, normalize=normalize, **PARAMS)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)


def test_exact_matches_dense_reference_float32_with_deeplab_defaults() -> None:
    probs, image = random_inputs(dtype=torch.float32)
    out = dense_crf(probs, image)
    params = {k: v for k, v in dataclasses.asdict(DenseCRF()).items() if k != "backend"}
    ref = reference_crf(probs, image, **params)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_bool_normalize_of_earlier_configs() -> None:
    probs, image = random_inputs()
    for old, new in ((True, "after"), (False, "none")):
        torch.testing.assert_close(dense_crf(probs, image, normalize=old, **PARAMS),
                                   dense_crf(probs, image, normalize=new, **PARAMS))


def test_runs_on_the_fused_flash_kernel() -> None:
    """Only the flash backend allowed: the call must not need the math (N×N) fallback."""
    for dtype in (torch.float32, torch.float64):
        for classes in (2, 21):
            probs, image = random_inputs(classes=classes, dtype=dtype)
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                out = dense_crf(probs, image, iterations=2)
            assert out.shape == probs.shape and torch.isfinite(out).all()


# ------------------------------------------------------------------------ the lattice


def reference_lattice(features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The released ``permutohedral.cpp`` (``init`` and ``compute``) transcribed loop by loop,
    with a dict for its hash table: N×d features, N×K values, float64."""
    n, d = features.shape
    inv_std = math.sqrt(2 / 3) * (d + 1)
    scale = [inv_std / math.sqrt((i + 1) * (i + 2)) for i in range(d)]
    canonical = [[i if j <= d - i else i - (d + 1) for j in range(d + 1)] for i in range(d + 1)]
    table: dict[tuple[int, ...], int] = {}
    offsets, barycentrics = [], []
    for k in range(n):
        f = features[k].tolist()
        elevated, sm = [0.0] * (d + 1), 0.0
        for j in range(d, 0, -1):
            cf = f[j - 1] * scale[j - 1]
            elevated[j] = sm - j * cf
            sm += cf
        elevated[0] = sm
        rem0, total = [0] * (d + 1), 0
        for i in range(d + 1):
            v = elevated[i] / (d + 1)
            up, down = math.ceil(v) * (d + 1), math.floor(v) * (d + 1)
            rem0[i] = up if up - elevated[i] < elevated[i] - down else down
            total += rem0[i] // (d + 1)
        rank = [0] * (d + 1)
        for i in range(d):
            for j in range(i + 1, d + 1):
                if elevated[i] - rem0[i] < elevated[j] - rem0[j]:
                    rank[i] += 1
                else:
                    rank[j] += 1
        for i in range(d + 1):
            rank[i] += total
            if rank[i] < 0:
                rank[i] += d + 1
                rem0[i] += d + 1
            elif rank[i] > d:
                rank[i] -= d + 1
                rem0[i] -= d + 1
        bary = [0.0] * (d + 2)
        for i in range(d + 1):
            v = (elevated[i] - rem0[i]) / (d + 1)
            bary[d - rank[i]] += v
            bary[d - rank[i] + 1] -= v
        bary[0] += 1.0 + bary[d + 1]
        for r in range(d + 1):
            key = tuple(rem0[i] + canonical[r][rank[i]] for i in range(d))
            offsets.append(table.setdefault(key, len(table)))
            barycentrics.append(bary[r])
    keys = list(table)
    lattice = torch.zeros(len(keys) + 1, values.shape[1], dtype=torch.float64)  # last: missing
    for entry, (o, w) in enumerate(zip(offsets, barycentrics)):
        lattice[o] += w * values[entry // (d + 1)]
    for j in range(d + 1):
        blurred = lattice.clone()
        for index, key in enumerate(keys):
            n1 = tuple(c - 1 + (d + 1) * (i == j) for i, c in enumerate(key))
            n2 = tuple(c + 1 - (d + 1) * (i == j) for i, c in enumerate(key))
            blurred[index] += 0.5 * (lattice[table.get(n1, -1)] + lattice[table.get(n2, -1)])
        lattice = blurred
    alpha = 1 / (1 + 2**-d)
    out = torch.zeros(n, values.shape[1], dtype=torch.float64)
    for entry, (o, w) in enumerate(zip(offsets, barycentrics)):
        out[entry // (d + 1)] += alpha * w * lattice[o]
    return out


@pytest.mark.parametrize("dims", [2, 5])
def test_lattice_is_the_released_algorithm(dims: int) -> None:
    """Splat, blur and slice as ``permutohedral.cpp`` computes them (float64, ~40 points
    spread over a few lattice cells, so that vertices are shared and neighbours exist)."""
    generator = torch.Generator().manual_seed(dims)
    features = 2.5 * torch.rand(2, 40, dims, generator=generator, dtype=torch.float64)
    values = torch.randn(2, 40, 3, generator=generator, dtype=torch.float64)
    out = PermutohedralLattice(features)(values)
    for b in range(2):
        torch.testing.assert_close(out[b], reference_lattice(features[b], values[b]),
                                   rtol=1e-12, atol=1e-12)


def test_lattice_filter_approximates_the_gaussian_filter() -> None:
    """The normalised lattice filter of softmax maps on a scene's appearance features
    against the exact Σ_j exp(−|f_i − f_j|²/2)·v_j / Σ_j exp(...): measured mean 0.0009,
    max 0.2 (48², θα = 67, θβ = 3); the released code's lattice is as far off."""
    probs, image, _ = scene(48, 21)
    features = _appearance_features(image, 67.0, 3.0)
    values = torch.cat([probs.flatten(2).transpose(1, 2), torch.ones(1, 48 * 48, 1)], -1)
    kernel = torch.exp(-torch.cdist(features[0], features[0]).square() / 2)
    exact = kernel @ values[0]
    out = PermutohedralLattice(features)(values)[0]
    error = (out[:, :21] / out[:, 21:] - exact[:, :21] / exact[:, 21:]).abs()
    assert error.mean() < 0.0015 and error.max() < 0.35
    # Unnormalised, the lattice's scale varies from pixel to pixel (why normalize=none is
    # exact-only): measured 0.2–0.8 of the exact sums here.
    scale = out[:, 21] / exact[:, 21]
    assert scale.max() / scale.min() > 2


def test_lattice_is_per_image_and_order_free() -> None:
    """A batch's images are separate lattices; permuting the points permutes the output."""
    probs, image, _ = scene(24, 5)
    features = _appearance_features(image, 10.0, 13.0)
    values = probs.flatten(2).transpose(1, 2)
    alone = PermutohedralLattice(features)(values)
    perm = torch.randperm(features.shape[1], generator=torch.Generator().manual_seed(0))
    both = PermutohedralLattice(torch.cat([features, features[:, perm]]))(
        torch.cat([values, values[:, perm]]))
    torch.testing.assert_close(both[:1], alone)
    torch.testing.assert_close(both[1:], alone[:, perm])


@pytest.mark.parametrize(("size", "minimum"), [(40, 96.9), (64, 98.1)])
def test_lattice_labels_agree_with_exact_on_natural_scenes(size: int, minimum: float) -> None:
    """The issue's bar: at least pydensecrf2's agreement with the exact result as measured
    independently (96.9 % at 40², 98.1 % at 64²). On these scenes (3 seeds, DeepLab's
    parameters, 10 iterations; the CRF changes 8–20 % of the labels) measured: 98.8–99.6 %
    at 40², 99.0–99.3 % at 64², mean |ΔQ| <= 0.0011, 99th percentile <= 0.016; the bound
    asserted is mean <= 0.002 and 99th percentile <= 0.03."""
    for seed in range(3):
        measured = agreement(size, 21, 10, "lattice", seed)
        assert measured["agree"] >= minimum, (seed, measured)
        assert measured["mean"] <= 0.002 and measured["p99"] <= 0.03, (seed, measured)


@pytest.mark.slow
def test_lattice_labels_agree_with_exact_at_321() -> None:
    """321², 2 iterations (the exact backend: tens of seconds per iteration on a CPU);
    the issue's bar there is 99.5 %. Measured: 99.74 % (10 iterations: 99.77 %, and
    pydensecrf2 99.77 %)."""
    measured = agreement(321, 21, 2, "lattice")
    assert measured["agree"] >= 99.5, measured


def test_lattice_smoothness_kernel_is_the_truncated_exact_one() -> None:
    """Without the appearance kernel the lattice backend's filter is the separable Gaussian
    truncated at 4θγ: equal to the exact backend up to the dropped tail."""
    probs, image = random_inputs(height=20, width=17, classes=4)
    for std in (1.0, 2.5):
        params = dict(bilateral_weight=0.0, gaussian_xy_std=std, gaussian_weight=3.0)
        torch.testing.assert_close(dense_crf(probs, image, backend="lattice", **params),
                                   dense_crf(probs, image, backend="exact", **params),
                                   atol=1e-4, rtol=0)


def test_lattice_restores_labels_along_a_colour_edge() -> None:
    """Two flat colour regions, labels = regions; the network is right with probability 0.7
    on 70 % of pixels and wrong the same way elsewhere. Both backends recover the regions."""
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
    assert (probs.argmax(1)[0] == labels).float().mean() < 0.75
    for backend in ("exact", "lattice"):
        after = DenseCRF(backend=backend)(probs, image).argmax(1)[0]
        assert (after == labels).all(), backend


@pytest.mark.parametrize(("backend", "normalize"), [
    ("exact", "after"), ("exact", "symmetric"), ("exact", "none"),
    ("lattice", "after"), ("lattice", "symmetric"),
])
def test_differentiable_with_respect_to_probs(backend: str, normalize: str) -> None:
    """A CRF-as-RNN layer could train through it: gradcheck on a tiny float64 input."""
    probs, image = random_inputs(batch=1, classes=2, height=4, width=3)
    probs.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: dense_crf(p, image, iterations=2, backend=backend, normalize=normalize,
                            bilateral_xy_std=3.0, bilateral_rgb_std=40.0), (probs,))


@pytest.mark.parametrize("backend", ["exact", "lattice"])
def test_autocast_computes_in_float32(backend: str) -> None:
    probs, image = random_inputs(dtype=torch.float32)
    plain = dense_crf(probs, image, iterations=3, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = dense_crf(probs.bfloat16(), image.float(), iterations=3, backend=backend)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, dense_crf(probs.bfloat16().float(), image, iterations=3,
                                                backend=backend))
    assert plain.dtype == torch.float32


@pytest.mark.parametrize("backend", ["exact", "lattice"])
def test_zero_iterations_and_batch_independence(backend: str) -> None:
    probs, image = random_inputs(classes=4, dtype=torch.float32)
    torch.testing.assert_close(dense_crf(probs * 3, image, iterations=0, backend=backend), probs)
    both = dense_crf(probs, image, iterations=3, backend=backend)
    torch.testing.assert_close(both[1:], dense_crf(probs[1:], image[1:], iterations=3,
                                                   backend=backend))


def test_auto_is_the_lattice_on_cpu() -> None:
    probs, image = random_inputs(dtype=torch.float32)
    torch.testing.assert_close(dense_crf(probs, image, backend="auto"),
                               dense_crf(probs, image, backend="lattice"), rtol=0, atol=0)


# ------------------------------------------------------------------------- pydensecrf2


@released
@pytest.mark.parametrize("normalize", ["after", "symmetric"])
def test_lattice_matches_pydensecrf2(normalize: str) -> None:
    """Same algorithm, other details (the released code orders the features x, y, r, g, b,
    does not centre them, rounds colours to uint8 and uses a second lattice for the
    smoothness kernel): labels measured 98.5–99.6 % alike at 64² (5 scenes, both
    normalisations), mean |ΔQ| <= 0.0016; against the exact result both are as close
    (within ±0.5 % per scene, means over 5 scenes within 0.1 %)."""
    for seed in range(2):
        probs, image, _ = scene(64, 21, seed)
        ours = dense_crf(probs, image, normalize=normalize, backend="lattice")
        theirs = dense_crf(probs, image, normalize=normalize, backend="pydensecrf2")
        assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.98
        assert (ours - theirs).abs().mean() <= 0.003


@released
def test_pydensecrf2_agrees_with_exact_as_the_lattice_does() -> None:
    ours = [agreement(40, 21, 10, "lattice", seed)["agree"] for seed in range(3)]
    theirs = [agreement(40, 21, 10, "pydensecrf2", seed)["agree"] for seed in range(3)]
    assert sum(ours) / 3 >= sum(theirs) / 3 - 0.25, (ours, theirs)


# ---------------------------------------------------------------------------- progress


@pytest.mark.parametrize("backend", ["exact", "lattice",
                                     pytest.param("pydensecrf2", marks=released)])
def test_progress_is_reported_after_every_iteration(backend: str) -> None:
    probs, image = random_inputs(dtype=torch.float32)
    seen: list[float] = []
    dense_crf(probs, image, iterations=4, backend=backend, progress=seen.append)
    steps = 4 * (probs.shape[0] if backend == "pydensecrf2" else 1)
    assert seen == pytest.approx([(i + 1) / steps for i in range(steps)])


def crf_in_batch_3(callback: object, shown: Callable[[], float]) -> list[float]:
    """Batch 3's CRF (4 iterations) through ``predict`` with ``crf_progress``: the bar's
    count after each iteration."""
    probs, image = random_inputs(dtype=torch.float32)
    update = crf_progress(SimpleNamespace(progress_bar_callback=callback), "test", batch_idx=3)
    seen: list[float] = []
    predict(lambda _: probs.log(), image.float(), crf=True, rgb=image.float(),
            crf_params={"iterations": 4, "backend": "lattice"},
            crf_progress=lambda fraction: (update(fraction), seen.append(shown())))
    return seen


def test_eval_progress_bar_moves_within_a_batch_rich() -> None:
    """Lightning's rich bar (the default here) moves by fractions of a batch, so its rate
    and the time left follow the CRF (issue 18: a long CRF evaluation showed 0.00 it/s
    until a batch ended)."""
    callback = RichProgressBar()
    callback.progress = CustomProgress(console=Console(file=io.StringIO()))
    callback.test_progress_bar_id = callback.progress.add_task("Testing", total=8)
    task = callback.progress.tasks[0]
    assert crf_in_batch_3(callback, lambda: task.completed) == [3.25, 3.5, 3.75, 4.0]
    assert task.speed is not None and task.time_remaining is not None


def test_eval_progress_bar_moves_within_a_batch_tqdm() -> None:
    stream = io.StringIO()
    callback = TQDMProgressBar()
    callback._test_progress_bar = Tqdm(total=8, file=stream, desc="Testing")
    seen = crf_in_batch_3(callback, lambda: callback._test_progress_bar.n)
    assert seen == [3.25, 3.5, 3.75, 4.0]
    last = stream.getvalue().split("\r")[-1]
    assert "4.0/8" in last and "<" in last and "it/s" in last  # elapsed<left, rate


def test_progress_without_a_bar_does_nothing() -> None:
    crf_progress(SimpleNamespace(progress_bar_callback=None), "val", 0)(0.5)


# ------------------------------------------------------------------------------ errors


def test_dataclass_calls_the_function() -> None:
    probs, image = random_inputs(dtype=torch.float32)
    crf = DenseCRF(iterations=3, bilateral_rgb_std=13.0, normalize="none")
    expected = dense_crf(probs, image, iterations=3, bilateral_rgb_std=13.0, normalize="none")
    torch.testing.assert_close(crf(probs, image), expected)


def test_input_and_parameter_errors(monkeypatch) -> None:
    probs, image = random_inputs(dtype=torch.float32)
    key = r"task\.inference\.crf_params"
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
            key + r"\.iterations=-1 is invalid; allowed: an integer >= 0",
        ),
        (
            lambda: DenseCRF(bilateral_rgb_std=0.0),
            key + r"\.bilateral_rgb_std=0\.0 is invalid; allowed: a finite number > 0",
        ),
        (
            lambda: DenseCRF(gaussian_weight=-1.0),
            key + r"\.gaussian_weight=-1\.0 is invalid; allowed: a finite number >= 0",
        ),
        (
            lambda: DenseCRF(backend="fast"),
            key + r"\.backend='fast' is invalid; allowed: auto, exact, lattice, pydensecrf2",
        ),
        (
            lambda: DenseCRF(normalize="before"),
            key + r"\.normalize='before' is invalid; allowed: after, symmetric, none",
        ),
        (
            lambda: DenseCRF(normalize="none", backend="lattice"),
            key + r"\.normalize=none needs task\.inference\.crf_params\.backend=exact",
        ),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    with pytest.raises(ConfigError, match=key + r"\.backend"):  # one line, exit 2
        DenseCRF(backend="fast")
    monkeypatch.setattr(crf_module, "_pydensecrf", lambda: None)
    with pytest.raises(ConfigError, match=r"backend=pydensecrf2 needs the pydensecrf2 package"):
        DenseCRF(backend="pydensecrf2")



# ------------------------------------------------------------------------------- bench


def test_bench_crf_prints_every_backend_and_says_where_exact_is_skipped(capsys) -> None:
    from diffusion_seg.bench import crf as bench_crf

    bench_crf.main(["--sizes", "24", "32", "--classes", "5", "--iterations", "2",
                    "--threads", "1", "--rounds", "1", "--exact-max-side", "24",
                    "--no-memory", "--agreement"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    backends = ["exact", "lattice"] + (["pydensecrf2"] if crf_module._pydensecrf() else [])
    assert [(r[0], r[3]) for r in rows] == [(s, b) for s in ("24²", "32²") for b in backends]
    by_case = {(r[0], r[3]): r for r in rows}
    assert by_case[("32²", "exact")][4].startswith("skipped: O(N²)")
    assert float(by_case[("24²", "lattice")][4]) > 0
    assert by_case[("24²", "lattice")][7].endswith(tuple("0123456789"))  # labels / |ΔQ|


def test_lattice_runs_on_one_cpu_thread_and_restores_the_count() -> None:
    """On CPU the lattice backend runs single-threaded (a busy second core made it 5–20×
    slower); the exact backend keeps the process's threads."""
    probs, image = random_inputs(dtype=torch.float32)
    torch.set_num_threads(2)
    for backend, inside in (("lattice", 1), ("exact", 2)):
        seen: list[int] = []
        dense_crf(probs, image, iterations=2, backend=backend,
                  progress=lambda _: seen.append(torch.get_num_threads()))
        assert seen == [inside, inside] and torch.get_num_threads() == 2, backend


# ----------------------------------------------------------------------------- configs


def test_crf_rows_use_the_lattice_and_the_default_is_auto() -> None:
    """The built-in studies' and the papers' DeepLab-v2 + CRF rows run the lattice (as
    DeepLab's released CRF does); a plain run's CRF is ``auto``; every config's parameters
    pass the start-up check."""
    from .conftest import compose_config

    for name in ("synthetic_deeplabv2_crf", "pathfinder_deeplabv2_crf",
                 "deeplabv2_crf_ade20k", "deeplabv2_crf_person_part"):
        inference = compose_config([f"experiment={name}"]).task.inference
        assert inference.crf and inference.crf_params.backend == "lattice", name
        DenseCRF(**inference.crf_params)
    params = compose_config([]).task.inference.crf_params
    assert (params.backend, params.normalize) == ("auto", "after")
    DenseCRF(**params)


def test_the_task_checks_the_crf_parameters_when_built() -> None:
    """A bad ``task.inference.crf_params`` value is one line (ConfigError: exit 2) when the
    task is built, before any image is evaluated."""
    from diffusion_seg.lightning.task import SegmentationTask
    from diffusion_seg.models.backbone import TimmBackbone
    from diffusion_seg.models.heads import FCNHead
    from diffusion_seg.models.segmentor import Segmentor

    net = Segmentor(TimmBackbone("test_resnet"), FCNHead, num_classes=2)
    with pytest.raises(ConfigError, match=r"crf_params\.backend='fast' is invalid"):
        SegmentationTask(net, ["a", "b"],
                         inference={"crf": True, "crf_params": {"backend": "fast"}})
    SegmentationTask(net, ["a", "b"], inference={"crf": False, "crf_params": {"backend": "fast"}})
