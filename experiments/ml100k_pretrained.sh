#!/usr/bin/env bash
# ML-100k: NeuMF pre-trained from the best tuned GMF and an MLP, for each seed, as recorded in docs/history.md.
#
#   bash experiments/ml100k_pretrained.sh [DATA_DIR] [RUNS_DIR] [SEED ...]
#
# DATA_DIR: convert.py's ML-100k directory (default data/ml100k); RUNS_DIR default runs/ml100k-pretrained; seeds
# default 0 1 2, run one after another (each takes about 7 minutes on 2 CPU cores: GMF 1, MLP 5, the rest 1). For
# each seed: GMF, MLP, bench/alpha_sweep.py (NeuMF before fine-tuning, every alpha), then NeuMF fine-tuned from
# alpha 0.8, with branch losses (ncf.py's default --branch_loss 1). The last lines printed are each seed's best
# HR@10/NDCG@10 of the four steps. FLAGS, when set, is added to each of the three training commands, for example
# FLAGS="--recency 8" bash experiments/ml100k_pretrained.sh (each user's latest pairs weighted up in every step). Each
# finished training step appends its result, read from its own log by bench/record_run.py, to RESULTS (default
# RUNS_DIR/results.jsonl; for example RESULTS=experiments/results/ml100k-pretrained-cpu.jsonl). The best epochs are chosen
# on the test items (this split has no validation set). Run from the repository root.
set -euo pipefail
data=${1:-data/ml100k}
runs=${2:-runs/ml100k-pretrained}
shift $(( $# < 2 ? $# : 2 ))
seeds=${*:-0 1 2}
python=${PYTHON:-python3}
read -r -a extra <<< "${FLAGS:-}"
results=${RESULTS:-$runs/results.jsonl}

step() {  # seed, name, flags...: train one step into $out/<name> and record it
    local seed=$1 name=$2
    shift 2
    $python ncf.py --data "$data" "$@" -s "$seed" "${extra[@]}" --checkpoint_dir "$out/$name" > "$out/$name.txt" 2>&1
    local config="${*//$out\//} ${extra[*]}"
    $python -m bench.record_run "$out/$name/log.json" --config "${config% }" --seed "$seed" --output "$results" \
        > /dev/null
}

for seed in $seeds; do
    out=$runs/seed$seed
    mkdir -p "$out"
    step "$seed" gmf --model gmf -e 40 -b 1024 -l 0.0005 -n 16 --weight_decay 0.05 --lr_schedule cosine
    step "$seed" mlp --model mlp -e 30 -b 1024 -l 0.001 -n 8 --dropout 0.5 --layers 256 256 128 64 --lr_schedule constant
    $python -m bench.alpha_sweep --data "$data" --pretrain_gmf "$out/gmf/best.pt" --pretrain_mlp "$out/mlp/best.pt" \
        > "$out/alpha.txt" 2>&1
    step "$seed" neumf --model neumf -e 5 -b 1024 -l 0.00002 -n 8 --dropout 0.5 --alpha 0.8 --layers 256 256 128 64 \
        --lr_schedule constant --pretrain_gmf "$out/gmf/best.pt" --pretrain_mlp "$out/mlp/best.pt"
done
for seed in $seeds; do
    out=$runs/seed$seed
    for step in gmf mlp neumf; do
        echo "seed $seed $step: $(tail -n 1 "$out/$step.txt")"
    done
    echo "seed $seed alpha sweep: $(tail -n 1 "$out/alpha.txt")"
done
