"""Pretrain a backbone on procedural textures: ``python -m diffusion_seg.pretrain``.

Both papers fine-tune from an ImageNet-pretrained ResNet; offline, no such weights exist for
the tiny backbone of the built-in benchmarks, and some heads train badly from scratch
(DifNet's importance map collapses: README, "DifNet from scratch"). This command gives the
backbone a pretrained start from a pretext task that leaks no benchmark's labels: dense
*texture orientation*. Each image is a Voronoi mosaic of regions, each filled with a
sinusoidal grating (random frequency, phase and colour pair) or a flat colour, plus pixel
noise; every pixel's label is its region's grating orientation in :data:`ORIENTATIONS` bins
of 180°, or "flat". Learning it needs oriented-edge filters and region context, nothing of
the benchmarks: no paths, no cues, no class colours (colours are random and carry no label).

The network is the backbone (output stride 8) with a 1×1 classifier on its last stage,
trained like a segmentation head (bilinear-upsampled logits, cross-entropy): SGD with
momentum, poly decay. The backbone's weights (the plain timm model's state dict, classifier
dropped) go to a ``.safetensors`` file that ``backbone.weights=<file>`` loads; the command
prints the file's sha256 and the pretext pixel accuracy on a fixed held-out set.

Reproducibility: the images come from one seeded numpy stream, the network from
``torch.manual_seed``, and training runs on one CPU thread with deterministic algorithms,
so rerunning the same command with the same torch build on a CPU with the same vector
instruction set (``torch.backends.cpu.get_cpu_capability()``) writes the same bytes. Other
builds or instruction sets round differently (the kernels sum in another order), so the
file differs bitwise there; the pretext accuracy stays within a point
(``tests/test_pretrain.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.inference import resize_logits

ORIENTATIONS = 8  # classes 0..7: grating orientation in 22.5° bins; class 8: flat region
NUM_CLASSES = ORIENTATIONS + 1
EVAL_IMAGES = 128
METADATA_KEY = "diffusion_seg.pretrain"
WEIGHTS = Path("weights/test_resnet_textures.safetensors")
DEFAULTS = {"backbone": "test_resnet", "steps": 2000, "batch_size": 16, "size": 64, "lr": 0.02,
            "seed": 0}


def pretext_batch(rng: np.random.Generator, batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` mosaics: images ``B×H×W×3`` float32 in 0..1 and labels ``B×H×W`` int64."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((batch, size, size, 3), dtype=np.float32)
    labels = np.empty((batch, size, size), dtype=np.int64)
    for b in range(batch):
        regions = int(rng.integers(3, 8))
        seeds = rng.uniform(0, size, size=(regions, 2)).astype(np.float32)
        owner = ((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2).argmin(-1)
        # Orientation bin k covers [k, k+1)·180°/ORIENTATIONS; the bin's centre ± a third.
        cls = rng.integers(0, NUM_CLASSES, size=regions)
        theta = (cls + 0.5 + rng.uniform(-1 / 3, 1 / 3, size=regions)) * np.pi / ORIENTATIONS
        freq = rng.uniform(1 / 10, 1 / 3, size=regions) * 2 * np.pi  # radians per px
        phase = rng.uniform(0, 2 * np.pi, size=regions)
        low, high = rng.uniform(0, 1, size=(2, regions, 3)).astype(np.float32)
        wave = np.sin(freq[owner] * (xx * np.cos(theta[owner]) + yy * np.sin(theta[owner]))
                      + phase[owner]).astype(np.float32)
        flat = cls[owner] == ORIENTATIONS
        mix = np.where(flat, 0.5, 0.5 + 0.5 * wave)[..., None]
        images[b] = low[owner] + (high[owner] - low[owner]) * mix
        labels[b] = cls[owner]
    images += rng.normal(0, 0.05, size=images.shape).astype(np.float32)
    return np.clip(images, 0, 1), labels


class PretextNet(nn.Module):
    """The backbone and a 1×1 classifier on its last stage."""

    def __init__(self, backbone: TimmBackbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv2d(backbone.channels[-1], NUM_CLASSES, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return resize_logits(self.classifier(self.backbone(image)[-1]), image.shape[-2:])


def _tensors(
    backbone: TimmBackbone, images: np.ndarray, labels: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    image = (torch.from_numpy(images).permute(0, 3, 1, 2) - mean) / std
    return image.contiguous(), torch.from_numpy(labels)


@torch.no_grad()
def pretext_accuracy(net: PretextNet, size: int, seed: int) -> float:
    """Pixel accuracy on :data:`EVAL_IMAGES` held-out mosaics (their own seeded stream)."""
    net.eval()
    images, labels = pretext_batch(np.random.default_rng([seed, 1]), EVAL_IMAGES, size)
    image, label = _tensors(net.backbone, images, labels)
    correct = sum(int((net(image[i:i + 32]).argmax(1) == label[i:i + 32]).sum())
                  for i in range(0, EVAL_IMAGES, 32))
    net.train()
    return correct / label.numel()


def pretrain(backbone: str, steps: int, batch_size: int, size: int, lr: float, seed: int,
             log_every: int = 250) -> tuple[dict[str, torch.Tensor], float]:
    """Train on the pretext task; returns the backbone's state dict (the plain timm model's
    keys) and the held-out pretext accuracy."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # one summation order: the same bytes on every rerun
    torch.use_deterministic_algorithms(True)
    try:
        return _train(backbone, steps, batch_size, size, lr, seed, log_every)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(backbone: str, steps: int, batch_size: int, size: int, lr: float, seed: int,
           log_every: int) -> tuple[dict[str, torch.Tensor], float]:
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 0])
    net = PretextNet(TimmBackbone(backbone, output_stride=8))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=steps, power=0.9)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        image, label = _tensors(net.backbone, *pretext_batch(rng, batch_size, size))
        loss = F.cross_entropy(net(image), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps}  loss {loss.item():.4f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    accuracy = pretext_accuracy(net, size, seed)
    state = {k: v.detach().clone().contiguous() for k, v in net.backbone.model.state_dict().items()}
    return state, accuracy


def save(
    path: Path, state: dict[str, torch.Tensor], accuracy: float, settings: dict[str, object]
) -> str:
    """Write the weights with their settings and pretext accuracy in the file's metadata;
    returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The build and instruction set decide the bytes (module docstring): recorded with them.
    record = {"pretext": "texture orientation (diffusion_seg.pretrain)", "settings": settings,
              "pretext_accuracy": round(accuracy, 4), "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    # One metadata entry: safetensors writes several in a random (hash map) order.
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(record, sort_keys=True)})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify(path: Path) -> int:
    """Rerun the settings recorded in ``path``: the same bytes on the build and instruction
    set that wrote it, the same pretext accuracy within a point elsewhere (module docstring).
    Prints the verdict; returns the exit status (0 reproduced, 1 not)."""
    if not path.is_file():
        print(f"error: {path} does not exist; write it with python -m diffusion_seg.pretrain --out {path}")
        return 1
    with safe_open(str(path), "pt") as f:
        recorded = json.loads(f.metadata()[METADATA_KEY])
    start = time.perf_counter()
    state, accuracy = pretrain(**recorded["settings"])
    with tempfile.TemporaryDirectory() as tmp:
        digest = save(Path(tmp) / path.name, state, accuracy, recorded["settings"])
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    same_build = (recorded["torch"] == torch.__version__
                  and recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability())
    print(f"reran {recorded['settings']} in {time.perf_counter() - start:.0f} s: pretext accuracy "
          f"{100 * accuracy:.2f} % (recorded {100 * float(recorded['pretext_accuracy']):.2f} %)")
    if same_build:
        ok = digest == expected
        print(f"same torch build and CPU capability: sha256 {digest} "
              f"{'equals' if ok else 'DIFFERS from'} {path}'s {expected}")
    else:
        ok = abs(accuracy - float(recorded["pretext_accuracy"])) < 0.01
        print(f"written by torch {recorded['torch']} ({recorded['cpu_capability']}), rerun by torch "
              f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()}): bytes may differ; "
              f"accuracy {'within' if ok else 'NOT within'} a point")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion_seg.pretrain",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--backbone", default=DEFAULTS["backbone"], help="timm model name")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--size", type=int, default=DEFAULTS["size"], help="image side, px")
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--verify", action="store_true",
                        help="rerun the settings recorded in --out and compare (writes nothing; "
                             "exit 1 on a mismatch)")
    args = parser.parse_args(argv)
    if args.verify:
        raise SystemExit(verify(args.out))
    settings = {"backbone": args.backbone, "steps": args.steps, "batch_size": args.batch_size,
                "size": args.size, "lr": args.lr, "seed": args.seed}
    state, accuracy = pretrain(**settings)
    digest = save(args.out, state, accuracy, settings)
    print(f"pretext pixel accuracy {100 * accuracy:.2f} % (chance {100 / NUM_CLASSES:.1f} %)")
    print(f"wrote {args.out}  sha256 {digest}")
    print(f"use it with: backbone.weights={args.out}")


if __name__ == "__main__":
    main()
