"""DifNet benchmark: the diffusion stage dense vs attention, the paper's Table 4, and a full
training step at a large input.

    python -m diffusion_seg.bench difnet [--device cpu|cuda] [--quick] [--train-step 1024]

1. Diffusion stage (T walks on given Ψ_t and seed, the part the two paths differ in), for
   growing seed grids g×g (input ≈ 8g at output stride 8: 41 ↔ 321, 64 ↔ 505,
   128 ↔ 1024), forward (no grad) and forward+backward, until dense runs out of memory.
   On CPU dense is skipped ("OOM-guard") when its estimated N×N storage exceeds
   ``--mem-limit-gb`` (forward 2·N²·4 B: logits + P; forward+backward (T+2)·N²·4 B: T
   saved P_t plus two transient gradients).
2. Table 4: seed / similarity / diffusion / total inference time of DifNet-50 and the
   total of Sim-DeepLab-101 at 505×505 (random weights: timing only).
3. ``--train-step S``: one SGD step of a whole DifNet at S×S input (loss, backward, step).

Time: the cases compared in a table (dense and attention of one grid and pass; the Table-4
parts and Sim-DeepLab; the two training steps) are built in one process and timed in
interleaved rounds (``diffusion_seg.bench.common.interleave``): times are medians over the
rounds, ratios are per-round ratios, median [min–max]. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` over one pass minus the memory held before it; on CPU each
case in a fresh process, the growth of its peak resident set over a warm-up and one pass
above the resident set right before them (inputs already allocated) — what the case added to
the high-water mark; the smallest cases carry some tens of MB of allocator and thread-pool
noise. Table 4 reports times only (its parts share one network).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from diffusion_seg.bench.common import Measured, benchmark, fmt_ratio, interleave, measure

GRIDS_CPU = (41, 64, 96, 128, 160, 192)
GRIDS_CUDA = (41, 64, 96, 128, 160, 192, 256, 320, 384, 512)
GRIDS_QUICK = (41, 64)
MODES = ("dense", "attention")


def dense_bytes(grid: int, walks: int, backward: bool) -> int:
    """Estimated N×N storage of the dense path in float32 (see the module docstring)."""
    n = grid * grid
    return (walks + 2 if backward else 2) * n * n * 4


# --------------------------------------------------------------------------- child side


def _measure(fn: Callable[[], None], spec: dict[str, Any]) -> dict[str, Any]:
    return measure(fn, spec["device"], spec["repeats"], spec["max_seconds"])


def _diffusion_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One diffusion case measured alone (warm-up + ``spec["repeats"]`` runs)."""
    return _measure(build_diffusion(spec), spec)


