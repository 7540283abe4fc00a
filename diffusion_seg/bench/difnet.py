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

Every measured case runs in its own subprocess, so one case's allocations cannot hide
another's peak. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory
held before the case; on CPU the growth of the process's peak resident set (``ru_maxrss``)
over its value right before the case (inputs already allocated) — what the case added to
the high-water mark; the smallest cases carry some tens of MB of allocator and thread-pool
noise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from diffusion_seg.bench.common import child_main, measure, run_case

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
    import torch

    from diffusion_seg.models.difnet import RandomWalk, cascade

    torch.manual_seed(0)
    device, n, backward = spec["device"], spec["grid"] ** 2, spec["backward"]
    # Ψ comes out of BatchNorm: unit-variance channels. On CUDA in the autocast dtype.
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

    return _measure(run, spec)


def _train_case(spec: dict[str, Any]) -> dict[str, Any]:
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
    autocast = device.startswith("cuda") and spec["dtype"] == "bfloat16"

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = cross_entropy(net(image).logits, target)
        loss.backward()
        optimizer.step()

    return _measure(run, spec)


def _table4_case(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from diffusion_seg.models.backbone import TimmBackbone
    from diffusion_seg.models.difnet import DifNetHead
    from diffusion_seg.models.heads import DeepLabV2Head
    from diffusion_seg.models.segmentor import Segmentor

    torch.manual_seed(0)
    device, size = spec["device"], spec["size"]
    autocast = device.startswith("cuda") and spec["dtype"] == "bfloat16"
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

    parts: dict[str, Callable[[], None]] = {
        "seed": seed_part,
        "similarity": similarity_part,
        "diffusion": diffusion_part,
        "total": lambda: difnet(image),
    }
    results = {}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        for name, fn in parts.items():
            results[name] = _measure(fn, spec)
        del difnet, head, stash
        baseline = Segmentor(
            TimmBackbone(spec["baseline_backbone"]), DeepLabV2Head, spec["classes"]
        ).to(device).eval()
        results["baseline"] = _measure(lambda: baseline(image), spec)
    return results


CASES = {"diffusion": _diffusion_case, "train": _train_case, "table4": _table4_case}


# -------------------------------------------------------------------------- parent side


def _fmt_time(result: dict[str, Any]) -> str:
    return result["error"] if "error" in result else f"{result['median'] * 1e3:.1f} ms"


def _fmt_mem(result: dict[str, Any]) -> str:
    if "error" in result:
        return "–"
    mb = result["peak"] / 2**20
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.1f} MB"


