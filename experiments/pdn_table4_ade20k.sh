#!/usr/bin/env bash
# PDN Table 4 (ADE20K val): single-GPU rows, then the SyncBN rows (ddp_spawn inside a multirun).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m diffusion_seg.train -m study=pdn_table4 "$@"
.venv/bin/python -m diffusion_seg.train -m study=pdn_table4_syncbn trainer=ddp_spawn "$@"
