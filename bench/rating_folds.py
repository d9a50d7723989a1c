"""Rating models on MovieLens 100K's five folds (u1-u5), beside Surprise's SVD and SVD++ on the same splits.

    python -m bench.rating_folds --movielens ml-100k -- --model dotbias
    python -m bench.rating_folds --movielens ml-100k --folds 1 --surprise -- --model biasmf -e 5 --append

Converts ``uN.base`` / ``uN.test`` of the ``--movielens`` folder with ``convert.py --test_path`` (into a temporary
folder), trains ``ncf.py`` with the flags after ``--`` on each fold, and reports each fold's test RMSE and MAE
after its last epoch (the folds have no validation set, so the number of epochs is fixed beforehand rather than
chosen on the test ratings), the mean over the folds and the training time of a fold. With ``--surprise``,
Surprise's SVD and SVD++ (an optional dependency: ``pip install -r requirements-compare.txt``) are fitted with their
default settings to the same training ratings and scored on the same test ratings, so the comparison is one run on
one machine. ``--append`` adds the table to the ``--append`` file.
"""

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import convert
import ncf
from bench.common import describe_device, report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--movielens", required=True, help="the MovieLens 100K folder (u1.base ... u5.test)")
    parser.add_argument("--folds", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="which of u1-u5")
    parser.add_argument("--surprise", action="store_true", help="also run Surprise's SVD and SVD++")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="ncf.py's flags, after --")
    args = parser.parse_args(argv)
    args.flags = [flag for flag in args.flags if flag != "--"] or ["--model", "biasmf"]
    for fold in args.folds:
        for part in ("base", "test"):
            if not (Path(args.movielens) / f"u{fold}.{part}").is_file():
                parser.error(f"{Path(args.movielens) / f'u{fold}.{part}'}: missing; pass the MovieLens 100K folder")
    return args


def run_fold(folder, fold, flags, workspace):
    """(test RMSE, MAE, seconds of ncf.py's run) of one fold."""
    data = workspace / f"u{fold}"
    with contextlib.redirect_stdout(io.StringIO()):
        code = convert.main(["--path", str(folder / f"u{fold}.base"), "--test_path", str(folder / f"u{fold}.test"),
                             "--output", str(data), "--quiet"])
    if code:
        raise SystemExit(code)
    log = workspace / f"u{fold}.json"
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = ncf.main(["--data", str(data), "--checkpoint_dir", "", "--log_path", str(log), *flags])
    seconds = time.perf_counter() - started
    if code:
        raise SystemExit(code)
    last = [entry for entry in map(json.loads, log.read_text().splitlines()) if entry["type"] == "epoch"][-1]
    return last["rmse"], last["mae"], seconds


def surprise_fold(folder, fold, algorithm):
    """(test RMSE, MAE, seconds) of a Surprise algorithm with its defaults on one fold."""
    from surprise import SVD, Dataset, Reader, SVDpp, accuracy
    from surprise.model_selection import PredefinedKFold

    reader = Reader(line_format="user item rating timestamp", sep="\t", rating_scale=(1, 5))
    folds = Dataset.load_from_folds([(str(folder / f"u{fold}.base"), str(folder / f"u{fold}.test"))], reader)
    trainset, testset = next(PredefinedKFold().split(folds))
    model = {"SVD": SVD, "SVD++": SVDpp}[algorithm](random_state=0)
    started = time.perf_counter()
    model.fit(trainset)
    predictions = model.test(testset)
    seconds = time.perf_counter() - started
    with contextlib.redirect_stdout(io.StringIO()):
        return accuracy.rmse(predictions), accuracy.mae(predictions), seconds


def main(argv=None):
    args = parse_args(argv)
    folder = Path(args.movielens)
    rows = {}
    with tempfile.TemporaryDirectory() as workspace:
        rows["ncf.py " + " ".join(args.flags)] = [run_fold(folder, fold, args.flags, Path(workspace))
                                                  for fold in args.folds]
    if args.surprise:
        try:
            import surprise  # noqa: F401
        except ImportError:
            print("rating_folds.py: error: --surprise needs scikit-surprise: pip install scikit-surprise",
                  file=sys.stderr)
            return 1
        for algorithm in ("SVD", "SVD++"):
            rows[f"Surprise {algorithm} (defaults)"] = [surprise_fold(folder, fold, algorithm) for fold in args.folds]
    names = " | ".join(f"u{fold} RMSE" for fold in args.folds)
    header = (f"| model | {names} | mean RMSE | mean MAE | seconds per fold |\n"
              f"|---|{'---|' * len(args.folds)}---|---|---|")
    lines = [header]
    for name, results in rows.items():
        rmse, mae, seconds = (np.array(values) for values in zip(*results))
        lines.append(f"| {name} | " + " | ".join(f"{value:.4f}" for value in rmse)
                     + f" | {rmse.mean():.4f} | {mae.mean():.4f} | {statistics.median(seconds):.1f} |")
    device = describe_device(torch.device("cpu"))
    note = ("ncf.py's rows: the last epoch's figures (the folds have no validation set, so no epoch is chosen on "
            "them); Surprise fits its fixed number of epochs.")
    report("rating_folds.py", "Rating models on MovieLens 100K's folds", argv, device, [*lines, "", note], args.append,
           "MovieLens 100K folds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
