#!/usr/bin/env bash
# The far pixels alone: every far run (dataset.max_distance=8) of a builtin_heads_difficulty
# sweep (default: the latest) re-evaluated on its test split with the path pixels nearer than
# 4 cells to their cue ignored (+dataset.ignore_near=4), into <job>/eval_far/, then the report
# of those evaluations in experiments/reports/builtin_heads_difficulty_far_pixels/.
#   bash experiments/builtin_far_pixels.sh [<sweep dir>]
set -euo pipefail
cd "$(dirname "$0")/.."
sweep=${1:-$(ls -d "${DIFFUSION_SEG_LOGS:-logs}"/studies/builtin_heads_difficulty/*/ | sort | tail -n 1)}
for job in "$sweep"/*/; do
  # The job's own records (job.yaml, config.yaml); .hydra/ only for job dirs from before them.
  overrides="$job/job.yaml" config="$job/config.yaml"
  [ -f "$overrides" ] || overrides="$job/.hydra/overrides.yaml"
  [ -f "$config" ] || config="$job/.hydra/config.yaml"
  grep -qx -- "- dataset.max_distance=8" "$overrides" || continue
  [ -f "$job/finished.yaml" ] && [ ! -f "$job/eval_far/metrics.yaml" ] || continue
  ckpt=$(.venv/bin/python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['best_checkpoint'])" "$job/finished.yaml")
  # eval's inference options are its own: the run's CRF setting (the DeepLab-v2 + CRF row) is passed on.
  crf=$(.venv/bin/python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['task']['inference']['crf'])" "$config")
  .venv/bin/python -m diffusion_seg.eval ckpt_path="$ckpt" split=test +dataset.ignore_near=4 \
    task.inference.crf="${crf,,}" hydra.run.dir="$job/eval_far"
done
.venv/bin/python -m diffusion_seg.report "$sweep" --eval eval_far --out experiments/reports/builtin_heads_difficulty_far_pixels
