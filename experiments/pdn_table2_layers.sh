#!/usr/bin/env bash
# PDN Table 2, diffusion layers with every layer's classifier evaluated: conf/study/pdn_table2.yaml (SyncBN rows: DDP inside a multirun needs ddp_spawn on one machine).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m diffusion_seg.train -m study=pdn_table2 trainer=ddp_spawn "$@"
