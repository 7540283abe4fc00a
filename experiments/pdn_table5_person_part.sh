#!/usr/bin/env bash
# PDN Table 5: PASCAL-Person-Part test, single GPU (frozen BN, batch 1) and 8-GPU SyncBN rows.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m diffusion_seg.train -m \
  experiment=pdn_8nb_1m_person_part,pdn_24nb_1m_person_part,pdn_24nb_2m_person_part "$@"
# Multi-GPU jobs inside a multirun need ddp_spawn (see the README's Sweeps section).
.venv/bin/python -m diffusion_seg.train -m \
  experiment=pdn_8nb_1m_person_part_syncbn,pdn_24nb_1m_person_part_syncbn,pdn_24nb_2m_person_part_syncbn \
  trainer=ddp_spawn "$@"
