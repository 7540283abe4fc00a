#!/usr/bin/env bash
# Every finished job of some sweeps re-evaluated from its best checkpoint with other eval
# options, into <job>/<name>/, then the report of those evaluations (report --eval <name>):
#   bash experiments/reevaluate.sh <name> <report dir> <sweep dir>... -- [eval overrides...]
# e.g. the far pixels alone (path pixels nearer than 4 cells to their cue ignored):
#   ONLY=dataset.max_distance=8 bash experiments/reevaluate.sh eval_far experiments/reports/builtin_heads_difficulty_far_pixels <sweep> -- +dataset.ignore_near=4
# or a pathfinder run's own training images: ... eval_train <report dir> <sweep> -- +dataset.test_split=train
# ONLY=<override>: only the jobs launched with it. A job evaluated before is not evaluated
# again; jobs without a checkpoint (oracle rows) are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 out=$2
shift 2
sweeps=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do sweeps+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the --
for sweep in "${sweeps[@]}"; do
  for job in "$sweep"/*/; do
    # The job's own records (job.yaml, config.yaml); .hydra/ only for job dirs from before them.
    overrides="$job/job.yaml" config="$job/config.yaml"
    [ -f "$overrides" ] || overrides="$job/.hydra/overrides.yaml"
    [ -f "$config" ] || config="$job/.hydra/config.yaml"
    [ -z "${ONLY:-}" ] || grep -qx -- "- $ONLY" "$overrides" || continue
    [ -f "$job/finished.yaml" ] && [ ! -f "$job/$name/metrics.yaml" ] || continue
    # The best checkpoint by name, in this job dir (the sweep may have been moved since).
    best=$(.venv/bin/python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1])).get('best_checkpoint') or '')" "$job/finished.yaml")
    ckpt="$job/checkpoints/$(basename "$best")"
    [ -n "$best" ] && [ -f "$ckpt" ] || continue
    # eval's inference options are its own: the run's CRF setting (a DeepLab-v2 + CRF row) is passed on.
    crf=$(.venv/bin/python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['task']['inference']['crf'])" "$config")
    .venv/bin/python -m diffusion_seg.eval ckpt_path="$ckpt" split=test \
      task.inference.crf="${crf,,}" hydra.run.dir="$job/$name" "$@"
  done
done
.venv/bin/python -m diffusion_seg.report "${sweeps[@]}" --eval "$name" --out "$out"
