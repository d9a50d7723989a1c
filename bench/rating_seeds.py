"""Rating models over several random splits (seeds), beside the training mean and Surprise, on the same splits.

    python -m bench.rating_seeds --path ml-100k/u.data --run "--model dotbias" --run "--model embnn" --surprise
    python -m bench.rating_seeds --path Musical_Instruments_5.json.gz --convert "--test_fraction 0.1
        --validation_fraction 0.111" --run "--model biasmf" --surprise SVD BaselineOnly --append

For each seed, ``convert.py --split random --validation --seed S`` (plus the ``--convert`` flags) writes a split
into a temporary folder; every ``--run`` (ncf.py's flags) trains on it with ``-s S``, and its test MSE, RMSE and
MAE are taken at the epoch chosen on the validation ratings, so that no figure is chosen on the test ratings. The
training mean (every prediction the mean of the training ratings) and, with ``--surprise``, Surprise's algorithms
with their default settings (an optional dependency: ``pip install -r requirements-compare.txt``) are fitted to
the same training ratings and scored on the same test ratings. Each row gives the mean over the seeds with its
standard error, the validation MSE and the median seconds of a run (training and evaluation, one process);
``--append`` adds the table to the ``--append`` file.
"""

import argparse
import contextlib
import io
import json
import shlex
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

SURPRISE = ("SVD", "SVDpp", "BaselineOnly", "KNNBaseline")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--path", required=True, help="the ratings file convert.py reads (e.g. ml-100k/u.data)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one split and one run per seed")
    parser.add_argument("--convert", default="", help="more convert.py flags, quoted (e.g. \"--test_fraction 0.1\")")
    parser.add_argument("--run", action="append", default=[], metavar="FLAGS",
                        help="ncf.py's flags for one row, quoted; repeat for more rows")
    parser.add_argument("--surprise", nargs="*", choices=SURPRISE, default=None,
                        help="also fit these Surprise algorithms (SVD and SVDpp when given alone)")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
    args = parser.parse_args(argv)
    if not Path(args.path).is_file():
        parser.error(f"--path {args.path}: no such file")
    if not args.run and args.surprise is None:
        parser.error("nothing to run: give --run FLAGS and/or --surprise")
    if args.surprise == []:
        args.surprise = ["SVD", "SVDpp"]
    return args


def convert_split(path, seed, flags, folder):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as errors:
        code = convert.main(["--path", str(path), "--split", "random", "--validation", "--seed", str(seed),
                             "--output", str(folder), "--quiet", *flags])
    if code:
        raise SystemExit(f"rating_seeds.py: convert.py failed on seed {seed}: {errors.getvalue().strip()}")


def ratings_of(folder, part):
    """(users, items, ratings) of one part of a converted split."""
    pairs = np.load(folder / f"{part}.npy", allow_pickle=False)
    return pairs[:, 0], pairs[:, 1], np.load(folder / f"{part}_ratings.npy", allow_pickle=False).astype(np.float64)


def errors(predictions, ratings):
    """{mse, rmse, mae} of predictions against ratings."""
    difference = np.asarray(predictions, dtype=np.float64) - ratings
    mse = float(np.mean(difference ** 2))
    return {"mse": mse, "rmse": mse ** 0.5, "mae": float(np.mean(np.abs(difference)))}


def run_ncf(folder, seed, flags, workspace):
    """(test errors, validation MSE, seconds) of one ncf.py run, at the epoch chosen on validation."""
    log = workspace / "log.json"
    log.unlink(missing_ok=True)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as messages:
        code = ncf.main(["--data", str(folder), "--checkpoint_dir", "", "--log_path", str(log), "-s", str(seed),
                         *flags])
    seconds = time.perf_counter() - started
    if code:
        raise SystemExit(f"rating_seeds.py: ncf.py {' '.join(flags)} failed: {messages.getvalue().strip()}")
    best = [json.loads(line) for line in log.read_text().splitlines()][-1]["best_metrics"]
    return {key: best[key] for key in ("mse", "rmse", "mae")}, best["valid_mse"], seconds


