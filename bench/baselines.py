"""Simple baselines beside trained models, on the same dataset directory, protocols and metrics as ncf.py.

    python -m bench.baselines --data data/ml100k-val                       # popularity and EASE, sampled ranking
    python -m bench.baselines --data data/ml100k-ratio --protocols full -k 20
    python -m bench.baselines --data data/ml100k-val --protocols sampled full --checkpoints runs/*/best.pt

Item popularity scores every item by its training interactions; EASE (Steck, WWW 2019) is a closed-form item-item
model: B = I - P / diag(P) with P = (X'X + lambda I)^-1 over the binary training matrix X, scoring X B. EASE's
lambda is chosen on the validation set when the dataset has one (else on the test items, and the table says so).
Checkpoints from ncf.py are scored the same way, so a table shows each model under each protocol side by side.
Prints a Markdown table; ``--output`` appends JSON lines, ``--append`` the table to docs/experiments.md.
"""

import argparse
import contextlib
import datetime
import json
import sys

import torch

import dataloading
import evaluation
import train
from bench.common import ERRORS, append_result, describe_device
from checkpoint import load_model
from logger import metric_label

LAMBDAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


class Popularity:
    """Every user's score for an item is the item's count of training interactions."""

    def __init__(self, dataset):
        self.counts = torch.bincount(dataset.train_items, minlength=dataset.num_items).float()

    def eval(self):
        return self

    def score(self, users, items):
        return self.counts[items]

    def score_all(self, users):
        return self.counts.expand(users.numel(), -1).clone()


class EASE:
    """Steck's embarrassingly shallow autoencoder: item-item weights in closed form, zero on the diagonal."""

    def __init__(self, dataset, regularisation):
        matrix = torch.zeros(dataset.num_users, dataset.num_items, dtype=torch.float64,
                             device=dataset.train_users.device)
        matrix[dataset.train_users, dataset.train_items] = 1.0
        gram = matrix.T @ matrix
        gram.diagonal().add_(regularisation)
        inverse = torch.linalg.inv(gram)
        self.weights = (-inverse / inverse.diagonal()).float()
        self.weights.diagonal().zero_()
        self.history = matrix.float()  # [users, items]

    def eval(self):
        return self

    def score_all(self, users):
        return self.history[users] @ self.weights

    def score(self, users, items):
        return torch.gather(self.score_all(users), 1, items)


def evaluate(model, dataset, protocol, topk):
    return evaluation.evaluator(model, dataset, protocol, topk, 2**18, contextlib.nullcontext)()


def choose_lambda(dataset, protocol, topk):
    """(lambda, its selection metric, which set chose it) of EASE's grid."""
    metric = evaluation.selection_metric(dataset, protocol, topk)
    results = {value: evaluate(EASE(dataset, value), dataset, protocol, topk)[metric] for value in LAMBDAS}
    best = max(results, key=results.get)
    return best, results[best], "validation" if metric.startswith("valid_") else "test"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset directory from convert.py")
    parser.add_argument("--protocols", nargs="+", choices=evaluation.PROTOCOLS, default=["sampled"],
                        help="evaluation protocols to report (sampled needs one test item per user)")
    parser.add_argument("-k", "--topk", type=int, default=10, help="k of the metrics")
    parser.add_argument("--checkpoints", nargs="*", default=[], help="ncf.py checkpoints to score beside them")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--output", help="JSON-lines file to append each row to")
    parser.add_argument("--append", action="store_true", help="append the table to docs/experiments.md")
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error(f"-k/--topk must be at least 1, got {args.topk}")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        device = train.setup_devices(args.device).device
        dataset = dataloading.load_dataset(args.data)
        models = {path: load_model(path, dataset) for path in args.checkpoints}
    except ERRORS as error:
        print(f"baselines: error: {error}", file=sys.stderr)
        return 2
    if "sampled" in args.protocols and dataset.test.negatives is None:
        print(f"baselines: error: {args.data}: has no sampled negatives; use --protocols full", file=sys.stderr)
        return 2
    dataset = dataset.to(device)
    rows, k = [], args.topk
    for protocol in args.protocols:
        regularisation, chosen, chosen_on = choose_lambda(dataset, protocol, k)
        entries = [("popularity", Popularity(dataset)), (f"EASE, lambda {regularisation:g} (chosen on {chosen_on})",
                                                         EASE(dataset, regularisation))]
        entries += [(path, model.to(device)) for path, model in models.items()]
        for name, model in entries:
            with torch.no_grad():
                metrics = evaluate(model, dataset, protocol, k)
            rows.append({"model": name, "protocol": protocol, **{key: round(value, 4) for key, value in
                                                                   metrics.items() if key != "eval_samples"}})
    keys = [f"hr@{k}", f"recall@{k}", f"ndcg@{k}", f"mrr@{k}"]
    lines = ["| model | protocol | " + " | ".join(metric_label(key) for key in keys) + " |", "|---|---|" + "---|" * 4]
    lines += [f"| {row['model']} | {row['protocol']} | " + " | ".join(f"{row[key]:.4f}" if key in row else ""
                                                                   for key in keys) + " |" for row in rows]
    header = (f"Baselines and checkpoints on {args.data} ({dataset.num_users:,} users, {dataset.num_items:,} items, "
              f"{'a validation set' if dataset.validation is not None else 'no validation set'}); test metrics; "
              f"device: {describe_device(device)}")
    table = "\n".join(lines)
    print(header, table, sep="\n")
    if args.output:
        with open(args.output, "a") as sink:
            for row in rows:
                sink.write(json.dumps({"data": args.data, **row, "date": str(datetime.date.today())}) + "\n")
    if args.append:
        append_result("baselines.py", "Baselines", argv, f"{header}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
