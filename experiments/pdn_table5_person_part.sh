#!/usr/bin/env bash
# PDN Table 5 (Person-Part test): single-GPU rows, then the SyncBN rows (ddp_spawn inside a multirun).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m diffusion_seg.train -m study=pdn_table5 "$@"
.venv/bin/python -m diffusion_seg.train -m study=pdn_table5_syncbn trainer=ddp_spawn "$@"
