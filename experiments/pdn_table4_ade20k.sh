#!/usr/bin/env bash
# PDN Table 4: ADE20K val, single GPU (frozen BN, batch 1) and 8-GPU SyncBN rows.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m diffusion_seg.train -m \
  experiment=pdn_8nb_1m_ade20k,pdn_24nb_1m_ade20k,pdn_24nb_2m_ade20k "$@"
# Multi-GPU jobs inside a multirun need ddp_spawn (see the README's Sweeps section).
.venv/bin/python -m diffusion_seg.train -m \
  experiment=pdn_8nb_1m_ade20k_syncbn,pdn_24nb_1m_ade20k_syncbn,pdn_24nb_2m_ade20k_syncbn \
  trainer=ddp_spawn "$@"
