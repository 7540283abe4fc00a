"""Training-step benchmark: time and peak memory of one full training step of every head,
relative to DeepLab-v2 in the same interleaved run, eager and compiled.

    python -m diffusion_seg.bench train [--setting tiny|paper|both] [--heads deeplabv2 pdn ...]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--compile | --no-compile]
        [--rounds 5] [--batch N] [--large 1024] [--quick]

A step is what ``SegmentationTask.training_step`` and Lightning do per batch: forward, the
loss (``models.losses.segmentation_loss``: cross-entropy on the main logits plus
``task.aux_weight`` × that of every auxiliary output, in float32), backward, and the optimizer
step (SGD with the task's two learning-rate groups, ``Segmentor.param_groups``), gradients
zeroed first. ``--dtype bfloat16`` runs forward and loss under autocast, as ``trainer=gpu``
does. Networks come from the project's configs (``compose_config`` + ``build_segmentor``), so
each head has its options of:

* ``tiny``: the built-in benchmark (``experiment=pathfinder_<head>``: ``test_resnet`` at
  output stride 8 from scratch, 64×64 input, batch 16, 4 classes, the head options of the
  pathfinder runs).
* ``paper``: the papers' setting (ResNet-101, random weights, output stride 8 with
  DeepLab-v2's dilation, 321×321, classes of the head's paper: 150 (ADE20K) for DeepLab-v2,
  PDN, LG-LSTM, PSPNet; 21 (VOC) for FCN, DifNet-101, DeepLab-v3), batch ``--batch``
  (default 2: BatchNorm of PSPNet's and DeepLab-v3's pooled maps needs two).

Time: all cases of a setting (heads × eager / compiled) are built in one process and timed in
interleaved rounds (``diffusion_seg.bench.common.interleave``): "step ms" is the median over
the rounds, "× DLv2" the per-round ratio to DeepLab-v2's step (compiled rows: to compiled
DeepLab-v2), median [min–max]. Compiled rows use ``torch.compile(net, mode=--compile-mode)``
(the network's forward and, through AOT autograd, its backward; loss and optimizer eager);
"compile s" is the first step's time minus the median step, i.e. compilation (inductor's
on-disk caches disabled, so it is a cold compile; the first compiled row also pays the
compiler's one-time start-up), kept out of the step time. Peak memory:
CPU, each case in a fresh process, growth of its peak resident set over a warm-up and one
step (activations, gradients, temporaries; momentum buffers are created before), compiled
cases compiled before that; CUDA, peak allocated memory over one step above the memory held
before it (weights, optimizer state).

``--large SIZE`` adds the DifNet-101 rows of a single training step at SIZE×SIZE, batch 1,
with and without ``backbone.activation_checkpointing`` (both backbones: the similarity branch
clones the seed backbone's config), each in a fresh process: step time and the process's
peak resident set (CPU) or peak allocated memory (CUDA), against ``--budget-gb``.
"""

from __future__ import annotations

import argparse
from typing import Any

from diffusion_seg.bench.common import (
    Measured,
    benchmark,
    fmt_mb,
    fmt_ms,
    fmt_ratio,
    ratio,
    run_isolated,
    table,
)

HEADS = ("deeplabv2", "fcn", "pdn", "difnet", "lg_lstm", "pspnet", "deeplabv3")
BASELINE = "deeplabv2"
LABELS = {
    "deeplabv2": "DeepLab-v2", "fcn": "FCN", "pdn": "PDNs-24NB-1M", "pdn_2m": "PDNs-24NB-2M",
    "difnet": "DifNet", "lg_lstm": "LG-LSTM", "pspnet": "PSPNet", "deeplabv3": "DeepLab-v3",
}
# head → (config overrides, classes) of the papers' setting (ResNet-101, DeepLab dilation)
PAPER: dict[str, tuple[list[str], int]] = {
    "deeplabv2": (["experiment=deeplabv2_ade20k"], 150),
    "fcn": (["experiment=deeplabv2_ade20k", "model=fcn"], 21),
    "pdn": (["experiment=pdn_24nb_1m_ade20k"], 150),
    "pdn_2m": (["experiment=pdn_24nb_2m_ade20k"], 150),
    "difnet": (["experiment=difnet101_voc"], 21),
    "lg_lstm": (["experiment=lg_lstm_ade20k"], 150),
    "pspnet": (["experiment=pspnet_ade20k_syncbn"], 150),
    "deeplabv3": (["experiment=deeplabv3_person_part_syncbn"], 21),
}
PAPER_SIZE = 321


def tiny_overrides(head: str) -> list[str]:
    if head == "pdn_2m":
        return ["experiment=pathfinder_pdn", "model.modules=2"]
    return [f"experiment=pathfinder_{head}"]


# ---------------------------------------------------------------------------- the step


