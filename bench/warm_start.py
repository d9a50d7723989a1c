"""New data without starting over, measured: a log cut in two (the first share by time, then the rest as an update),
a model trained on the first part, then the updated dataset trained from scratch and warm-started from it.

    python -m bench.warm_start --log ../shared/data/ml-100k/u.data --seeds 0 1 2 \\
        --convert_flags "--validation" --flags "--model gmf"
    python -m bench.warm_start --log ../shared/data/yelp2018 --seeds 0 -k 20 \\
        --convert_flags "--validation" --flags "--eval_protocol full"

An NGCF/LightGCN folder is cut at random (seed 0): the first share of its training pairs with its whole test file,
then the rest as new training lines (``convert.py --update`` keeps the test set).

For each seed: ``ncf.py`` on the first part (its defaults but --flags), then on the updated dataset
(``convert.py --update``) from scratch and with ``--warm_start`` (each with its default epochs, and with -e 2), every
run alone, one after another. The selection metric (HR@k, or Recall@k under full ranking; of the validation set when
the data has one) of each epoch is read from the logs with its seconds of training and evaluation. One JSON line
per seed goes to --output: the test metrics of each run's chosen epoch, the seconds to that epoch, and the seconds
the warm run took to reach the from-scratch run's best selection metric (null: never within its epochs). The
means and standard errors over the seeds are printed.
"""

import argparse
import datetime
import json
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(command, log_file):
    with open(log_file, "w") as sink:
        status = subprocess.run(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT).returncode
    if status:
        sys.exit(f"bench.warm_start: {shlex.join(map(str, command))} failed (exit {status}); see {log_file}")


def cut_log(log, share, workdir):
    """The log's rows sorted by time (ties in file order), cut at ``share``: two CSV files (user, item, rating,
    time) under ``workdir``."""
    from ncflib.data.readers import detect_format, read  # (run as python -m bench.warm_start from the root)

    data = read(Path(log), detect_format(Path(log)))
    if data.timestamps is None:
        sys.exit(f"bench.warm_start: {log} has no time column to cut it by")
    order = np.argsort(data.timestamps, kind="stable")
    cut = int(round(share * order.size))
    files = []
    for name, rows in (("first.csv", order[:cut]), ("update.csv", order[cut:])):
        columns = [data.users[rows], data.items[rows],
                   data.ratings[rows] if data.ratings is not None else np.ones(rows.size), data.timestamps[rows]]
        lines = ["user,item,rating,time"] + [",".join(map(str, row)) for row in zip(*columns)]
        (workdir / name).write_text("\n".join(lines) + "\n")
        files.append(workdir / name)
    return files


def cut_lightgcn(folder, share, workdir, seed=0):
    """NGCF/LightGCN's ``train.txt`` and ``test.txt`` under ``folder``, their training pairs cut at random (``seed``):
    ``share`` of them in ``workdir/first`` (with the whole test file), the rest in ``workdir/update.txt``."""
    rng = np.random.default_rng(seed)
    first, rest = [], []
    for line in (Path(folder) / "train.txt").read_text().splitlines():
        cells = line.split()
        if len(cells) < 2:
            continue
        kept = rng.random(len(cells) - 1) < share
        for lines, chosen in ((first, kept), (rest, ~kept)):
            if chosen.any():
                lines.append(" ".join([cells[0], *np.array(cells[1:])[chosen]]))
    (workdir / "first").mkdir(exist_ok=True)
    (workdir / "first" / "train.txt").write_text("\n".join(first) + "\n")
    (workdir / "first" / "test.txt").write_text((Path(folder) / "test.txt").read_text())
    (workdir / "update.txt").write_text("\n".join(rest) + "\n")
    return workdir / "first", workdir / "update.txt"


def epochs_of(log_file):
    records = [json.loads(line) for line in Path(log_file).read_text().splitlines()]
    return [record for record in records if record["type"] == "epoch"], records[-1]


def selection_key(epochs, topk):
    first = epochs[0]
    metric = f"recall@{topk}" if f"recall@{topk}" in first else f"hr@{topk}"
    return ("valid_" + metric) if ("valid_" + metric) in first else metric