def run_mean(folder):
    """The training mean as every prediction."""
    mean = ratings_of(folder, "train")[2].mean()
    test, valid = (ratings_of(folder, part)[2] for part in ("test", "validation"))
    return errors(np.full(test.shape, mean), test), errors(np.full(valid.shape, mean), valid)["mse"], 0.0


def run_surprise(folder, seed, algorithm):
    """A Surprise algorithm with its defaults, fitted to the split's training ratings."""
    import pandas as pd
    import surprise

    users, items, ratings = ratings_of(folder, "train")
    low, high = float(ratings.min()), float(ratings.max())
    frame = pd.DataFrame({"user": users, "item": items, "rating": ratings})
    trainset = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(low, high))).build_full_trainset()
    model = getattr(surprise, algorithm)(**({"verbose": False} if algorithm.startswith("KNN") else {}))
    if hasattr(model, "random_state"):
        model.random_state = seed
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        model.fit(trainset)

    def predict(part):
        part_users, part_items, part_ratings = ratings_of(folder, part)
        estimates = [model.predict(int(user), int(item)).est for user, item in zip(part_users, part_items)]
        return errors(estimates, part_ratings)

    test = predict("test")
    seconds = time.perf_counter() - started
    return test, predict("validation")["mse"], seconds


def table(rows):
    """Markdown lines: per row the mean over seeds and its standard error."""
    lines = ["| model | test MSE (mean ± s.e.) | test RMSE | test MAE | validation MSE | per seed | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, results in rows.items():
        mse = [test["mse"] for test, _, _ in results]
        error = statistics.stdev(mse) / len(mse) ** 0.5 if len(mse) > 1 else float("nan")
        lines.append(f"| {name} | {statistics.mean(mse):.4f} ± {error:.4f} | "
                     f"{statistics.mean(test['rmse'] for test, _, _ in results):.4f} | "
                     f"{statistics.mean(test['mae'] for test, _, _ in results):.4f} | "
                     f"{statistics.mean(valid for _, valid, _ in results):.4f} | "
                     f"{' '.join(f'{value:.4f}' for value in mse)} | "
                     f"{statistics.median(seconds for _, _, seconds in results):.1f} |")
    return lines


def main(argv=None):
    args = parse_args(argv)
    if args.surprise:
        try:
            import surprise  # noqa: F401
        except ImportError:
            print("rating_seeds.py: error: --surprise needs scikit-surprise: pip install -r requirements-compare.txt",
                  file=sys.stderr)
            return 1
    label = {flags: f"ncf.py {flags}" + (" (reads the test review: a diagnostic)" if
                                          set(shlex.split(flags)) & {"textrating", "textprofile"} else "")
             for flags in args.run}
    rows = {"the training mean": []} | {label[flags]: [] for flags in args.run}
    rows |= {f"Surprise {algorithm} (defaults)": [] for algorithm in args.surprise or []}
    with tempfile.TemporaryDirectory() as workspace:
        workspace = Path(workspace)
        for seed in args.seeds:
            folder = workspace / f"seed{seed}"
            convert_split(args.path, seed, shlex.split(args.convert), folder)
            rows["the training mean"].append(run_mean(folder))
            for flags in args.run:
                rows[label[flags]].append(run_ncf(folder, seed, shlex.split(flags), workspace))
            for algorithm in args.surprise or []:
                rows[f"Surprise {algorithm} (defaults)"].append(run_surprise(folder, seed, algorithm))
            print(f"seed {seed} done", file=sys.stderr, flush=True)
    note = (f"Random splits of {Path(args.path).name} (convert.py --split random --validation {args.convert}"
            f"{' ' if args.convert else ''}--seed S, S in {' '.join(map(str, args.seeds))}); ncf.py's figures at "
            "the epoch chosen on the validation ratings; seconds: the median of a run's training and evaluation.")
    report("rating_seeds.py", "Rating models over random splits", argv, describe_device(torch.device("cpu")),
           [*table(rows), "", note], args.append, f"{Path(args.path).name}, seeds {args.seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
