"""Dense CRF benchmark: the exact and lattice backends and pydensecrf2 (the released C++
code, where installed), on natural-looking scenes, interleaved in one run.

    python -m diffusion_seg.bench crf [--sizes 161 321 513] [--classes 21 150]
                                      [--iterations 10] [--threads 1 0] [--rounds 3]
                                      [--exact-max-side 161] [--quick]

For every size × classes × threads (0: torch's default, all cores) group, each backend runs
the whole call (``dense_crf``: building the lattice, the iterations) on the same scene. Times
are medians of interleaved rounds (``diffusion_seg.bench.common``); "× pydensecrf2" is the
per-round ratio to pydensecrf2's time. pydensecrf2 has no threads and the lattice backend
runs on one CPU thread by design (``crf._one_cpu_thread``): their "threads" column says 1 in
every group, only the exact backend uses the group's count. Peak memory: growth of
the peak resident set over a warm-up and one call, each case in a fresh process. The exact
backend is O(N²): it only runs up to ``--exact-max-side`` (at 321² a call takes minutes on a
CPU) and its other rows say so. ``--agreement`` adds each backend's label agreement with the
exact result and the marginals' difference (sizes up to ``--exact-max-side``).

Scenes (:func:`scene`): Voronoi regions with wobbly edges, each with its own colour, colour
gradient and texture, slightly blurred (anti-aliased edges, like a photo), and softmax
scores like a DeepLab output: computed at 1/8 resolution (right class plus smooth noise),
then upsampled bilinearly, so they are blurry at the edges and wrong in places — what the
CRF is for.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_seg.bench.common import Measured, benchmark, fmt_mb, fmt_ms, fmt_ratio, table

BACKENDS = ("exact", "lattice", "pydensecrf2")


def _smooth_noise(generator: torch.Generator, channels: int, size: int, cell: int) -> Tensor:
    """``channels×size×size`` unit-variance noise, smooth over ``cell`` pixels."""
    coarse = torch.randn(1, channels, max(2, size // cell), max(2, size // cell),
                         generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]


def scene(size: int, classes: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """A natural-looking ``size×size`` test scene: ``(probs 1×K×H×W, image 1×3×H×W in
    0..255, labels H×W)`` (module docstring). Deterministic in ``(size, classes, seed)``."""
    generator = torch.Generator().manual_seed(seed)
    regions = 7
    centres = torch.rand(regions, 2, generator=generator) * size
    grid = torch.stack(torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)),
                                      indexing="ij"))
    coords = grid + _smooth_noise(generator, 2, size, 12) * size / 20  # wobbly edges
    distance = (coords[None] - centres[:, :, None, None]).square().sum(1)
    region = distance.argmin(0)
    labels = torch.randint(0, classes, (regions,), generator=generator)[region]

    base = 30 + 195 * torch.rand(regions, 3, generator=generator)
    gradient = torch.randn(regions, 3, 2, generator=generator) * 50 / size
    image = base[region].permute(2, 0, 1) + torch.einsum(
        "hwcx,xhw->chw", gradient[region], grid - size / 2)
    texture = _smooth_noise(generator, 1, size, 3)
    texture = texture * (4 + 12 * torch.rand(regions, generator=generator))[region]
    image = image + texture + 3 * torch.randn(3, size, size, generator=generator)
    blur = torch.tensor([0.25, 0.5, 0.25])
    image = F.conv2d(F.pad(image[:, None], (1, 1, 1, 1), mode="replicate"),
                     (blur[:, None] * blur[None, :])[None, None])[:, 0]
    image = image.clamp(0, 255).round()

    # DeepLab-like scores: at output stride 8, right class + smooth noise, upsampled.
    low = max(2, size // 8)
    onehot = F.one_hot(labels, classes).permute(2, 0, 1).float()[None]
    logits = 4.0 * F.adaptive_avg_pool2d(onehot, low)
    logits = logits + 1.6 * _smooth_noise(generator, classes, low, 2)[None]
    logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    return logits.softmax(1), image[None], labels


def build(spec: dict[str, Any]) -> Any:
    """One case as a call to time: ``dense_crf`` with ``spec["backend"]`` on the scene."""
    from diffusion_seg.models.crf import dense_crf

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    probs, image, _ = scene(spec["size"], spec["classes"])
    probs, image = probs.to(spec["device"]), image.to(spec["device"])
    autocast = torch.autocast(spec["device"].split(":")[0], dtype=torch.bfloat16,
                              enabled=spec.get("dtype") == "bfloat16")

    def run() -> Tensor:
        with torch.no_grad(), autocast:
            return dense_crf(probs, image, iterations=spec["iterations"],
                             backend=spec["backend"])

    return run


def agreement(size: int, classes: int, iterations: int, backend: str,
              seed: int = 0) -> dict[str, float]:
    """Label agreement (%) of ``backend`` with the exact backend on :func:`scene`, and the
    mean and 99th percentile of |Q − Q_exact| over pixels and classes."""
    from diffusion_seg.models.crf import dense_crf

    probs, image, _ = scene(size, classes, seed)
    exact = dense_crf(probs, image, iterations=iterations, backend="exact")
    other = dense_crf(probs, image, iterations=iterations, backend=backend)
    difference = (other - exact).abs().flatten()
    return {
        "agree": 100 * (other.argmax(1) == exact.argmax(1)).float().mean().item(),
        "mean": difference.mean().item(),
        "p99": difference.quantile(0.99).item() if difference.numel() <= 2**24
        else difference[:: difference.numel() // 2**24 + 1].quantile(0.99).item(),
        "changed": 100 * (exact.argmax(1) != probs.argmax(1)).float().mean().item(),
    }


def _pydensecrf2_installed() -> bool:
    from diffusion_seg.models.crf import _pydensecrf

    return _pydensecrf() is not None


def collect(args: argparse.Namespace) -> Iterator[list[list[str]]]:
    """The rows of each group in turn, one per backend (see the module docstring)."""
    released = _pydensecrf2_installed() and args.device == "cpu"
    for size in args.sizes:
        for classes in args.classes:
            for threads in args.threads:
                specs, errors = {}, {}
                for backend in BACKENDS:
                    if backend == "pydensecrf2" and not released:
                        continue
                    specs[backend] = dict(device=args.device, dtype=args.dtype, size=size,
                                          classes=classes, iterations=args.iterations,
                                          threads=threads, backend=backend)
                    if backend == "exact" and size > args.exact_max_side:
                        errors[backend] = (f"skipped: O(N²), minutes per call at {size}² "
                                           f"(--exact-max-side {args.exact_max_side})")
                previous = torch.get_num_threads()
                if threads:
                    torch.set_num_threads(threads)
                results = benchmark(build, specs, device=args.device, rounds=args.rounds,
                                    baseline="pydensecrf2" if released else "lattice",
                                    memory=not args.no_memory, timeout=args.timeout,
                                    errors=errors)
                torch.set_num_threads(previous)
                yield [_row(size, classes, threads, backend, result, args, released)
                       for backend, result in results.items()]


def _row(size: int, classes: int, threads: int, backend: str, result: Measured,
         args: argparse.Namespace, released: bool) -> list[str]:
    agree = "–"
    first_group = threads == args.threads[0]  # the same numbers for every thread count
    if args.agreement and first_group and backend != "exact" and size <= args.exact_max_side:
        measured = agreement(size, classes, args.iterations, backend)
        agree = f"{measured['agree']:.2f} % / {measured['mean']:.4f} / {measured['p99']:.3f}"
    one = backend == "pydensecrf2" or (backend == "lattice" and args.device == "cpu")
    shown_threads = "1" if one else str(threads or torch.get_num_threads())
    return [f"{size}²", str(classes), shown_threads, backend, fmt_ms(result),
            fmt_ratio(result) if released else "–", fmt_mb(result), agree]


HEADER = ["size", "classes", "threads", "backend", "ms per call", "× pydensecrf2 [min–max]",
          "peak MB", "vs exact: labels / mean |ΔQ| / p99 |ΔQ|"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="bfloat16: called under autocast (the CRF computes in float32)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[161, 321, 513])
    parser.add_argument("--classes", type=int, nargs="+", default=[21, 150])
    parser.add_argument("--iterations", type=int, default=10, help="mean-field iterations")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                        help="torch threads per group (0: default, all cores)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--exact-max-side", type=int, default=161,
                        help="largest size the exact backend runs at")
    parser.add_argument("--agreement", action="store_true",
                        help="also label agreement and marginals' difference with exact")
    parser.add_argument("--timeout", type=float, default=900.0, help="per memory case, seconds")
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 48² and 64², 21 classes, 2 iterations, 1 round")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion_seg.bench crf",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.sizes, args.classes, args.iterations, args.rounds = [48, 64], [21], 2, 1
        args.threads = [1]
    header = table(HEADER, [])
    print(header, flush=True)  # then each group's rows as soon as it is measured
    for rows in collect(args):
        print(table(HEADER, rows).split("\n", 2)[2], flush=True)
