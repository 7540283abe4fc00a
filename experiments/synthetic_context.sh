#!/usr/bin/env bash
# The README's "Which head on the built-in dataset" table: every head on the synthetic dataset,
# tiny backbone from scratch, 20 epochs, CPU (about 30 min on 2 cores in all).
set -euo pipefail
cd "$(dirname "$0")/.."
train() { .venv/bin/python -m diffusion_seg.train "$@"; }
train -m model=fcn,deeplabv2,difnet trainer.max_epochs=20 "$@"
train -m model=difnet model.importance=false trainer.max_epochs=20 "$@"
train -m model=difnet model.seed_loss=true trainer.max_epochs=20 "$@"
train experiment=quickstart "$@"
