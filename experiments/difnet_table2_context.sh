#!/usr/bin/env bash
# DifNet Table 2 (Pascal Context val): conf/study/difnet_table2.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m diffusion_seg.train -m study=difnet_table2 "$@"
