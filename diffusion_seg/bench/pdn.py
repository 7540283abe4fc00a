"""PDN benchmark: time and peak memory of the diffusion module alone and inside the network,
against the DeepLab-v2 baseline, LG-LSTM and the dense CRF — the paper's Table 3 (ms/image on
a Titan X: ResNet-101 381 ms, +112 ms for one module, +224 ms for two, LG-LSTM 294 ms, CRF
4773 ms).

    python -m diffusion_seg.bench pdn [--device cpu|cuda] [--dtype float32|bfloat16]
                                      [--channels-last] [--repeats 3] [--quick]

Paper setting by default: 321×321 input, batch 1, ResNet-101 (random init: timing only) at
output stride 8 (a 41×41 grid), frozen BatchNorm, d = 256, 4 layers, ADE20K's 150 classes,
8NB / 24NB × 1 / 2 modules at the default insertion points (two modules: after res5b and on
the output; the cost does not depend on where in res5 they sit, the grid is the same).
Rows: the baseline network (backbone + DeepLab-v2 ASPP classifier), each PDN network (the
same plus the modules), the modules alone on the backbone's output feature map (the "LSTM"
column of Table 3), LG-LSTM (PDN's own ResNet-101 baseline: 5 layers, d = 64, global grid)
alone and in the network, and DeepLab-v2's dense CRF (10 mean-field iterations on the
softmax at the input size; forward only: it is post-processing). Overhead = network −
baseline, in ms and relative; the LG-LSTM / PDN-1M ratio of the modules alone is printed at
the end (paper: 294 / 112 = 2.6).

Every case runs in its own subprocess, so one case's allocations cannot hide another's
peak. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory held before
the timed runs (weights and inputs excluded); on CPU the growth of the process's peak
resident set (``ru_maxrss``) over its value right before the first (warm-up) run. Times
are the best of ``--repeats`` runs after the warm-up: on a shared CPU the minimum is the
least disturbed estimate (on a GPU best and median hardly differ).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from diffusion_seg.bench.common import child_main, measure, run_case

from diffusion_seg.models.backbone import TimmBackbone

PAPER_BASE_MS = 381.0
PAPER_MODULE_MS = 112.0  # per module (Table 3: 1M 112 ms, 2M 224 ms)
PAPER_LG_LSTM_MS = 294.0
PAPER_CRF_MS = 4773.0
VARIANTS = ((8, 1), (24, 1), (8, 2), (24, 2))  # (neighbors, modules), the paper's rows

# --------------------------------------------------------------------------- child side


def _case(spec: dict[str, Any]) -> dict[str, Any]:
    import functools

    import torch

    from diffusion_seg.models.crf import dense_crf
    from diffusion_seg.models.heads import DeepLabV2Head
    from diffusion_seg.models.lg_lstm import LGLSTMHead, LGLSTMModule
    from diffusion_seg.models.pdn import DiffusionModule, PDNHead
    from diffusion_seg.models.segmentor import Segmentor

    torch.manual_seed(0)
    device, backward = spec["device"], spec["backward"]
    memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    autocast = torch.autocast(
        device.split(":")[0], dtype=torch.bfloat16, enabled=spec["dtype"] == "bfloat16"
    )
    size, batch, classes = spec["size"], spec["batch"], spec["classes"]
    pdn = dict(neighbors=spec["neighbors"], layers=spec["layers"], hidden=spec["hidden"])

    lg_lstm = spec.get("head") == "lg_lstm"
    if spec["scope"] == "crf":
        # DeepLab-v2's post-processing: softmax and RGB image at the input size, no network.
        probs = torch.randn(batch, classes, size, size, device=device).softmax(1)
        rgb = torch.rand(batch, 3, size, size, device=device) * 255
        backward, net = False, torch.nn.Identity()

        def forward() -> list[torch.Tensor]:
            return [dense_crf(probs, rgb, iterations=spec["crf_iterations"])]

    elif spec["scope"] == "module":
        # The modules alone, on a (post-ReLU-like) feature map of the backbone output's shape.
        # No backbone in this process: its peak would hide the modules' in ``ru_maxrss``.
        grid = -(-size // 8)
        x = torch.randn(batch, spec["channels"], grid, grid, device=device).relu_()
        stack = torch.nn.ModuleList(
            LGLSTMModule(spec["channels"], classes, layers=5, hidden=64) if lg_lstm
            else DiffusionModule(spec["channels"], classes, **pdn)
            for _ in range(spec["modules"])
        )
        net = stack.to(device, memory_format=memory_format)
        x = x.contiguous(memory_format=memory_format).requires_grad_(backward)

        def forward() -> list[torch.Tensor]:
            y, aux = x, []
            for module in stack:
                y, logits = module(y)
                aux += logits
            return [y, *aux]

    else:
        image = torch.randn(batch, 3, size, size, device=device)
        image = image.contiguous(memory_format=memory_format)
        backbone = TimmBackbone(spec["backbone"], output_stride=8, frozen_bn=True)
        if lg_lstm:
            head = functools.partial(LGLSTMHead, layers=5, hidden=64)
        elif spec["neighbors"]:
            head = functools.partial(PDNHead, modules=spec["modules"], **pdn)
        else:
            head = DeepLabV2Head
        net = Segmentor(backbone, head, classes).to(device, memory_format=memory_format)

        def forward() -> list[torch.Tensor]:
            out = net(image)
            return [out.logits, *out.aux.values()]

    if backward:
        net.train()

        def run() -> None:
            with autocast:
                outputs = forward()
            sum(o.float().mean() for o in outputs).backward()
            for p in net.parameters():
                p.grad = None

    else:
        net.eval()

        def run() -> None:
            with torch.no_grad(), autocast:
                forward()

    result = measure(run, device, spec["repeats"])
    result["time"] /= batch
    return result


# -------------------------------------------------------------------------- parent side


def _ms(result: dict[str, Any]) -> str:
    return result.get("error") or f"{result['time'] * 1e3:.1f}"


def _mb(result: dict[str, Any]) -> str:
    return "–" if "error" in result else f"{result['peak'] / 2**20:.0f}"


def _overhead(result: dict[str, Any], base: dict[str, Any]) -> str:
    if "error" in result or "error" in base:
        return "–"
    extra = result["time"] - base["time"]
    return f"{extra * 1e3:+.1f} ms ({extra / base['time']:+.0%})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_seg.bench pdn", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="bfloat16: autocast, as trainer=gpu trains")
    parser.add_argument("--channels-last", action="store_true", help="channels-last inputs/weights")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per case (the best is reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--size", type=int, default=321, help="input side (paper: 321)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--hidden", type=int, default=256, help="d (paper: 256)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--classes", type=int, default=150, help="ADE20K: 150")
    parser.add_argument("--timeout", type=float, default=900.0, help="per case, seconds")
    parser.add_argument("--quick", action="store_true",
                        help="tiny backbone, 96×96 input, d=64, 2 repeats: a smoke run")
    parser.add_argument("--modules-only", action="store_true",
                        help="only the modules-alone rows (no backbone: fast)")
    parser.add_argument("--crf-iterations", type=int, default=10,
                        help="mean-field iterations of the CRF row (DeepLab: 10); 0 skips the row")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(_case, args.child)
        return
    if args.quick:
        args.backbone, args.size, args.hidden, args.repeats = "test_resnet", 96, 64, 2
    base = {key: getattr(args, key) for key in (
        "device", "dtype", "channels_last", "repeats", "threads", "size", "batch", "backbone",
        "hidden", "layers", "classes", "crf_iterations")}
    base["channels"] = TimmBackbone(args.backbone).channels[-1]
    grid = -(-args.size // 8)
    print(f"# PDN benchmark: {args.backbone} OS8, {args.size}×{args.size} ({grid}×{grid} grid), "
          f"batch {args.batch}, d={args.hidden}, {args.layers} layers, K={args.classes}, "
          f"{args.device} {args.dtype}{', channels-last' if args.channels_last else ''}"
          f"{f', {args.threads} threads' if args.threads else ''}; ms/image, best of "
          f"{args.repeats} after a warm-up; peak = MB added by the pass (each case in a fresh "
          "process)\n")
    print("| model | scope | fwd ms | fwd peak MB | fwd+bwd ms | fwd+bwd peak MB | "
          "fwd overhead | fwd+bwd overhead | paper (Table 3) |")
    print("|---|---|---|---|---|---|---|---|---|")

    def measure(backwards: tuple[bool, ...] = (False, True), **case: Any) -> tuple[dict[str, Any], ...]:
        return tuple(
            run_case("diffusion_seg.bench.pdn", {**base, **case, "backward": backward}, args.timeout)
            for backward in backwards
        )

    if not args.modules_only:
        baseline = measure(scope="network", neighbors=0, modules=0)
        print(f"| DeepLab-v2 (backbone + ASPP) | network | {_ms(baseline[0])} | "
              f"{_mb(baseline[0])} | {_ms(baseline[1])} | {_mb(baseline[1])} | – | – | "
              f"{PAPER_BASE_MS:.0f} ms |", flush=True)
    for neighbors, modules in VARIANTS:
        name = f"PDNs-{neighbors}NB-{modules}Module{'s' if modules > 1 else ''}"
        paper = PAPER_MODULE_MS * modules
        alone = measure(scope="module", neighbors=neighbors, modules=modules)
        print(f"| {name} | module{'s' if modules > 1 else ''} alone | {_ms(alone[0])} | "
              f"{_mb(alone[0])} | {_ms(alone[1])} | {_mb(alone[1])} | – | – | "
              f"{paper:.0f} ms |", flush=True)
        if args.modules_only:
            continue
        network = measure(scope="network", neighbors=neighbors, modules=modules)
        print(f"| {name} | network | {_ms(network[0])} | {_mb(network[0])} | {_ms(network[1])} | "
              f"{_mb(network[1])} | {_overhead(network[0], baseline[0])} | "
              f"{_overhead(network[1], baseline[1])} | +{paper:.0f} ms "
              f"(+{paper / PAPER_BASE_MS:.0%}) |", flush=True)
        if (neighbors, modules) == (24, 1):
            pdn_alone = alone
    lg_alone = measure(scope="module", head="lg_lstm", neighbors=0, modules=1)
    print(f"| LG-LSTM (5 layers, d=64, w/ G) | module alone | {_ms(lg_alone[0])} | "
          f"{_mb(lg_alone[0])} | {_ms(lg_alone[1])} | {_mb(lg_alone[1])} | – | – | "
          f"{PAPER_LG_LSTM_MS:.0f} ms |", flush=True)
    if not args.modules_only:
        lg_net = measure(scope="network", head="lg_lstm", neighbors=0, modules=1)
        print(f"| LG-LSTM (5 layers, d=64, w/ G) | network | {_ms(lg_net[0])} | {_mb(lg_net[0])} | "
              f"{_ms(lg_net[1])} | {_mb(lg_net[1])} | {_overhead(lg_net[0], baseline[0])} | "
              f"{_overhead(lg_net[1], baseline[1])} | +{PAPER_LG_LSTM_MS:.0f} ms |", flush=True)
    if args.crf_iterations:
        (crf,) = measure(backwards=(False,), scope="crf", neighbors=0, modules=0)
        print(f"| dense CRF ({args.crf_iterations} iterations, exact) | post-processing | "
              f"{_ms(crf)} | {_mb(crf)} | – | – | – | – | {PAPER_CRF_MS:.0f} ms |", flush=True)
    if "error" not in lg_alone[0] and "error" not in pdn_alone[0]:
        print(f"\nLG-LSTM / PDNs-24NB-1Module, modules alone, forward: "
              f"{lg_alone[0]['time'] / pdn_alone[0]['time']:.2f}× "
              f"(paper: {PAPER_LG_LSTM_MS / PAPER_MODULE_MS:.2f}×)")


if __name__ == "__main__":
    main(sys.argv[1:])