def make_optimizer(cfg: Any, net: Any) -> Any:
    """The run's optimizer with ``SegmentationTask.configure_optimizers``' parameter groups
    (:meth:`~diffusion_seg.models.segmentor.Segmentor.param_groups`)."""
    from diffusion_seg.config import instantiate_node

    factory = instantiate_node(cfg, "optimizer")
    return factory(net.param_groups(factory.keywords["lr"], cfg.task.new_lr_mult))


def build(spec: dict[str, Any]) -> Any:
    """One training step of ``spec["overrides"]``' network as a call to time."""
    import torch

    from diffusion_seg.builders import build_segmentor
    from diffusion_seg.config import compose_config
    from diffusion_seg.models.losses import segmentation_loss

    cfg = compose_config(spec["overrides"])
    device, batch, size, classes = spec["device"], spec["batch"], spec["size"], spec["classes"]
    torch.manual_seed(0)
    net = build_segmentor(cfg, classes, pretrained=False).to(device).train()
    channels_last = bool(cfg.task.get("channels_last", False))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, net)
    # Momentum buffers exist from the first real step on: create them now, so the first
    # measured step already has the steady state's memory.
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, size, size, generator=generator).to(device)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, classes, (batch, size, size), generator=generator).to(device)
    forward = net
    if spec.get("compile"):
        # Every compilation from scratch: "compile s" must not depend on what an earlier run
        # (or this case's memory process) left in inductor's on-disk caches.
        torch._inductor.config.force_disable_caches = True
        # Every head's network is another Segmentor: one more compilation of the same
        # Segmentor.forward each, past Dynamo's default limit of 8 (then it runs eagerly).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        forward = torch.compile(net, mode=spec["compile"])
    aux_weight, ignore_index = float(cfg.task.aux_weight), int(cfg.task.ignore_index)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                              enabled=spec["dtype"] == "bfloat16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = segmentation_loss(forward(image), target, aux_weight, ignore_index)
        loss.backward()
        optimizer.step()

    step.net, step.optimizer, step.aux_weight = net, optimizer, aux_weight  # type: ignore[attr-defined]
    return step


# ------------------------------------------------------------------------------ the runs


def setting_specs(args: argparse.Namespace, setting: str) -> dict[str, dict[str, Any]]:
    """``"<head>/<eager|compiled>"`` → spec, DeepLab-v2 eager first (the baseline)."""
    from diffusion_seg.config import compose_config

    heads = [BASELINE] + [h for h in args.heads if h != BASELINE]
    specs = {}
    for mode in args.modes:
        for head in heads:
            if setting == "tiny":
                overrides = tiny_overrides(head)
                from diffusion_seg.data.pathfinder import CLASS_NAMES

                cfg = compose_config(overrides)
                classes, size = len(CLASS_NAMES), int(cfg.dataset.crop_size)
                batch = args.batch or int(cfg.dataset.batch_size)
            else:
                overrides, classes = PAPER[head]
                size, batch = args.paper_size, args.batch or 2
            specs[f"{head}/{mode}"] = {
                "head": head, "overrides": [*overrides, *args.override], "classes": classes,
                "size": size, "batch": batch, "device": args.device, "dtype": args.dtype,
                "compile": args.compile_mode if mode == "compiled" else None,
                "threads": args.threads,
                # compiled: compile before the memory mark (the peak is the step's, not the
                # compiler's)
                "memory_warmups": 1 if mode == "compiled" else 0,
            }
    return specs


def collect(
    args: argparse.Namespace, setting: str, specs: dict[str, dict[str, Any]] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, Measured]]:
    """Specs and results of one setting; compiled rows' ``ratio`` is to compiled DeepLab-v2."""
    specs = specs or setting_specs(args, setting)
    results = benchmark(build, specs, device=args.device, rounds=args.rounds,
                        baseline=f"{BASELINE}/eager", memory=not args.no_memory,
                        timeout=args.timeout, max_seconds=args.max_seconds)
    base = results.get(f"{BASELINE}/compiled")
    for name, result in results.items():
        if name.endswith("/compiled"):
            result.ratio = ratio(result, base) if base is not None and name != f"{BASELINE}/compiled" else None
    return specs, results


def compile_seconds(result: Measured) -> str:
    if not result.ok or result.first is None:
        return "–"
    return f"{max(result.first - result.median, 0.0):.1f}"


def render(specs: dict[str, dict[str, Any]], results: dict[str, Measured]) -> str:
    rows = []
    for name, result in results.items():
        spec = specs[name]
        head, mode = name.split("/")
        images = f"{spec['batch'] / result.median:.1f}" if result.ok else "–"
        eager = results.get(f"{head}/eager")
        speedup = ratio(result, eager) if mode == "compiled" and eager is not None else None
        rows.append([LABELS.get(head, head), mode, spec["classes"], fmt_ms(result), images,
                     fmt_ratio(result), fmt_mb(result),
                     compile_seconds(result) if mode == "compiled" else "–",
                     "–" if speedup is None else str(speedup)])
    return table(["head", "mode", "K", "step ms", "images/s", "× DLv2 [min–max]", "peak MB",
                  "compile s", "compiled / eager"], rows)


