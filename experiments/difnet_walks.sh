#!/usr/bin/env bash
# DifNet Sec. 5.3, number of random walks: conf/study/difnet_walks.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m diffusion_seg.train -m study=difnet_walks "$@"