def _diffusion_table(args: argparse.Namespace, base: dict[str, Any]) -> None:
    grids = args.grids or (GRIDS_QUICK if args.quick else GRIDS_CUDA if args.cuda else GRIDS_CPU)
    print(f"\n## Diffusion stage: {args.walks} walks, K={args.classes} classes, "
          f"Ψ width {args.psi_channels}, batch {args.batch}, {args.device}, Ψ in {args.dtype} "
          "(dense: float32)\n")
    print("| grid | N | input (OS 8) | pass | dense time | dense peak | attention time | "
          "attention peak | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    dense_failed = {False: False, True: False}
    for grid in grids:
        for backward in (False, True):
            row: dict[str, dict[str, Any]] = {}
            for mode in MODES:
                spec = {**base, "kind": "diffusion", "grid": grid, "mode": mode,
                        "backward": backward}
                estimate = dense_bytes(grid, args.walks, backward)
                if mode == "dense" and dense_failed[backward]:
                    row[mode] = {"error": "skipped (OOM at a smaller grid)"}
                elif mode == "dense" and not args.cuda and estimate > args.mem_limit_gb * 2**30:
                    row[mode] = {"error": f"OOM-guard (est. {estimate / 2**30:.1f} GB)"}
                else:
                    row[mode] = run_case("diffusion_seg.bench.difnet", spec, args.timeout)
                if mode == "dense" and "error" in row[mode]:
                    dense_failed[backward] = True
            dense, attn = row["dense"], row["attention"]
            measured = "error" not in dense and "error" not in attn and dense["peak"] > 0
            ratio = f"{attn['peak'] / dense['peak']:.3f}" if measured else "–"
            print(f"| {grid}×{grid} | {grid * grid} | {8 * grid - 7}–{8 * grid} | "
                  f"{'fwd+bwd' if backward else 'fwd'} | {_fmt_time(dense)} | {_fmt_mem(dense)} | "
                  f"{_fmt_time(attn)} | {_fmt_mem(attn)} | {ratio} |", flush=True)
    method = " ".join(__doc__.split("Peak memory: ")[1].split("\n\n")[0].split())
    print(f"\nMemory ratio = attention peak / dense peak. Peak memory: {method}")


def _table4(args: argparse.Namespace, base: dict[str, Any]) -> None:
    size = 505
    difnet_bb, baseline_bb = ("resnet18", "resnet34") if args.quick else ("resnet50", "resnet101")
    spec = {**base, "kind": "table4", "size": size, "difnet_backbone": difnet_bb,
            "baseline_backbone": baseline_bb, "repeats": max(1, min(args.repeats, 3))}
    result = run_case("diffusion_seg.bench.difnet", spec, args.timeout * 4)
    print(f"\n## Table 4: inference at {size}×{size}, batch 1, {args.device} "
          f"(paper: GTX 1080, DifNet-50 seed 18 / similarity 15 / diffusion 6 ms, "
          f"Sim-DeepLab-101 36 ms)\n")
    if "error" in result:
        print(f"failed: {result['error']}")
        return
    # Times only: the parts share one process, so their memory peaks are not separable.
    print("| model | part | time |")
    print("|---|---|---|")
    for part in ("seed", "similarity", "diffusion", "total"):
        print(f"| DifNet ({difnet_bb}) | {part} | {_fmt_time(result[part])} |")
    print(f"| Sim-DeepLab ({baseline_bb}) | total | {_fmt_time(result['baseline'])} |")


def _train_table(args: argparse.Namespace, base: dict[str, Any]) -> None:
    size = args.train_step
    grid = -(-size // 8)
    print(f"\n## Training step at {size}×{size} (DifNet on {args.train_backbone}, "
          f"batch {args.batch}, K={args.classes}, {args.device}; seed grid {grid}×{grid})\n")
    print("| diffusion | step time | peak memory |")
    print("|---|---|---|")
    for mode in ("attention", "dense"):
        estimate = dense_bytes(grid, args.walks, True)
        if mode == "dense" and not args.cuda and estimate > args.mem_limit_gb * 2**30:
            result = {"error": f"OOM-guard (diffusion alone est. {estimate / 2**30:.1f} GB)"}
        else:
            spec = {**base, "kind": "train", "size": size, "mode": mode,
                    "backbone": args.train_backbone, "repeats": max(1, min(args.repeats, 2))}
            result = run_case("diffusion_seg.bench.difnet", spec, args.timeout * 4)
        print(f"| {mode} | {_fmt_time(result)} | {_fmt_mem(result)} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_seg.bench difnet", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                        help="Ψ / autocast dtype of the attention path "
                             "(default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="stop repeating a case after this long (at least one timed run)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per case, seconds")
    parser.add_argument("--quick", action="store_true",
                        help="grids 41 and 64, one repeat, small Table-4 backbones")
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
    parser.add_argument("--train-step", type=int, default=0, metavar="SIZE",
                        help="also time one training step at SIZE×SIZE input")
    parser.add_argument("--train-backbone", default="resnet18")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(lambda spec: CASES[spec["kind"]](spec), args.child)
        return
    args.cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if args.cuda else "float32")
    if args.quick:
        args.repeats = 1
    base = {"device": args.device, "dtype": args.dtype, "repeats": args.repeats,
            "max_seconds": args.max_seconds, "walks": args.walks, "classes": args.classes,
            "psi_channels": args.psi_channels, "batch": args.batch, "threads": args.threads}
    print(f"# DifNet benchmark ({args.device}, median of up to {args.repeats} runs after a "
          "warm-up; each case in a fresh process)")
    if not args.no_diffusion:
        _diffusion_table(args, base)
    if not args.no_table4:
        _table4(args, base)
    if args.train_step:
        _train_table(args, base)


if __name__ == "__main__":
    main(sys.argv[1:])