def large_rows(args: argparse.Namespace) -> list[list[str]]:
    """DifNet-101 training steps at ``--large``² with and without activation checkpointing,
    each in a fresh process; rows are printed as they come."""
    from diffusion_seg.config import compose_config

    overrides, classes = PAPER["difnet"]
    name = f"DifNet ({compose_config([*overrides, *args.override]).backbone.name}) {args.large}²"
    cuda = args.device.startswith("cuda")
    header = ["model", "activation checkpointing", "step s",
              "peak GB (allocated)" if cuda else "peak GB (process RSS)", "GB added by the step",
              f"≤ {args.budget_gb:g} GB"]
    print(table(header, []), flush=True)
    rows = []
    for checkpointing in args.large_checkpointing:
        spec = {
            "head": "difnet", "classes": classes, "size": args.large, "batch": 1,
            "overrides": [*overrides, *args.override,
                          f"backbone.activation_checkpointing={str(checkpointing == 'on').lower()}"],
            "device": args.device, "dtype": args.dtype, "compile": None, "threads": args.threads,
            "memory_repeats": 0, "max_seconds": 0.0, "mem_limit_gb": args.mem_limit_gb,
        }
        result = run_isolated(build, spec, args.timeout * 4)
        if "error" in result:
            row = [name, checkpointing, result["error"], "–", "–",
                   "no" if result["error"].startswith("OOM") else "–"]
        else:
            total = result["total"] / 2**30
            row = [name, checkpointing, f"{result['time']:.1f}",
                   f"{total:.2f}", f"{result['peak'] / 2**30:.2f}",
                   "yes" if total <= args.budget_gb else "no"]
        print("| " + " | ".join(row) + " |", flush=True)
        rows.append(row)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="bfloat16: forward and loss under autocast (trainer=gpu)")
    parser.add_argument("--setting", default="both", choices=("tiny", "paper", "both", "none"),
                        help="none: only the --large rows")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=sorted(LABELS),
                        help="DeepLab-v2 is always measured: the baseline (pdn_2m: PDNs-24NB-2M)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compiled rows next to the eager ones (default: yes, except --quick); "
                             "--no-compile: eager only")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode: default, reduce-overhead, max-autotune, ...")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--max-seconds", type=float, default=float("inf"),
                        help="stop adding rounds after this long (at least one)")
    parser.add_argument("--batch", type=int, default=0,
                        help="batch of both settings (default: tiny 16, paper 2)")
    parser.add_argument("--paper-size", type=int, default=PAPER_SIZE, help="paper input side")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--timeout", type=float, default=900.0, help="per memory case, seconds")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every network (e.g. task.channels_last=true)")
    parser.add_argument("--large", type=int, default=0, metavar="SIZE",
                        help="also DifNet-101 training steps at SIZE×SIZE (e.g. 1024)")
    parser.add_argument("--large-checkpointing", nargs="+", default=["off", "on"],
                        choices=("off", "on"), help="activation checkpointing of those rows")
    parser.add_argument("--budget-gb", type=float, default=8.0,
                        help="memory budget the large rows are checked against")
    parser.add_argument("--mem-limit-gb", type=float, default=0.0,
                        help="address-space cap (RLIMIT_DATA) of the large rows' processes: "
                             "an allocation past it fails as OOM instead of swapping or "
                             "waking the OOM killer (0: none)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny setting only, batch 4, 1 round, eager only: a smoke run")


def finish_arguments(args: argparse.Namespace) -> None:
    if args.quick:
        args.setting, args.rounds, args.batch = "tiny", 1, args.batch or 4
    if args.compile is None:
        args.compile = not args.quick
    args.modes = ["eager", "compiled"] if args.compile else ["eager"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_seg.bench train", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    finish_arguments(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # as trainer=gpu
    settings = {"both": ("tiny", "paper"), "none": ()}.get(args.setting, (args.setting,))
    for setting in settings:
        specs = setting_specs(args, setting)
        first = next(iter(specs.values()))
        what = ("test_resnet OS8 (experiment=pathfinder_<head>)" if setting == "tiny"
                else "ResNet-101 OS8 DeepLab dilation, random init")
        print(f"\n## Training step, {setting} setting: {what}, {first['size']}×{first['size']}, "
              f"batch {first['batch']}, {args.device} {args.dtype}; median of {args.rounds} "
              "interleaved rounds after a warm-up\n", flush=True)
        specs, results = collect(args, setting, specs)
        print(render(specs, results), flush=True)
    if args.large:
        print(f"\n## DifNet training step at {args.large}×{args.large}, batch 1, "
              f"{args.device} {args.dtype}: one step in a fresh process\n", flush=True)
        large_rows(args)
