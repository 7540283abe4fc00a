#!/usr/bin/env bash
# DifNet Sec. 5.3: number of random walks (levels chosen by diffusion_seg.models.difnet.walk_levels).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m diffusion_seg.train -m experiment=difnet50_voc model.walks=1,2,3,4,5 "$@"
