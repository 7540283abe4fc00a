#!/usr/bin/env bash
# PDN Table 2: number of diffusion layers (module output, 24NB, Person-Part, SyncBN rows).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m diffusion_seg.train -m \
  experiment=pdn_24nb_1m_person_part_syncbn trainer=ddp_spawn model.layers=1,2,3,4 "$@"
