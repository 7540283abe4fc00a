"""GPU benchmark: the papers' timing tables on CUDA in bf16 and fp32, written as one markdown
table (with the date, the device and the torch version) so runs on different machines can be
kept side by side.

    python -m diffusion_seg.bench gpu [--device cuda] [--dtypes bfloat16 float32]
                                      [--out benchmarks/gpu_<date>_<device>.md] [--rounds 5]
                                      [--compile] [--quick]
    make bench ARGS="gpu"

Per dtype (bfloat16 = autocast, as ``trainer=gpu`` trains):

* PDN Table 3 (``bench pdn`` at the paper setting: ResNet-101 OS8, 321², batch 1, d = 256,
  K = 150): DeepLab-v2, PDNs 8NB / 24NB × 1 / 2 modules (network and modules alone), LG-LSTM,
  the dense CRF; forward and forward+backward, ms/image, × DeepLab-v2 per interleaved round.
* DifNet Table 4 (``bench difnet``: DifNet-50's seed / similarity / diffusion / total and
  Sim-DeepLab-101 at 505², inference), × Sim-DeepLab per round.
* Training throughput (``bench train`` at the paper setting, batch ``--train-batch`` 16,
  321²): DeepLab-v2 and PDNs-24NB-2M, a full SGD step, images/s; ``--compile`` adds compiled
  rows.
* The dense CRF (``bench crf``): exact and lattice backends, 10 mean-field iterations at
  321² and 513² with 21 and 150 classes on a natural-looking scene, × exact per round
  (``auto`` picks the faster of the two on a GPU; these rows say which that is).

Peak memory is CUDA's peak allocated memory over one pass above what was allocated before it.
``--device cpu --quick`` runs everything at test size (tiny backbone, 32² inputs, one round):
the test suite does, so the command cannot rot.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
from pathlib import Path
from typing import Any

from diffusion_seg.bench import crf, difnet, pdn, train
from diffusion_seg.bench.common import benchmark, fmt_mb, fmt_ms, fmt_ratio, table

HEADER = ["benchmark", "case", "dtype", "pass", "ms", "× baseline [min–max]", "peak MB",
          "images/s", "paper"]
TABLE4_PAPER = {"seed": "18 ms", "similarity": "15 ms", "diffusion": "6 ms",
                "total": "39 ms (18+15+6)", "baseline": "36 ms"}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _parse(add_arguments: Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def _common(args: argparse.Namespace, dtype: str) -> list[str]:
    argv = ["--device", args.device, "--dtype", dtype, "--rounds", str(args.rounds)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def pdn_rows(args: argparse.Namespace, dtype: str, notes: list[str]) -> list[list[str]]:
    ns = _parse(pdn.add_arguments, _common(args, dtype) + ["--max-seconds", str(args.max_seconds)])
    if args.quick:  # the tiny backbone too: the smoke run was timing ResNet-101 on CPU
        ns.backbone, ns.size, ns.hidden, ns.classes, ns.crf_iterations = "test_resnet", 32, 16, 21, 1
    ns.rounds = args.rounds
    rows = []
    collected = pdn.collect(ns)
    for row in collected:
        passes = [("fwd", row.fwd)] + ([("fwd+bwd", row.bwd)] if row.bwd is not None else [])
        for name, result in passes:
            rows.append(["PDN Table 3", f"{row.name} ({row.scope})", dtype, name,
                         fmt_ms(result, 1 / ns.batch), fmt_ratio(result), fmt_mb(result), "–",
                         row.paper])
    notes.append(f"LG-LSTM / PDNs-24NB-1Module, modules alone, forward, {dtype}: "
                 f"{pdn.lg_over_pdn(collected) or '–'}× per round (paper: "
                 f"{pdn.PAPER_LG_LSTM_MS / pdn.PAPER_MODULE_MS:.2f}×)")
    return rows


def table4_rows(args: argparse.Namespace, dtype: str, notes: list[str]) -> list[list[str]]:
    argv = _common(args, dtype) + ["--max-seconds", str(args.max_seconds)]
    if args.quick:
        argv += ["--table4-size", "64", "--table4-backbones", "test_resnet", "test_resnet"]
    ns = _parse(difnet.add_arguments, argv)
    base = difnet.finish_arguments(ns)
    ns.rounds = args.rounds
    results, difnet_bb, baseline_bb = difnet.table4(ns, base)
    rows = []
    for part in ("seed", "similarity", "diffusion", "total", "baseline"):
        result = results[part]
        case = (f"Sim-DeepLab ({baseline_bb}) total" if part == "baseline"
                else f"DifNet ({difnet_bb}) {part}")
        rows.append([f"DifNet Table 4 ({ns.table4_size}²)", case, dtype, "fwd", fmt_ms(result),
                     fmt_ratio(result), "–", "–", TABLE4_PAPER[part]])
    return rows


def train_rows(args: argparse.Namespace, dtype: str, notes: list[str]) -> list[list[str]]:
    argv = _common(args, dtype) + ["--heads", "deeplabv2", "pdn_2m",
                                   "--max-seconds", str(args.max_seconds)]
    argv += ["--compile" if args.compile else "--no-compile"]
    if args.quick:
        argv += ["--setting", "tiny", "--batch", "2"]
    else:
        argv += ["--setting", "paper", "--batch", str(args.train_batch)]
    ns = _parse(train.add_arguments, argv)
    train.finish_arguments(ns)
    specs, results = train.collect(ns, ns.setting)
    rows = []
    for name, result in results.items():
        spec = specs[name]
        head, mode = name.split("/")
        images = f"{spec['batch'] / result.median:.1f}" if result.ok else "–"
        rows.append([f"training step ({spec['size']}², batch {spec['batch']}, K={spec['classes']})",
                     f"{train.LABELS[head]} ({mode})", dtype, "step", fmt_ms(result),
                     fmt_ratio(result), fmt_mb(result), images, "–"])
    return rows


def crf_rows(args: argparse.Namespace, dtype: str, notes: list[str]) -> list[list[str]]:
    sizes, classes, iterations = ([32], [21], 1) if args.quick else ([321, 513], [21, 150], 10)
    rows = []
    for size in sizes:
        for k in classes:
            specs = {backend: dict(device=args.device, dtype=dtype, size=size, classes=k,
                                   iterations=iterations, threads=args.threads, backend=backend)
                     for backend in ("exact", "lattice")}
            results = benchmark(crf.build, specs, device=args.device, rounds=args.rounds,
                                baseline="exact", max_seconds=args.max_seconds)
            paper = "4773 ms (lattice)" if (size, k) == (321, 150) else "–"
            for backend, result in results.items():
                rows.append([f"dense CRF ({size}², K={k}, {iterations} it.)", backend, dtype,
                             "fwd", fmt_ms(result), fmt_ratio(result), fmt_mb(result), "–",
                             paper])
    return rows


def run(args: argparse.Namespace) -> str:
    """Every section for every dtype; the markdown document."""
    import torch

    rows: list[list[str]] = []
    notes: list[str] = []
    for dtype in args.dtypes:
        for section in (pdn_rows, table4_rows, train_rows, crf_rows):
            if section.__name__.split("_")[0] in args.skip:
                continue
            rows += section(args, dtype, notes)
            print(f"# {section.__name__} {dtype}: done", file=sys.stderr, flush=True)
    today = datetime.date.today().isoformat()
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
    on_cuda = args.device.startswith("cuda")
    if on_cuda:
        build += f", cuDNN {torch.backends.cudnn.version()}"
    peak = ("CUDA: peak allocated memory above what was allocated before the pass" if on_cuda
            else "CPU: growth of the peak RSS over a warm-up and one pass, each case in a fresh "
                 "process")
    lines = [
        f"# diffusion_seg GPU benchmark, {today}",
        "",
        f"- device: {device_name(args.device)} (`{args.device}`)",
        f"- torch {torch.__version__} ({build}), Python {platform.python_version()}",
        f"- command: `python -m diffusion_seg.bench gpu {' '.join(args.argv)}`".rstrip(),
        f"- {args.rounds} interleaved round(s) per comparison after a warm-up; ms = median "
        "(PDN rows per image, training rows per step); × baseline = per-round ratio to the "
        "section's baseline (PDN: DeepLab-v2 network, same pass; Table 4: Sim-DeepLab; "
        "training: DeepLab-v2's step, compiled rows to compiled DeepLab-v2; CRF: the exact "
        "backend, per call), median [min–max]; "
        f"peak = memory one pass adds ({peak}); Table 4 reports times only",
        "",
        table(HEADER, rows),
        "",
        *(f"- {note}" for note in notes),
        "",
    ]
    return "\n".join(lines)


def default_out(device: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device_name(device)).strip("_").lower() or "device"
    return Path("benchmarks") / f"gpu_{datetime.date.today().isoformat()}_{slug}.md"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_seg.bench gpu", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... (cpu: for tests)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=("bfloat16", "float32"))
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown file (default benchmarks/gpu_<date>_<device>.md)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--max-seconds", type=float, default=float("inf"),
                        help="stop adding rounds to a comparison after this long")
    parser.add_argument("--train-batch", type=int, default=16, help="batch of the training rows")
    parser.add_argument("--compile", action="store_true", help="also compiled training rows")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("pdn", "table4", "train", "crf"),
                        help="sections to leave out")
    parser.add_argument("--quick", action="store_true",
                        help="test size: tiny backbone, 32² inputs, 1 round")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.rounds = 1
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench gpu: no CUDA device (use --device cpu --quick for a smoke run)")
        torch.backends.cudnn.benchmark = True
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    document = run(args)
    out = args.out or default_out(args.device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document)
    print(document)
    print(f"written: {out}")
