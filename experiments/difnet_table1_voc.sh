#!/usr/bin/env bash
# DifNet Table 1: VOC 2012 val, trained on trainaug.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m diffusion_seg.train -m \
  experiment=difnet18_voc,difnet34_voc,difnet50_voc,difnet101_voc,simdeeplab18_voc,simdeeplab34_voc,simdeeplab50_voc,simdeeplab101_voc,difnet50_noaspp_voc "$@"
