#!/usr/bin/env bash
# Full ranking with --refit: each model's epoch or setting chosen on the validation set, refit on the training and
# validation pairs, the test set evaluated once; fit time and peak memory recorded beside the figures.
#
#   bash experiments/refit_full_ranking.sh DATA_DIR RESULTS WORK_DIR [MODEL ...]
#
# DATA_DIR is a convert.py dataset with a validation split (e.g. a ratio split made with --validation --seed 0);
# MODELS default to "defaults ease rp3beta gfcf" ("defaults": no --model, the full-ranking default). Runs go one at
# a time, on every core (measure alone); each writes WORK_DIR/<model>/ and WORK_DIR/<model>.txt and appends its
# result, read from its own log, with the peak resident memory measured by /usr/bin/time, to RESULTS. Run from the
# repository root.
set -euo pipefail
data=$1
results=$2
work=$3
shift 3
models=${*:-defaults ease rp3beta gfcf}
python=${PYTHON:-python3}
mkdir -p "$work"
for model in $models; do
    flags=(--eval_protocol full -k 20 --refit)
    [ "$model" = defaults ] || flags+=(--model "$model")
    /usr/bin/time -f %M -o "$work/$model.peak" $python ncf.py --data "$data" "${flags[@]}" \
        --checkpoint_dir "$work/$model" > "$work/$model.txt" 2>&1
    $python -m bench.record_run "$work/$model/log.json" --config "${flags[*]}" --seed 0 --output "$results" \
        --peak_memory "$(( $(tail -1 "$work/$model.peak") / 1024 ))"
done
