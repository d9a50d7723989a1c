"""The full-ranking comparison as a Markdown table, from the results files of ``bench.sweep`` and
``bench.baselines`` (no training: it reads what they wrote).

    python -m bench.full_ranking_table --sweep experiments/results/full-ranking-ml1m-cpu.jsonl \
        --baselines experiments/results/full-ranking-baselines-cpu.jsonl --data /tmp/d/ml1m-ratio -k 20

Each configuration of the sweep file is one row: the test Recall@k and NDCG@k at the epoch chosen on the
validation set, as the mean over its seeds with the standard error of that mean, the validation metric that chose
it, the seconds a run took (training and evaluation, from launch) and the training and evaluation seconds until
its test Recall@k first reached ALS's (from the baselines file). The baselines file adds its rows for ``--data``
(popularity, EASE, ALS as ``bench.baselines`` chose them).
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def mean_and_error(values):
    """'0.1234 ± 0.0012' (the standard error of the mean) over several values, '0.1234' for one."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) / math.sqrt(len(values)):.4f}"


def seconds_to_pass(run, figure):
    """Training and evaluation seconds until the first epoch whose test Recall@k reaches ``figure`` (None: never;
    read on the test items, a description of the curve, not a choice)."""
    for recall, seconds in zip(run.get("recall_curve", []), run.get("elapsed", [])):
        if recall is not None and recall >= figure:
            return seconds
    return None


def passing(runs, figure):
    """'12' (the mean over seeds), 'never', or '' without a figure or the runs' curves."""
    if figure is None or not all("recall_curve" in run for run in runs):
        return ""
    times = [seconds_to_pass(run, figure) for run in runs]
    return "never" if None in times else f"{statistics.mean(times):.0f}"


def sweep_rows(path, topk, als=None):
    runs = {}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        if record.get("status") == 0:
            runs.setdefault(record["config"], {})[record["seed"]] = record  # a re-run of a seed replaces it
    rows = []
    for config, by_seed in runs.items():
        chosen = list(by_seed.values())
        metrics = [run["metrics"] for run in chosen]
        rows.append((f"`{config}`", len(chosen),
                     mean_and_error([metric[f"recall@{topk}"] for metric in metrics]),
                     mean_and_error([metric[f"ndcg@{topk}"] for metric in metrics]),
                     mean_and_error([run["valid"] for run in chosen]),
                     f"{statistics.mean(run['seconds'] for run in chosen):.0f}", passing(chosen, als)))
    return rows


def baseline_rows(path, data, topk):
    rows = {}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        if Path(record["data"]) == Path(data) and record["protocol"] == "full":
            rows[record["model"].split(" (")[0].split(",")[0]] = (
                record["model"], 1, f"{record[f'recall@{topk}']:.4f}", f"{record[f'ndcg@{topk}']:.4f}", "", "", "")
    return list(rows.values())


def als_figure(path, data, topk):
    """The test Recall@k of the ALS row of ``data`` in a bench.baselines results file, or None."""
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        if Path(record["data"]) == Path(data) and record["protocol"] == "full" and "ALS" in record["model"]:
            return record[f"recall@{topk}"]
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", required=True, help="a bench.sweep results file (JSON lines)")
    parser.add_argument("--baselines", help="a bench.baselines results file (JSON lines)")
    parser.add_argument("--data", help="the dataset directory whose baseline rows to take")
    parser.add_argument("-k", "--topk", type=int, default=20)
    args = parser.parse_args(argv)
    als = als_figure(args.baselines, args.data, args.topk) if args.baselines and args.data else None
    rows = sweep_rows(args.sweep, args.topk, als)
    if args.baselines and args.data:
        rows += baseline_rows(args.baselines, args.data, args.topk)
    k = args.topk
    print(f"| model and flags | seeds | Recall@{k} | NDCG@{k} | validation Recall@{k} | s a run | s to pass ALS |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
