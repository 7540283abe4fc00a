#!/usr/bin/env bash
# The built-in studies on CPU, 3 seeds each, two jobs at a time; each study's report
# (report.md, report.png, curves.png, runs.csv) is written to experiments/reports/<study>/.
#   bash experiments/builtin_studies.sh [overrides...]                     # make study (below)
#   STUDIES="builtin_difnet_walks builtin_long_paths" bash experiments/builtin_studies.sh
# make study: the three studies under the from-scratch recipe (SGD 0.1 for every layer), far
# from the cue (max_distance 8), 60 epochs: builtin_scratch_recipe (seven heads, intervals
# against DeepLab-v2), builtin_pdn_layers_neighbors (1 vs 4 layers x 8 vs 24 neighbours) and
# builtin_difnet_walks (1 vs 5 walks); the last two reuse the first one's PDN and DifNet runs.
# When named (the record of how the benchmark got here; docs/studies.md):
# under the papers' fine-tuning recipe (SGD 0.01, new layers x10), which starves a
# from-scratch backbone: builtin_heads_far (seven heads, with the oracle rows),
# builtin_difnet_start (DifNet from the pretrained start, published head vs seed
# supervision), builtin_pretrained_start (PDN and LG-LSTM from the pretrained start and from
# scratch), builtin_budget (the seven heads at 120 epochs, and DifNet with 1 walk and PDN with
# 8 neighbours; reported against builtin_heads_far's latest sweep) and the earlier
# builtin_heads_difficulty (eight heads x near/far, 20 epochs; its far runs also on their far
# pixels alone); under the from-scratch recipe: builtin_scratch_near (builtin_scratch_recipe
# near the cue, max_distance 2, with the oracle rows), builtin_scratch_difnet_start (DifNet's
# published head and seed supervision, from scratch and from the pretrained start),
# builtin_long_paths (five heads on 128² images with paths of 24 cells; each run also
# evaluated on its own training images) and builtin_fresh_samples (the same on new training
# images every epoch, reported against builtin_long_paths).
# SHORTER_CHECKS=1 also trains the shorter-schedule check of the studies that have one
# (builtin_scratch_recipe at 30 epochs, builtin_long_paths at 40) and reports each row against
# its shorter self; make study leaves it out (17.3 min more on 2 cores, measured 2026-12-05).
# A job another study ran with the same config and code is reused, not trained again
# (reuse_from in conf/study/builtin_*.yaml; reuse_from=null trains every job).
# Wall times: docs/studies.md. Extra arguments go to every sweep, e.g. logger=wandb or
# hydra.launcher.n_jobs=4.
set -euo pipefail
cd "$(dirname "$0")/.."
# The sweeps of study $1 / its newest, or nothing (not an error: set -e would stop the script).
sweeps_of() { ls -d "${DIFFUSION_SEG_LOGS:-logs}"/studies/$1/*/ 2>/dev/null || true; }
latest() { sweeps_of $1 | sort | tail -n 1; }
overrides=("$@")
# One sweep of $study, two jobs at a time: its arguments, then the extra ones of this script.
train() { .venv/bin/python -m diffusion_seg.train -m study=$study "$@" hydra/launcher=joblib hydra.launcher.n_jobs=2 ${overrides[@]+"${overrides[@]}"}; }
# More sweeps of $study, one per argument (its rows), reported with its first sweep.
more_rows() { local rows; for rows in "$@"; do train $rows; sweeps+=("$(latest $study)"); done; }
# The non-learned ceiling as rows of $study's sweep (python -m diffusion_seg.bench oracle).
oracle() { .venv/bin/python -m diffusion_seg.bench oracle --sweep "$sweep"; }
# With SHORTER_CHECKS=1: the same runs at $1 epochs, each row reported against its shorter self.
shorter_check() {
  if [ "${SHORTER_CHECKS:-0}" = 1 ]; then
    train trainer.max_epochs=$1
    shorter=$(latest $study)
    report_args+=(--against "$shorter")
  fi
}
for study in ${STUDIES:-builtin_scratch_recipe builtin_pdn_layers_neighbors builtin_difnet_walks}; do
  train
  sweep=$(latest $study)
  sweeps=("$sweep")
  report_args=()
  shorter=""  # the shorter-schedule check's sweep, where a study has one
  case $study in
    builtin_heads_far | builtin_scratch_near)
      oracle
      report_args=(--baseline pathfinder_deeplabv2 --paired) ;;
    builtin_budget)
      # The two trends 60 epochs left unresolved (1 vs 5 walks, 8 vs 24 neighbours), as rows
      # of this study: one sweep each, one report.
      more_rows "experiment=pathfinder_difnet model.walks=1" "experiment=pathfinder_pdn model.neighbors=8"
      report_args=(--baseline pathfinder_deeplabv2 --paired)
      shorter=$(latest builtin_heads_far)
      if [ -n "$shorter" ]; then report_args+=(--against "$shorter"); fi ;;  # 120 vs 60 epochs
    builtin_scratch_recipe)
      oracle
      report_args=(--baseline pathfinder_deeplabv2 --paired)
      shorter_check 30
      papers=$(sweeps_of builtin_budget)  # the papers' recipe (SGD 0.01, new layers x10), 120 epochs
      if [ -n "$papers" ]; then report_args+=(--against $papers); fi ;;
    builtin_long_paths)
      oracle  # solvable at 128² too
      report_args=(--baseline pathfinder_deeplabv2 --paired)
      shorter_check 40
      # Does PDN's reach grow with its depth? 8 layers of 24NB span 16 cells, 4 span 8.
      more_rows "experiment=pathfinder_pdn model.layers=8" ;;
    builtin_fresh_samples)
      # Each row against its builtin_long_paths self: the same runs on the same 256 images every epoch.
      report_args=(--baseline pathfinder_deeplabv2 --paired)
      repeated=$(sweeps_of builtin_long_paths)
      if [ -n "$repeated" ]; then report_args+=(--against $repeated); fi ;;
    builtin_difnet_start) report_args=(--baseline seed_loss=True --paired) ;;
    builtin_scratch_difnet_start) report_args=(--baseline model.seed_loss=True --paired) ;;  # per start
    builtin_pretrained_start) report_args=(--baseline backbone=tiny --paired) ;;  # per head
    builtin_difnet_walks) report_args=(--baseline model.walks=5 --paired) ;;
    builtin_pdn_layers_neighbors) report_args=(--baseline "model.layers=4 model.neighbors=24" --paired) ;;
  esac
  .venv/bin/python -m diffusion_seg.report "${sweeps[@]}" --out experiments/reports/$study "${report_args[@]}"
  case $study in
    builtin_heads_difficulty)  # the far runs on their far pixels alone
      ONLY=dataset.max_distance=8 bash experiments/reevaluate.sh eval_far \
        experiments/reports/builtin_heads_difficulty_far_pixels "$sweep" -- +dataset.ignore_near=4 ;;
    builtin_long_paths | builtin_fresh_samples)
      # Every run on its (first epoch's) training images: has it learnt them by heart?
      bash experiments/reevaluate.sh eval_train experiments/reports/${study}_train_images \
        "${sweeps[@]}" ${shorter:+"$shorter"} -- +dataset.test_split=train +dataset.reach_px=102
      # On 512 test images, with the path pixels whose cue lies beyond FCN's receptive field
      # (102 px) as a column of their own: there FCN cannot see the cue.
      bash experiments/reevaluate.sh eval_reach experiments/reports/${study}_beyond_reach \
        "${sweeps[@]}" -- +dataset.eval_length=512 +dataset.reach_px=102 ;;
  esac
done
