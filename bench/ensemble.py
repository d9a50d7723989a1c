"""HR@k and NDCG@k of several trained checkpoints scored together: each alone, and their mean logits.

    python -m bench.ensemble --data data/ml100k runs/ml100k/seed*/neumf/best.pt

How far averaging models trained with different seeds moves the metrics, on the same test users: a measure of
how much of one run's result is its seed's noise. The checkpoints may be of any model kind (GMF, MLP, NeuMF) but
must all fit the dataset. Prints a Markdown table (each checkpoint, their mean, and the ensemble); ``--append``
adds it, with the command, device and date, to the ``--append`` file.
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset directory the checkpoints were trained on")
    parser.add_argument("checkpoints", nargs="+", help="best.pt files from ncf.py (two or more)")
    parser.add_argument("-k", "--topk", type=int, default=10, help="k of HR@k and NDCG@k")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="'auto' uses a GPU when one is available")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
    args = parser.parse_args(argv)
    if len(args.checkpoints) < 2:
        parser.error("give two or more checkpoints to average")
    if args.topk < 1:
        parser.error(f"-k/--topk must be at least 1, got {args.topk}")
    return args


def metrics(dataset, models, topk):
    """(HR@k, NDCG@k) of the mean logits of ``models`` (one model: that model's own)."""
    def score(users, items):
        return torch.stack([model.score(users, items) for model in models]).mean(dim=0)

    with torch.no_grad():
        metrics = evaluation.sampled_metrics(None, dataset, topk, 4096, contextlib.nullcontext, score=score)
    return metrics[f"hr@{topk}"], metrics[f"ndcg@{topk}"]


def main(argv=None):
    args = parse_args(argv)
    try:
        device = train.setup_devices(args.device).device
        dataset = dataloading.load_dataset(args.data)
        models = [load_model(path, dataset).to(device).eval() for path in args.checkpoints]
    except common.ERRORS as error:
        print(f"ensemble: error: {error}", file=sys.stderr)
        return 2
    dataset = dataset.to(device)
    alone = [metrics(dataset, [model], args.topk) for model in models]
    together = metrics(dataset, models, args.topk)
    k = args.topk
    header = (f"{len(models)} checkpoints on {args.data}, each alone and their mean logits; "
              f"device: {common.describe_device(device)}")
    lines = [f"| model | HR@{k} | NDCG@{k} |", "|---|---|---|"]
    lines += [f"| {path} | {hr:.4f} | {ndcg:.4f} |" for path, (hr, ndcg) in zip(args.checkpoints, alone)]
    lines += [f"| mean of the {len(models)} | {sum(hr for hr, _ in alone) / len(alone):.4f} | "
              f"{sum(ndcg for _, ndcg in alone) / len(alone):.4f} |",
              f"| ensemble (mean logits) | {together[0]:.4f} | {together[1]:.4f} |"]
    table = "\n".join(lines)
    print(header)
    print(table)
    if args.append:
        append_result("ensemble.py", "Checkpoints scored together", argv, f"{header}\n\n{table}", args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
