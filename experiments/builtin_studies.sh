#!/usr/bin/env bash
# The CPU miniatures of the built-in studies, 3 seeds each, two jobs at a time (2 h 10 min
# on 2 cores with the earlier pathfinder geometry): every head × the pathfinder knob (then its far runs re-evaluated on the far
# pixels alone), PDN layers × neighbours, DifNet walks. Each study's report (report.md, plot,
# runs.csv) is written to experiments/reports/<study>/.
# Extra arguments go to every sweep, e.g. logger=wandb or hydra.launcher.n_jobs=4.
set -euo pipefail
cd "$(dirname "$0")/.."
for study in builtin_heads_difficulty builtin_pdn_layers_neighbors builtin_difnet_walks; do
  .venv/bin/python -m diffusion_seg.train -m study=$study hydra/launcher=joblib hydra.launcher.n_jobs=2 "$@"
  sweep=$(ls -d "${DIFFUSION_SEG_LOGS:-logs}"/studies/$study/*/ | sort | tail -n 1)
  .venv/bin/python -m diffusion_seg.report "$sweep" --out experiments/reports/$study
  if [ $study = builtin_heads_difficulty ]; then
    bash experiments/builtin_far_pixels.sh "$sweep"
  fi
done
