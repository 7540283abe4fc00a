"""PDN benchmark: time and peak memory of the diffusion module alone and inside the network,
against the DeepLab-v2 baseline, LG-LSTM and the dense CRF — the paper's Table 3 (ms/image on
a Titan X: ResNet-101 381 ms, +112 ms for one module, +224 ms for two, LG-LSTM 294 ms, CRF
4773 ms).

    python -m diffusion_seg.bench pdn [--device cpu|cuda] [--dtype float32|bfloat16]
                                      [--channels-last] [--rounds 5] [--quick]

Paper setting by default: 321×321 input, batch 1, ResNet-101 (random init: timing only) at
output stride 8 with DeepLab-v2's dilation (a 41×41 grid), frozen BatchNorm, d = 256, 4
layers, ADE20K's 150 classes, 8NB / 24NB × 1 / 2 modules at the default insertion points
(two modules: after res5b and on the output; the cost does not depend on where in res5 they
sit, the grid is the same). Rows: the baseline network (backbone + DeepLab-v2 ASPP
classifier), each PDN network (the same plus the modules), the modules alone on the
backbone's output feature map (the "LSTM" column of Table 3), LG-LSTM (PDN's own ResNet-101
baseline: 5 layers, d = 64, global grid) alone and in the network, and DeepLab-v2's dense CRF
(10 mean-field iterations on the softmax at the input size; forward only: it is
post-processing).

Time: every case of a pass (forward; forward+backward) is built in one process and timed in
interleaved rounds (``diffusion_seg.bench.common.interleave``); "× DLv2" is the per-round
ratio to the baseline network's time in the same round, median [min–max] over the rounds
(for the modules alone: their share of the baseline, Table 3's +29% per module). Times are
medians over the rounds, per image. Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
over one pass minus the memory held before it (weights and inputs excluded); on CPU the growth
of the peak resident set over one warm-up and one pass, each case in a fresh process (so the
modules-alone rows have no backbone in their process).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from diffusion_seg.bench.common import Measured, benchmark, fmt_mb, fmt_ms, fmt_ratio, ratio, table

PAPER_BASE_MS = 381.0
PAPER_MODULE_MS = 112.0  # per module (Table 3: 1M 112 ms, 2M 224 ms)
PAPER_LG_LSTM_MS = 294.0
PAPER_CRF_MS = 4773.0
VARIANTS = ((8, 1), (24, 1), (8, 2), (24, 2))  # (neighbors, modules), the paper's rows
BASELINE = "DeepLab-v2 (backbone + ASPP)"
LG_NAME = "LG-LSTM (5 layers, d=64, w/ G)"

# ---------------------------------------------------------------------------- the cases


def build(spec: dict[str, Any]) -> Any:
    """One case as a call to time: ``spec["scope"]`` network | module | crf, with
    ``neighbors``/``modules`` (0: DeepLab-v2) or ``head="lg_lstm"``, ``backward``."""
    import functools

    import torch

    from diffusion_seg.models.backbone import TimmBackbone
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
        backbone = TimmBackbone(spec["backbone"], output_stride=8, frozen_bn=True,
                                dilation_pattern="deeplab")
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

    return run


# ------------------------------------------------------------------------------ the rows


@dataclass
class Row:
    name: str
    scope: str
    fwd: Measured
    bwd: Measured | None  # None: forward only (the CRF)
    paper: str


def cases(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any], str]]:
    """(row name, scope label, spec, paper column) of every row, baseline first."""
    rows: list[tuple[str, str, dict[str, Any], str]] = []
    if not args.modules_only:
        rows.append((BASELINE, "network", dict(scope="network", neighbors=0, modules=0),
                     f"{PAPER_BASE_MS:.0f} ms"))
    for neighbors, modules in VARIANTS:
        name = f"PDNs-{neighbors}NB-{modules}Module{'s' if modules > 1 else ''}"
        paper = PAPER_MODULE_MS * modules
        case = dict(neighbors=neighbors, modules=modules)
        rows.append((name, f"module{'s' if modules > 1 else ''} alone", dict(scope="module", **case),
                     f"{paper:.0f} ms ({paper / PAPER_BASE_MS:.2f}×)"))
        if not args.modules_only:
            rows.append((name, "network", dict(scope="network", **case),
                         f"+{paper:.0f} ms ({1 + paper / PAPER_BASE_MS:.2f}×)"))
    lg = dict(head="lg_lstm", neighbors=0, modules=1)
    rows.append((LG_NAME, "module alone", dict(scope="module", **lg),
                 f"{PAPER_LG_LSTM_MS:.0f} ms ({PAPER_LG_LSTM_MS / PAPER_BASE_MS:.2f}×)"))
    if not args.modules_only:
        rows.append((LG_NAME, "network", dict(scope="network", **lg),
                     f"+{PAPER_LG_LSTM_MS:.0f} ms ({1 + PAPER_LG_LSTM_MS / PAPER_BASE_MS:.2f}×)"))
    if args.crf_iterations:
        rows.append((f"dense CRF ({args.crf_iterations} iterations, exact)", "post-processing",
                     dict(scope="crf", neighbors=0, modules=0),
                     f"{PAPER_CRF_MS:.0f} ms ({PAPER_CRF_MS / PAPER_BASE_MS:.1f}×)"))
    return rows


def base_spec(args: argparse.Namespace) -> dict[str, Any]:
    from diffusion_seg.models.backbone import TimmBackbone

    base = {key: getattr(args, key) for key in (
        "device", "dtype", "channels_last", "threads", "size", "batch", "backbone",
        "hidden", "layers", "classes", "crf_iterations")}
    base["channels"] = TimmBackbone(args.backbone).channels[-1]
    return base


def collect(args: argparse.Namespace) -> list[Row]:
    """Measure every row: one interleaved run for the forward pass, one for forward+backward."""
    base = base_spec(args)
    rows = cases(args)
    key = {i: f"{name} / {scope}" for i, (name, scope, _, _) in enumerate(rows)}
    baseline = key[0] if not args.modules_only else next(
        k for i, k in key.items() if k.startswith("PDNs-24NB-1Module /"))
    passes: dict[bool, dict[str, Measured]] = {}
    for backward in (False, True):
        specs = {key[i]: {**base, **case, "backward": backward}
                 for i, (_, _, case, _) in enumerate(rows)
                 if not (backward and case["scope"] == "crf")}
        passes[backward] = benchmark(
            build, specs, device=args.device, rounds=args.rounds, baseline=baseline,
            memory=not args.no_memory, timeout=args.timeout, max_seconds=args.max_seconds)
    return [Row(name, scope, passes[False][key[i]], passes[True].get(key[i]), paper)
            for i, (name, scope, _, paper) in enumerate(rows)]


def lg_over_pdn(rows: list[Row]) -> Any:
    """Per-round LG-LSTM / PDNs-24NB-1Module time ratio of the modules alone, forward."""
    alone = {r.name: r for r in rows if r.scope == "module alone"}
    lg, pdn = alone.get(LG_NAME), alone.get("PDNs-24NB-1Module")
    return ratio(lg.fwd, pdn.fwd) if lg and pdn else None


def render(rows: list[Row], batch: int, ratio_label: str = "× DLv2") -> str:
    scale = 1.0 / batch
    header = ["model", "scope", "fwd ms", f"fwd {ratio_label}", "fwd peak MB", "fwd+bwd ms",
              f"fwd+bwd {ratio_label}", "fwd+bwd peak MB", "paper (Table 3)"]
    body = []
    for r in rows:
        bwd = [fmt_ms(r.bwd, scale), fmt_ratio(r.bwd), fmt_mb(r.bwd)] if r.bwd else ["–"] * 3
        body.append([r.name, r.scope, fmt_ms(r.fwd, scale), fmt_ratio(r.fwd), fmt_mb(r.fwd),
                     *bwd, r.paper])
    return table(header, body)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="bfloat16: autocast, as trainer=gpu trains")
    parser.add_argument("--channels-last", action="store_true", help="channels-last inputs/weights")
    parser.add_argument("--rounds", "--repeats", type=int, default=5, dest="rounds",
                        help="interleaved timed rounds (median and spread over them)")
    parser.add_argument("--max-seconds", type=float, default=float("inf"),
                        help="stop adding rounds to a pass after this long (at least one)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--size", type=int, default=321, help="input side (paper: 321)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--hidden", type=int, default=256, help="d (paper: 256)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--classes", type=int, default=150, help="ADE20K: 150")
    parser.add_argument("--timeout", type=float, default=900.0, help="per memory case, seconds")
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--quick", action="store_true",
                        help="tiny backbone, 96×96 input, d=64, 2 rounds, at most 2 CRF "
                             "iterations: a smoke run")
    parser.add_argument("--modules-only", action="store_true",
                        help="only the modules-alone rows (no backbone: fast)")
    parser.add_argument("--crf-iterations", type=int, default=10,
                        help="mean-field iterations of the CRF row (DeepLab: 10); 0 skips the row. "
                             "The CRF is exact: on a CPU at 321² with 150 classes an iteration "
                             "takes minutes, so pass 0 there")


def apply_quick(args: argparse.Namespace) -> None:
    if args.quick:
        args.backbone, args.size, args.hidden, args.rounds = "test_resnet", 96, 64, 2
        args.crf_iterations = min(args.crf_iterations, 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_seg.bench pdn", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    apply_quick(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    grid = -(-args.size // 8)
    print(f"# PDN benchmark: {args.backbone} OS8, {args.size}×{args.size} ({grid}×{grid} grid), "
          f"batch {args.batch}, d={args.hidden}, {args.layers} layers, K={args.classes}, "
          f"{args.device} {args.dtype}{', channels-last' if args.channels_last else ''}"
          f"{f', {args.threads} threads' if args.threads else ''}; ms/image = median of "
          f"{args.rounds} interleaved rounds after a warm-up; × = per-round ratio to the "
          f"{'PDNs-24NB-1Module modules' if args.modules_only else 'DeepLab-v2 network'}, "
          "median [min–max]; peak = MB added by the pass\n", flush=True)
    rows = collect(args)
    print(render(rows, args.batch, "× 24NB-1M" if args.modules_only else "× DLv2"))
    lg = lg_over_pdn(rows)
    if lg is not None:
        print(f"\nLG-LSTM / PDNs-24NB-1Module, modules alone, forward: {lg}× per round "
              f"(paper: {PAPER_LG_LSTM_MS / PAPER_MODULE_MS:.2f}×)")
