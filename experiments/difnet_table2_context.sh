#!/usr/bin/env bash
# DifNet Table 2: Pascal Context (59 classes + background).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m diffusion_seg.train -m \
  experiment=difnet50_context,difnet50_noaspp_context,difnet101_context,simdeeplab101_context "$@"
