#!/usr/bin/env bash
# The built-in studies on CPU (several hours on 2 cores): every head on the synthetic dataset and
# on the pathfinder benchmark (near/far), PDN layers x neighbours, DifNet walks; 3 seeds each.
# Add hydra/launcher=joblib hydra.launcher.n_jobs=2 to run two jobs at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
for study in builtin_synthetic_heads builtin_heads_difficulty builtin_pdn_layers_neighbors builtin_difnet_walks; do
  .venv/bin/python -m diffusion_seg.train -m study=$study "$@"
done
