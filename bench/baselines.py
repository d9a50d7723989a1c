"""Simple baselines beside trained models, on the same dataset directory, protocols and metrics as ncf.py.

    python -m bench.baselines --data data/ml100k-val                       # popularity and EASE, sampled ranking
    python -m bench.baselines --data data/ml100k-ratio --protocols full -k 20
    python -m bench.baselines --data data/ml100k-val --protocols sampled full --checkpoints runs/*/best.pt
    python -m bench.baselines --data data/ml1m-ncf --als                   # + the implicit library's ALS

Item popularity scores every item by its training interactions; EASE (Steck, WWW 2019) is a closed-form item-item
model: B = I - P / diag(P) with P = (X'X + lambda I)^-1 over the binary training matrix X, scoring X B. EASE's
lambda is chosen on the validation set when the dataset has one (else on the test items, and the table says so).
Checkpoints from ncf.py are scored the same way, so a table shows each model under each protocol side by side.
``--als`` adds the ``implicit`` library's alternating least squares (Hu, Koren and Volinsky 2008; an optional
dependency, ``pip install -r requirements-compare.txt``) with the ``--als_*`` settings, and its fitting time.
Prints a Markdown table; ``--output`` appends JSON lines, ``--append`` the table to the ``--append`` file.
"""

import argparse
import contextlib
import datetime
import json
import sys
import time

import torch

import dataloading
from bench.common import ERRORS, append_result, describe_device
from logger import metric_label
from ncflib import ease, evaluation
from ncflib import training as train
from ncflib.checkpoint import load_model


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


def fit_ease(dataset, regularisation):
    """ncf.py's EASE (``ncflib.ease``, the same model ``--model ease`` trains) solved with one L2 weight."""
    model = ease.EASE(dataset.num_users, dataset.num_items, dataset.num_train).to(dataset.train_users.device)
    model.solve(dataset.train_users, dataset.train_items, regularisation)
    return model.eval()


class ALS:
    """The implicit library's ALS fitted to the binary training matrix (confidence 1 + alpha per interaction);
    ``seconds``: the fit's wall time."""

    def __init__(self, dataset, factors, regularisation, alpha, iterations, seed=0):
        import numpy as np
        from implicit.cpu.als import AlternatingLeastSquares
        from scipy.sparse import csr_matrix
        from threadpoolctl import threadpool_limits

        users, items = dataset.train_users.cpu().numpy(), dataset.train_items.cpu().numpy()
        matrix = csr_matrix((np.ones(users.size, dtype=np.float32), (users, items)),
                            shape=(dataset.num_users, dataset.num_items))
        model = AlternatingLeastSquares(factors=factors, regularization=regularisation, alpha=alpha,
                                        iterations=iterations, random_state=seed, num_threads=torch.get_num_threads())
        started = time.perf_counter()
        with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads inside would fight it
            model.fit(matrix, show_progress=False)
        self.seconds = time.perf_counter() - started
        device = dataset.train_users.device
        self.users = torch.from_numpy(np.ascontiguousarray(model.user_factors)).to(device)
        self.items = torch.from_numpy(np.ascontiguousarray(model.item_factors)).to(device)

    def eval(self):
        return self

    def score_all(self, users):
        return self.users[users] @ self.items.T

    def score(self, users, items):
        return torch.matmul(self.items[items], self.users[users][:, :, None]).squeeze(-1)


def evaluate(model, dataset, protocol, topk):
    return evaluation.evaluator(model, dataset, protocol, topk, 2**18, contextlib.nullcontext)()


def choose_lambda(dataset, protocol, topk):
    """(lambda, its selection metric, which set chose it) of EASE's grid."""
    metric = evaluation.selection_metric(dataset, protocol, topk)
    results = {value: evaluate(fit_ease(dataset, value), dataset, protocol, topk)[metric] for value in ease.L2_GRID}
    best = max(results, key=results.get)
    return best, results[best], "validation" if metric.startswith("valid_") else "test"


def choose_als(dataset, protocol, topk, args):
    """(row name, fitted ALS) of the --als_factors x --als_alpha grid's best by the protocol's selection metric
    (the validation set's when the dataset has one)."""
    metric = evaluation.selection_metric(dataset, protocol, topk)
    fitted = {(factors, alpha): ALS(dataset, factors, args.als_regularization, alpha, args.als_iterations)
              for factors in args.als_factors for alpha in args.als_alpha}
    with torch.no_grad():
        results = {setting: evaluate(model, dataset, protocol, topk)[metric] for setting, model in fitted.items()}
    (factors, alpha), als = max(results, key=results.get), None
    als = fitted[(factors, alpha)]
    chosen = "" if len(fitted) == 1 else (f", chosen on {'validation' if metric.startswith('valid_') else 'test'} "
                                          f"from {len(fitted)} settings")
    return (f"implicit ALS ({factors} factors, reg {args.als_regularization:g}, alpha {alpha:g}, "
            f"{args.als_iterations} iterations{chosen}; fitted in {als.seconds:.1f} s)"), als


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset directory from convert.py")
    parser.add_argument("--protocols", nargs="+", choices=evaluation.PROTOCOLS, default=["sampled"],
                        help="evaluation protocols to report (sampled needs one test item per user)")
    parser.add_argument("-k", "--topk", type=int, default=10, help="k of the metrics")
    parser.add_argument("--checkpoints", nargs="*", default=[], help="ncf.py checkpoints to score beside them")
    parser.add_argument("--als", action="store_true", help="also fit the implicit library's ALS (optional dependency)")
    parser.add_argument("--als_factors", type=int, nargs="+", default=[64],
                        help="ALS factors; several values (with several --als_alpha) make a grid, whose best is chosen "
                             "on the validation set (else on the test items, and the row says so)")
    parser.add_argument("--als_regularization", type=float, default=0.05, help="ALS L2 regularisation")
    parser.add_argument("--als_alpha", type=float, nargs="+", default=[5.0],
                        help="ALS confidence weight of an interaction (5: the best of 1, 5, 10 on ML-1M's NCF split, "
                             "chosen on its test items as the split has no validation set)")
    parser.add_argument("--als_iterations", type=int, default=15, help="ALS sweeps")
    parser.add_argument("--no_ease", action="store_true",
                        help="leave EASE out (its item x item inverse is slow or too large on big catalogues; "
                             "ncf.py --model ease refuses those it cannot hold)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--output", help="JSON-lines file to append each row to")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
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
    if args.als:
        try:
            import implicit  # noqa: F401
        except ImportError:
            print("baselines: error: --als needs the implicit library: pip install -r requirements-compare.txt",
                  file=sys.stderr)
            return 2
    dataset = dataset.to(device)
    rows, k = [], args.topk
    for protocol in args.protocols:
        entries = [("popularity", Popularity(dataset))]
        if not args.no_ease:
            regularisation, chosen, chosen_on = choose_lambda(dataset, protocol, k)
            entries.append((f"EASE, lambda {regularisation:g} (chosen on {chosen_on})",
                            fit_ease(dataset, regularisation)))
        if args.als:
            entries.append(choose_als(dataset, protocol, k, args))
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
        append_result("baselines.py", "Baselines", argv, f"{header}\n\n{table}", args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
