#!/usr/bin/env bash
# DifNet Table 1 (VOC 2012 val): conf/study/difnet_table1.yaml. Then: python -m diffusion_seg.report <sweep dir>
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m diffusion_seg.train -m study=difnet_table1 "$@"