def summary_of(log_file, topk):
    """{test metrics of the chosen epoch, chosen epoch, seconds to it, total seconds, curve of the selection metric
    with cumulative seconds}."""
    epochs, summary = epochs_of(log_file)
    key = selection_key(epochs, topk)
    seconds = np.cumsum([record["train_epoch_time"] + record["validation_epoch_time"] for record in epochs])
    return {"metrics": {name: value for name, value in summary["best_metrics"].items() if "loss" not in name},
            "epoch": summary["best_epoch"], "seconds_to_best": float(seconds[summary["best_epoch"]]),
            "seconds": float(seconds[-1]), "epochs": len(epochs), "selection": key,
            "curve": [[float(record[key]), float(second)] for record, second in zip(epochs, seconds)]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--log", required=True,
                        help="an interaction log with a time column (any convert.py input), or an NGCF/LightGCN "
                             "folder (train.txt, test.txt), whose training pairs are cut at random")
    parser.add_argument("--first", type=float, default=0.85,
                        help="share of the log (by time; of an NGCF/LightGCN folder's training pairs, at random) in "
                             "the first dataset")
    parser.add_argument("--convert_flags", default="", help="convert.py flags of the first dataset's split")
    parser.add_argument("--flags", default="--model gmf", help="ncf.py flags of every run")
    parser.add_argument("-k", "--topk", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reuse", nargs="+", default=[], choices=["old", "scratch", "scratch_2", "warm", "warm_2"],
                        help="runs of an earlier call with the same --workdir, --log and flags to read instead of "
                             "running again (the first part and the from-scratch runs do not depend on warm-start "
                             "settings)")
    parser.add_argument("--workdir", default="runs/warm-start")
    parser.add_argument("--output", default="experiments/results/warm-start-cpu.jsonl")
    args = parser.parse_args(argv)
    work = Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    from ncflib.data.readers import detect_format

    if detect_format(Path(args.log)) == "lightgcn":
        first, update = cut_lightgcn(args.log, args.first, work)
    else:
        first, update = cut_log(args.log, args.first, work)
    python = sys.executable
    run([python, "convert.py", "--path", first, "--output", work / "old", "--force", "--quiet",
         *shlex.split(args.convert_flags)], work / "convert-old.txt")
    run([python, "convert.py", "--path", update, "--update", work / "old", "--output", work / "new", "--force",
         "--quiet"], work / "convert-new.txt")
    flags = shlex.split(args.flags) + ["-k", str(args.topk)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or None
    rows = []
    for seed in args.seeds:
        runs, reused = {}, []
        common = [*flags, "--seed", str(seed)]
        plans = {"old": ["--data", work / "old"], "scratch": ["--data", work / "new"],
                 "scratch_2": ["--data", work / "new", "-e", "2"],
                 "warm": ["--data", work / "new", "--warm_start", work / f"old-{seed}" / "best.pt"],
                 "warm_2": ["--data", work / "new", "--warm_start", work / f"old-{seed}" / "best.pt", "-e", "2"]}
        for name, plan in plans.items():
            folder = work / f"{name}-{seed}"
            if name in args.reuse and (folder / "log.json").is_file():
                reused.append(name)
            else:
                shutil.rmtree(folder, ignore_errors=True)  # (a checkpoint folder keeps its best.pt across runs)
                run([python, "ncf.py", *plan, *common, "--checkpoint_dir", folder], work / f"{name}-{seed}.txt")
            runs[name] = summary_of(folder / "log.json", args.topk)
        target = max(value for value, _ in runs["scratch"]["curve"])
        reached = next((second for value, second in runs["warm"]["curve"] if value >= target), None)
        row = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {platform.node()}",
               "log": str(args.log), "first": args.first, "convert_flags": args.convert_flags, "flags": args.flags,
               "seed": seed, "commit": commit, "reused": reused, "runs": runs, "scratch_best_selection": target,
               "warm_seconds_to_scratch_best": reached}
        rows.append(row)
        with open(args.output, "a") as sink:
            sink.write(json.dumps(row) + "\n")
        print(f"seed {seed}: scratch best {runs['scratch']['selection']} {target:.4f} in "
              f"{runs['scratch']['seconds_to_best']:.1f} s of {runs['scratch']['seconds']:.1f} s; warm "
              f"({runs['warm']['epochs']} epochs) reaches it in {reached if reached is None else round(reached, 1)} s; "
              f"2 epochs: warm {runs['warm_2']['metrics']} vs scratch {runs['scratch_2']['metrics']}", flush=True)
    for name in ("scratch", "warm", "scratch_2", "warm_2"):
        for metric in rows[0]["runs"][name]["metrics"]:
            values = np.array([row["runs"][name]["metrics"][metric] for row in rows])
            error = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
            print(f"{name:10s} {metric:12s} {values.mean():.4f} +- {error:.4f}")
        seconds = np.array([row["runs"][name]["seconds"] for row in rows])
        print(f"{name:10s} seconds      {seconds.mean():.1f}")


if __name__ == "__main__":
    main()
