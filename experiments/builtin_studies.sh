#!/usr/bin/env bash
# The built-in studies on CPU, 3 seeds each, two jobs at a time; each study's report
# (report.md, report.png, curves.png, runs.csv) is written to experiments/reports/<study>/.
#   bash experiments/builtin_studies.sh [overrides...]            # the converged study (below)
#   STUDIES="builtin_difnet_start builtin_pdn_layers_neighbors" bash experiments/builtin_studies.sh
# Default: builtin_heads_far (five heads far from the cue, 60 epochs, with the oracle rows and
# intervals against DeepLab-v2). builtin_difnet_start: DifNet from the pretrained start, 60
# epochs (24 min on 2 cores). The three earlier studies (builtin_heads_difficulty,
# builtin_pdn_layers_neighbors, builtin_difnet_walks) run at 20 epochs, which does not
# converge far from the cue. Name any of them in STUDIES. Times: docs/studies.md.
# Extra arguments go to every sweep, e.g. logger=wandb or hydra.launcher.n_jobs=4.
set -euo pipefail
cd "$(dirname "$0")/.."
for study in ${STUDIES:-builtin_heads_far}; do
  .venv/bin/python -m diffusion_seg.train -m study=$study hydra/launcher=joblib hydra.launcher.n_jobs=2 "$@"
  sweep=$(ls -d "${DIFFUSION_SEG_LOGS:-logs}"/studies/$study/*/ | sort | tail -n 1)
  report_args=()
  if [ $study = builtin_difnet_start ]; then
    report_args=(--baseline seed_loss=True --paired)
  fi
  if [ $study = builtin_heads_far ]; then
    .venv/bin/python -m diffusion_seg.bench oracle --sweep "$sweep"   # the non-learned ceiling
    report_args=(--baseline pathfinder_deeplabv2 --paired)
  fi
  .venv/bin/python -m diffusion_seg.report "$sweep" --out experiments/reports/$study "${report_args[@]}"
  if [ $study = builtin_heads_difficulty ]; then
    bash experiments/builtin_far_pixels.sh "$sweep"
  fi
done
