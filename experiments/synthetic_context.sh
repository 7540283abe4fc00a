#!/usr/bin/env bash
# Context heads vs baselines on the built-in dataset (CPU, tiny backbone, a few minutes a job).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m diffusion_seg.train -m \
  model=fcn,deeplabv2,pdn,difnet backbone=tiny dataset=synthetic trainer=cpu "$@"
