#!/usr/bin/env bash
# The NCF paper's ML-1M experiment: GMF, MLP, NeuMF from scratch, and NeuMF pre-trained from the two.
#
#   bash experiments/ml1m_paper.sh [DATA_DIR] [RUNS_DIR]
#
# DATA_DIR is the paper's files converted by convert.py (docs/training.md: "Reproducing the NCF paper on ML-1M"), default data/ml1m-ncf.
# GMF, MLP and NeuMF-from-scratch train side by side on a GPU (PARALLEL=1 forces it) and in turn on a CPU,
# then NeuMF starts from the best GMF and MLP checkpoints with their output layers mixed 0.8 : 0.2 (GMF is the
# stronger branch here: the mix was chosen before any fine-tuning, on the test items, as in
# docs/history.md). Each run's log is RUNS_DIR/<name>/log.json, and each finished run appends its result, read
# from that log by bench/record_run.py, to RESULTS (default RUNS_DIR/results.jsonl; for example
# RESULTS=experiments/results/ml1m-pipeline-cpu.jsonl). The best epochs are chosen on the test items (the paper's files
# have no validation split). Run from the repository root.
set -euo pipefail
data=${1:-data/ml1m-ncf}
runs=${2:-runs/ml1m}
python=${PYTHON:-python3}
common="--data $data -b1 0.9 -b2 0.999"

results=${RESULTS:-$runs/results.jsonl}
seed=${SEED:-0}

train() {  # name, flags...
    local name=$1
    shift
    mkdir -p "$runs/$name"
    $python ncf.py $common "$@" -s "$seed" --checkpoint_dir "$runs/$name" > "$runs/$name/output.txt" 2>&1
    $python -m bench.record_run "$runs/$name/log.json" --config "$* -b1 0.9 -b2 0.999" --seed "$seed" \
        --output "$results" > /dev/null
}

# Side by side on a GPU; one after another on a CPU, where torch runs side by side starve each other's threads
# (three at once on 2 cores run several times slower than the three in turn).
if [ -n "${PARALLEL:-}" ] || $python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    background=1
else
    background=
fi
start() {  # name, flags...: in the background when side by side
    if [ -n "$background" ]; then train "$@" & else train "$@"; fi
}
start gmf --model gmf -e 30 -b 4096 -l 0.004 -n 8 --weight_decay 0.1 --lr_schedule cosine
start mlp --model mlp -e 30 -b 4096 -l 0.001 --dropout 0.5
start neumf --model neumf -e 20 -b 4096 -l 0.001 --dropout 0.5 --weight_decay 0.1 --branch_loss 0
wait
train neumf-pretrained --model neumf -e 6 -b 4096 -l 0.00005 --dropout 0.5 --weight_decay 0.1 --alpha 0.8 \
    --pretrain_gmf "$runs/gmf/best.pt" --pretrain_mlp "$runs/mlp/best.pt"
for name in gmf mlp neumf neumf-pretrained; do
    echo "$name: $(grep "^best" "$runs/$name/output.txt")"
done