def _train_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One training step measured alone (warm-up + ``spec["repeats"]`` runs)."""
    return _measure(build_train(spec), spec)


def build_diffusion(spec: dict[str, Any]) -> Callable[[], None]:
    """The diffusion stage alone (T walks on given Ψ_t and seed): ``spec["mode"]`` dense |
    attention, ``backward``, ``grid``."""
    import torch

    from diffusion_seg.models.difnet import RandomWalk, cascade

    torch.manual_seed(0)
    device, n, backward = spec["device"], spec["grid"] ** 2, spec["backward"]
    # Ψ comes out of BatchNorm: unit-variance channels, in the autocast dtype.
    dtype = getattr(torch, spec["dtype"])
    psis = [
        torch.randn(spec["batch"], n, spec["psi_channels"], device=device, dtype=dtype)
        .requires_grad_(backward)
        for _ in range(spec["walks"])
    ]
    seed = torch.randn(spec["batch"], n, spec["classes"], device=device, requires_grad=backward)
    walks = [RandomWalk(1, spec["psi_channels"]).to(device) for _ in range(spec["walks"])]
    grad_out = torch.randn_like(seed)

    def run() -> None:
        if backward:
            out = cascade(walks, seed, psis, spec["mode"])[-1]
            out.backward(grad_out)
            for t in [*psis, seed, *(p for w in walks for p in w.parameters())]:
                t.grad = None
        else:
            with torch.no_grad():
                cascade(walks, seed, psis, spec["mode"])

    return run


def build_train(spec: dict[str, Any]) -> Callable[[], None]:
    """One SGD step of a whole DifNet (``spec["backbone"]``, ``mode``) at ``size``²."""
    import functools

    import torch

    from diffusion_seg.models.backbone import TimmBackbone
    from diffusion_seg.models.difnet import DifNetHead
    from diffusion_seg.models.segmentor import Segmentor
    from diffusion_seg.models.losses import cross_entropy

    torch.manual_seed(0)
    device, size = spec["device"], spec["size"]
    head = functools.partial(DifNetHead, diffusion=spec["mode"], walks=spec["walks"])
    net = Segmentor(TimmBackbone(spec["backbone"]), head, spec["classes"]).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    image = torch.randn(spec["batch"], 3, size, size, device=device)
    target = torch.randint(0, spec["classes"], (spec["batch"], size, size), device=device)
    autocast = spec["dtype"] == "bfloat16"

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            loss = cross_entropy(net(image).logits, target)
        loss.backward()
        optimizer.step()

    return run


def table4_cases(spec: dict[str, Any]) -> dict[str, Callable[[], object]]:
    """Table 4's parts of a DifNet (``difnet_backbone``) and a whole Sim-DeepLab
    (``baseline_backbone``) at inference: name → call. The parts share the network and pass
    their results on (seed → similarity → diffusion), so the first calls must go in this
    order; afterwards any order times the same work."""
    import torch

    from diffusion_seg.models.backbone import TimmBackbone
    from diffusion_seg.models.difnet import DifNetHead
    from diffusion_seg.models.heads import DeepLabV2Head
    from diffusion_seg.models.segmentor import Segmentor

    torch.manual_seed(0)
    device, size = spec["device"], spec["size"]
    kind, autocast = device.split(":")[0], spec["dtype"] == "bfloat16"
    image = torch.randn(1, 3, size, size, device=device)
    difnet = Segmentor(TimmBackbone(spec["difnet_backbone"]), DifNetHead, spec["classes"])
    difnet = difnet.to(device).eval()
    head = difnet.head
    stash: dict[str, Any] = {}

    def seed_part() -> None:
        score, _, seed = head.seed_branch(difnet.backbone(image)[-1])
        stash["seed"] = seed

    def similarity_part() -> None:
        stash["psis"] = head.similarities(image, tuple(stash["seed"].shape[-2:]))

    def diffusion_part() -> None:
        head.diffuse(stash["seed"].flatten(2).transpose(1, 2), stash["psis"])

    def under(fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad(), torch.autocast(kind, dtype=torch.bfloat16, enabled=autocast):
                return fn()

        return call

    baseline = Segmentor(
        TimmBackbone(spec["baseline_backbone"]), DeepLabV2Head, spec["classes"]
    ).to(device).eval()
    return {
        name: under(fn) for name, fn in (
            ("seed", seed_part),
            ("similarity", similarity_part),
            ("diffusion", diffusion_part),
            ("total", lambda: difnet(image)),
            ("baseline", lambda: baseline(image)),
        )
    }


def table4(args: argparse.Namespace, base: dict[str, Any]) -> tuple[dict[str, Measured], str, str]:
    """Interleaved times of Table 4's rows (ratios to Sim-DeepLab's total); the two backbones."""
    difnet_bb, baseline_bb = args.table4_backbones or (
        ("resnet18", "resnet34") if args.quick else ("resnet50", "resnet101"))
    spec = {**base, "size": args.table4_size, "difnet_backbone": difnet_bb,
            "baseline_backbone": baseline_bb}
    results = interleave(table4_cases(spec), args.rounds, args.device, baseline="baseline",
                         max_seconds=args.max_seconds)
    return results, difnet_bb, baseline_bb


# -------------------------------------------------------------------------- parent side


def _fmt_time(result: Measured) -> str:
    if not result.ok:
        return result.error or "–"
    t = result.median
    return f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.1f} ms"


def _fmt_mem(result: Measured) -> str:
    if result.peak is None:
        return "–"
    mb = result.peak / 2**20
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.1f} MB"


def _diffusion_table(args: argparse.Namespace, base: dict[str, Any]) -> None:
    grids = args.grids or (GRIDS_QUICK if args.quick else GRIDS_CUDA if args.cuda else GRIDS_CPU)
    print(f"\n## Diffusion stage: {args.walks} walks, K={args.classes} classes, "
          f"Ψ width {args.psi_channels}, batch {args.batch}, {args.device}, Ψ in {args.dtype} "
          "(dense: float32)\n")
    print("| grid | N | input (OS 8) | pass | dense time | dense peak | attention time | "
          "attention peak | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    dense_failed = {False: False, True: False}
    for grid in grids:
        for backward in (False, True):
            specs = {mode: {**base, "grid": grid, "mode": mode, "backward": backward}
                     for mode in MODES}
            estimate = dense_bytes(grid, args.walks, backward)
            errors = {}
            if dense_failed[backward]:
                errors["dense"] = "skipped (OOM at a smaller grid)"
            elif not args.cuda and estimate > args.mem_limit_gb * 2**30:
                errors["dense"] = f"OOM-guard (est. {estimate / 2**30:.1f} GB)"
            row = benchmark(build_diffusion, specs, device=args.device, rounds=args.rounds,
                            baseline="dense", memory=not args.no_memory, timeout=args.timeout,
                            max_seconds=args.max_seconds, errors=errors)
            dense, attn = row["dense"], row["attention"]
            dense_failed[backward] = dense_failed[backward] or not dense.ok
            measured = dense.peak and attn.peak is not None
            memory = f"{attn.peak / dense.peak:.3f}" if measured else "–"
            print(f"| {grid}×{grid} | {grid * grid} | {8 * grid - 7}–{8 * grid} | "
                  f"{'fwd+bwd' if backward else 'fwd'} | {_fmt_time(dense)} | {_fmt_mem(dense)} | "
                  f"{_fmt_time(attn)} | {_fmt_mem(attn)} | {fmt_ratio(attn)} | {memory} |",
                  flush=True)
    method = " ".join(__doc__.split("Peak memory: ")[1].split("\n\n")[0].split())
    print("\nTime ratio = attention / dense time per interleaved round, median [min–max]; "
          f"memory ratio = attention peak / dense peak. Peak memory: {method}")


def _table4(args: argparse.Namespace, base: dict[str, Any]) -> None:
    results, difnet_bb, baseline_bb = table4(args, base)
    print(f"\n## Table 4: inference at {args.table4_size}×{args.table4_size}, batch 1, "
          f"{args.device} {args.dtype} (paper: GTX 1080, DifNet-50 seed 18 / similarity 15 / "
          "diffusion 6 ms, Sim-DeepLab-101 36 ms)\n")
    # Times only: the parts share one process, so their memory peaks are not separable.
    print("| model | part | time | × Sim-DeepLab |")
    print("|---|---|---|---|")
    for part in ("seed", "similarity", "diffusion", "total"):
        print(f"| DifNet ({difnet_bb}) | {part} | {_fmt_time(results[part])} | "
              f"{fmt_ratio(results[part])} |")
    print(f"| Sim-DeepLab ({baseline_bb}) | total | {_fmt_time(results['baseline'])} | – |")


def _train_table(args: argparse.Namespace, base: dict[str, Any]) -> None:
    size = args.train_step
    grid = -(-size // 8)
    print(f"\n## Training step at {size}×{size} (DifNet on {args.train_backbone}, "
          f"batch {args.batch}, K={args.classes}, {args.device}; seed grid {grid}×{grid})\n")
    print("| diffusion | step time | × attention | peak memory |")
    print("|---|---|---|---|")
    estimate = dense_bytes(grid, args.walks, True)
    errors = {}
    if not args.cuda and estimate > args.mem_limit_gb * 2**30:
        errors["dense"] = f"OOM-guard (diffusion alone est. {estimate / 2**30:.1f} GB)"
    specs = {mode: {**base, "size": size, "mode": mode, "backbone": args.train_backbone}
             for mode in ("attention", "dense")}
    results = benchmark(build_train, specs, device=args.device,
                        rounds=max(1, min(args.rounds, 2)), baseline="attention",
                        memory=not args.no_memory, timeout=args.timeout * 4,
                        max_seconds=args.max_seconds, errors=errors)
    for mode, result in results.items():
        print(f"| {mode} | {_fmt_time(result)} | {fmt_ratio(result)} | {_fmt_mem(result)} |",
              flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                        help="Ψ / autocast dtype of the attention path "
                             "(default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--rounds", "--repeats", type=int, default=3, dest="rounds",
                        help="interleaved timed rounds (median and spread over them)")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="stop adding rounds to a comparison after this long (at least one)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per memory case, seconds")
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--quick", action="store_true",
                        help="grids 41 and 64, one round, small Table-4 backbones")
    parser.add_argument("--grids", type=int, nargs="*", default=None, help="seed grid sides")
    parser.add_argument("--walks", type=int, default=5)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--psi-channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--mem-limit-gb", type=float, default=8.0,
                        help="CPU: skip dense cases whose N×N estimate exceeds this")
    parser.add_argument("--no-diffusion", action="store_true", help="skip the diffusion table")
    parser.add_argument("--no-table4", action="store_true", help="skip the Table-4 timing")
    parser.add_argument("--table4-size", type=int, default=505, help="Table 4's input side")
    parser.add_argument("--table4-backbones", nargs=2, default=None, metavar=("DIFNET", "SIMDEEPLAB"),
                        help="Table 4's backbones (default resnet50 resnet101; --quick: "
                             "resnet18 resnet34)")
    parser.add_argument("--train-step", type=int, default=0, metavar="SIZE",
                        help="also time one training step at SIZE×SIZE input")
    parser.add_argument("--train-backbone", default="resnet18")


def finish_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults that depend on other options; the base spec of every case."""
    args.cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if args.cuda else "float32")
    if args.quick:
        args.rounds = 1
    return {"device": args.device, "dtype": args.dtype, "repeats": args.rounds,
            "max_seconds": args.max_seconds, "walks": args.walks, "classes": args.classes,
            "psi_channels": args.psi_channels, "batch": args.batch, "threads": args.threads}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_seg.bench difnet", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    base = finish_arguments(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"# DifNet benchmark ({args.device}, median of up to {args.rounds} interleaved rounds "
          "after a warm-up; memory: each case in a fresh process on CPU)")
    if not args.no_diffusion:
        _diffusion_table(args, base)
    if not args.no_table4:
        _table4(args, base)
    if args.train_step:
        _train_table(args, base)
