#!/usr/bin/env bash
# ML-100k: NeuMF pre-trained from the best tuned GMF and an MLP, for each seed, as recorded in BENCHMARKS.md.
#
#   bash bench/ml100k_pretrained.sh [DATA_DIR] [RUNS_DIR] [SEED ...]
#
# DATA_DIR: convert.py's ML-100k directory (default data/ml100k); RUNS_DIR default runs/ml100k-pretrained; seeds
# default 0 1 2, run one after another (each takes about 7 minutes on 2 CPU cores: GMF 1, MLP 5, the rest 1). For
# each seed: GMF, MLP, bench/alpha_sweep.py (NeuMF before fine-tuning, every alpha), then NeuMF fine-tuned from
# alpha 0.8, with branch losses (ncf.py's default --branch_loss 1). The last lines printed are each seed's best
# HR@10/NDCG@10 of the four steps. FLAGS, when set, is added to each of the three training commands, for example
# FLAGS="--recency 8" bash bench/ml100k_pretrained.sh (each user's latest pairs weighted up in every step).
set -euo pipefail
data=${1:-data/ml100k}
runs=${2:-runs/ml100k-pretrained}
shift $(( $# < 2 ? $# : 2 ))
seeds=${*:-0 1 2}
python=${PYTHON:-python3}
read -r -a extra <<< "${FLAGS:-}"

for seed in $seeds; do
    out=$runs/seed$seed
    mkdir -p "$out"
    $python ncf.py --data "$data" --model gmf -e 40 -b 1024 -l 0.0005 -n 16 --weight_decay 0.05 \
        --lr_schedule cosine -s "$seed" "${extra[@]}" --checkpoint_dir "$out/gmf" > "$out/gmf.txt" 2>&1
    $python ncf.py --data "$data" --model mlp -e 30 -b 1024 -l 0.001 -n 8 --dropout 0.5 -s "$seed" "${extra[@]}" \
        --checkpoint_dir "$out/mlp" > "$out/mlp.txt" 2>&1
    $python bench/alpha_sweep.py --data "$data" --pretrain_gmf "$out/gmf/best.pt" --pretrain_mlp "$out/mlp/best.pt" \
        > "$out/alpha.txt" 2>&1
    $python ncf.py --data "$data" --model neumf -e 5 -b 1024 -l 0.00002 -n 8 --dropout 0.5 --alpha 0.8 -s "$seed" \
        "${extra[@]}" --pretrain_gmf "$out/gmf/best.pt" --pretrain_mlp "$out/mlp/best.pt" \
        --checkpoint_dir "$out/neumf" > "$out/neumf.txt" 2>&1
done
for seed in $seeds; do
    out=$runs/seed$seed
    for step in gmf mlp neumf; do
        echo "seed $seed $step: $(tail -n 1 "$out/$step.txt")"
    done
    echo "seed $seed alpha sweep: $(tail -n 1 "$out/alpha.txt")"
done
