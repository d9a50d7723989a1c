#!/usr/bin/env bash
# ML-100k evaluated honestly: the best epoch chosen on a validation set, test figures reported at that epoch, beside
# popularity and EASE, under sampled and full ranking; and the NGCF-style 80/20 ratio split with full ranking.
#
#   bash experiments/ml100k_validation.sh [U_DATA] [WORK_DIR] [SEED ...]
#
# U_DATA is MovieLens 100K's u.data (default ml-100k/u.data); WORK_DIR (default runs/ml100k-validation) receives
# the two dataset directories and every run; seeds default 0 1 2. Two runs go side by side, each on one thread
# (OMP_NUM_THREADS=1), so on 2 CPU cores expect about 40 minutes. Each finished run appends its result, read from its
# own log, to RESULTS (default WORK_DIR/results.jsonl); the baselines, and the seed-0 checkpoints under both
# protocols, go to WORK_DIR/baselines.jsonl and are printed at the end. Run from the repository root.
set -euo pipefail
source_file=${1:-ml-100k/u.data}
work=${2:-runs/ml100k-validation}
shift $(( $# < 2 ? $# : 2 ))
seeds=${*:-0 1 2}
python=${PYTHON:-python3}
results=${RESULTS:-$work/results.jsonl}
mkdir -p "$work"
loo=$work/ml100k-val
ratio=$work/ml100k-ratio
$python convert.py --path "$source_file" --output "$loo" --validation --force --quiet > /dev/null
$python convert.py --path "$source_file" --output "$ratio" --split ratio --validation --force --quiet > /dev/null

run() {  # data, name, seed, flags...: one ncf.py run into $work/<name>-s<seed>, recorded
    local data=$1 name=$2 seed=$3
    shift 3
    OMP_NUM_THREADS=1 $python ncf.py --data "$data" "$@" -s "$seed" --checkpoint_dir "$work/$name-s$seed" \
        > "$work/$name-s$seed.txt" 2>&1
    $python -m bench.record_run "$work/$name-s$seed/log.json" --config "$name: $*" --seed "$seed" \
        --output "$results" > /dev/null
}

gmf="--model gmf -e 40 -b 1024 -l 0.0005 -n 16 --weight_decay 0.05 --lr_schedule cosine"
for seed in $seeds; do
    run "$loo" loo-neumf-defaults "$seed" &
    # shellcheck disable=SC2086
    { run "$loo" loo-gmf-recency "$seed" $gmf --recency 8
      run "$ratio" ratio-gmf "$seed" $gmf --eval_protocol full -k 20; } &
    wait
    run "$ratio" ratio-neumf-defaults "$seed" --eval_protocol full -k 20
done
first=${seeds%% *}
$python -m bench.baselines --data "$loo" --protocols sampled full -k 10 --output "$work/baselines.jsonl" \
    --checkpoints "$work/loo-neumf-defaults-s$first/best.pt" "$work/loo-gmf-recency-s$first/best.pt"
$python -m bench.baselines --data "$ratio" --protocols full -k 20 --output "$work/baselines.jsonl" \
    --checkpoints "$work/ratio-neumf-defaults-s$first/best.pt" "$work/ratio-gmf-s$first/best.pt"
$python -m bench.sweep --output "$results"
