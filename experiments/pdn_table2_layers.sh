#!/usr/bin/env bash
# PDN Table 2: number of diffusion layers (24NB, Person-Part, SyncBN rows). The table reports
# the module output: task.eval_aux=true evaluates every layer's classifier as well
# (val/aux/pdn1_layer<t>/mIoU next to the network's val/mIoU).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m diffusion_seg.train -m \
  experiment=pdn_24nb_1m_person_part_syncbn trainer=ddp_spawn model.layers=1,2,3,4 task.eval_aux=true "$@"
