#!/usr/bin/env bash
# The side-by-side comparison of docs/baselines.md, as one command:
#
#   bash docs/baselines/side_by_side.sh JOB OUT [KEY=VALUE ...]
#
# JOB: a shipped job on its demo data (chest_ct_lora, ixi_lora) or a job folder; OUT: a new folder;
# KEY=VALUE: settings for every run (as `flap-sam job --set`). On SITES (default 3) sites, at one
# budget, it runs in FLARE's simulator LiteMedSAM `flap` and `fft` (SAM_PRESETS) and the MONAI U-Net (FedAvg of the
# whole model) with every labelled volume per site, then `flap` and the U-Net with VOLUMES (default
# "1 2") labelled volumes per site; then, without FLARE, each site alone (local baseline) and all sites' data pooled
# (pooled baseline, at the federation's total steps) for `flap` and the U-Net. Every final model is
# scored on the held-out site (the demo's `heldout`, or HELD_OUT=<datalist>); OUT/report/report.md.
# LOCAL_POOLED=0 leaves out the local and pooled baselines.
set -euo pipefail
job=${1:?usage: side_by_side.sh JOB OUT [KEY=VALUE ...]}
out=${2:?usage: side_by_side.sh JOB OUT [KEY=VALUE ...]}
shift 2
sites=${SITES:-3}
names=$(seq -f "site-%g" 1 "$sites" | tr '\n' ' ')
source_job="$out/jobs/source"
[ -d "$source_job" ] || flap-sam job "$job" --out "$source_job" ${1:+--set "$@"}
if [ -z "${HELD_OUT:-}" ]; then
  held_out_dir=$(flap-sam demo-data --job "$source_job" --site-names heldout | sed -n 's/^heldout: \([^ ]*\).*/\1/p')
  HELD_OUT="$held_out_dir/datalist.json"
fi
sweep=(flap-sam sweep "$source_job" --sites "$sites" --held-out "$HELD_OUT" --out "$out")
"${sweep[@]}" --models unet --presets fft
# shellcheck disable=SC2086
"${sweep[@]}" --models lite_medsam --presets ${SAM_PRESETS:-flap fft}
# shellcheck disable=SC2086
"${sweep[@]}" --models unet --presets fft --train-volumes ${VOLUMES:-1 2}
# shellcheck disable=SC2086
"${sweep[@]}" --models lite_medsam --presets flap --train-volumes ${VOLUMES:-1 2}
steps=$(python -c "import sys; from flap_sam.jobs.writer import job_settings; print(job_settings(sys.argv[1])['max_steps_per_round'])" "$source_job")
# The U-Net again, given the CPU time LiteMedSAM `flap` took: its local epochs and steps per round times the ratio of the two runs' CPU seconds.
factor=$(python -c "import json, sys; flap, unet = (json.load(open(f))['cpu_s'] for f in sys.argv[1:]); print(max(1, int(flap // unet)))" \
  "$out/runs/lite_medsam-flap-fp32/server/simulate_job/run_cost.json" "$out/runs/unet-fft-fp32/server/simulate_job/run_cost.json")
"${sweep[@]}" --models unet --presets fft --tag equal-cpu --set local_epochs="$factor" max_steps_per_round=$((steps * factor))
[ "${LOCAL_POOLED:-1}" = 0 ] && models=() || models=("lite_medsam flap" "unet fft")  # LOCAL_POOLED=0: no local or pooled baselines
for model in "${models[@]}"; do
  read -r model_type preset <<< "$model"
  local_job="$out/jobs/local-$model_type" pooled_job="$out/jobs/pooled-$model_type"
  [ -d "$local_job" ] || flap-sam job "$source_job" --out "$local_job" --set model_type=$model_type preset=$preset
  [ -d "$pooled_job" ] || flap-sam job "$source_job" --out "$pooled_job" \
    --set model_type=$model_type preset=$preset max_steps_per_round=$((steps * sites))
  for site in $names; do
    [ -f "$out/baselines/$model_type-local-$site/baseline.json" ] || \
      flap-sam train --job "$local_job" --sites "$site" --out "$out/baselines/$model_type-local-$site"
  done
  [ -f "$out/baselines/$model_type-pooled/baseline.json" ] || \
    flap-sam train --job "$pooled_job" --sites $names --out "$out/baselines/$model_type-pooled"
  for folder in "$out/baselines/$model_type"-*; do
    [ -f "$folder/held_out/dice.csv" ] || flap-sam evaluate --job "$local_job" --adapter "$folder/FL_global_model.pt" \
      --datalist "$HELD_OUT" --out "$folder/held_out" > /dev/null
  done
done
reported=("$out/runs")
[ -d "$out/baselines" ] && reported+=("$out/baselines")
flap-sam report "${reported[@]}" --out "$out/report"
