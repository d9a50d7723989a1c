"""HR@k and NDCG@k of NeuMF built from trained GMF and MLP checkpoints, before any fine-tuning, for several alphas.

    python -m bench.alpha_sweep --data data/ml1m-ncf --pretrain_gmf runs/ml1m/gmf/best.pt \\
        --pretrain_mlp runs/ml1m/mlp/best.pt

NeuMF's pre-trained output layer is the GMF output layer weighted by alpha plus the MLP output layer weighted by
1 - alpha (``ncf.py --alpha``), so alpha 1 scores exactly as the GMF model and 0 as the MLP model. The paper
uses 0.5; when one branch is clearly stronger another weight can start the fine-tuning higher. Evaluating each
alpha takes one pass over the test users (seconds), against an epoch of NeuMF training for each in ncf.py.
Prints a Markdown table; ``--append`` adds it, with the command, device and date, to the ``--append`` file.
"""

import argparse
import contextlib
import sys

import torch

import dataloading
from bench import common
from bench.common import append_result
from ncflib import evaluation
from ncflib import training as train
from ncflib.checkpoint import load_model
from neumf import NeuMF


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset directory the two models were trained on")
    parser.add_argument("--pretrain_gmf", required=True, help="GMF checkpoint (ncf.py --model gmf, best.pt)")
    parser.add_argument("--pretrain_mlp", required=True, help="MLP checkpoint (ncf.py --model mlp, best.pt)")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                        help="weights of the GMF output layer to evaluate, each in [0, 1]")
    parser.add_argument("-k", "--topk", type=int, default=10, help="k of HR@k and NDCG@k")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="'auto' uses a GPU when one is available")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
    args = parser.parse_args(argv)
    for alpha in args.alphas:
        if not 0.0 <= alpha <= 1.0:
            parser.error(f"--alphas must lie in [0, 1], got {alpha}")
    if args.topk < 1:
        parser.error(f"-k/--topk must be at least 1, got {args.topk}")
    return args


def sweep(dataset, gmf, mlp, alphas, topk):
    """[(alpha, HR@k, NDCG@k)] of NeuMF initialised from ``gmf`` and ``mlp`` at each alpha."""
    factors = gmf.user_embedding.embedding_dim
    layers = mlp.layer_sizes
    rows = []
    for alpha in alphas:
        model = NeuMF(dataset.num_users, dataset.num_items, factors, layers).load_pretrained(gmf, mlp, alpha)
        model.to(dataset.test_users.device).eval()
        with torch.no_grad():
            metrics = evaluation.sampled_metrics(model, dataset, topk, 4096, contextlib.nullcontext)
        rows.append((alpha, metrics[f"hr@{topk}"], metrics[f"ndcg@{topk}"]))
    return rows


def main(argv=None):
    args = parse_args(argv)
    try:
        device = train.setup_devices(args.device).device
        dataset = dataloading.load_dataset(args.data)
        gmf, mlp = load_model(args.pretrain_gmf, dataset, "gmf"), load_model(args.pretrain_mlp, dataset, "mlp")
    except common.ERRORS as error:
        print(f"alpha_sweep: error: {error}", file=sys.stderr)
        return 2
    dataset = dataset.to(device)
    rows = sweep(dataset, gmf.to(device), mlp.to(device), args.alphas, args.topk)
    best = max(rows, key=lambda row: row[1])
    header = (f"NeuMF from {args.pretrain_gmf} and {args.pretrain_mlp} on {args.data}, before fine-tuning "
              f"(alpha 1 scores as the GMF model, 0 as the MLP model); device: {common.describe_device(device)}")
    lines = [f"| alpha | HR@{args.topk} | NDCG@{args.topk} |", "|---|---|---|"]
    lines += [f"| {alpha:g} | {hr:.4f} | {ndcg:.4f} |" for alpha, hr, ndcg in rows]
    lines += ["", f"Best: alpha {best[0]:g}, HR@{args.topk} {best[1]:.4f}."]
    table = "\n".join(lines)
    print(header)
    print(table)
    if args.append:
        append_result("alpha_sweep.py", "NeuMF's alpha before fine-tuning", argv, f"{header}\n\n{table}", args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
