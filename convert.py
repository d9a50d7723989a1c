"""Convert raw interaction logs into an ncf dataset directory (CPU only).

    python convert.py --path ml-100k/u.data --output data/ml100k
    python convert.py --path ml-20m/ratings.csv --output data/ml20m
    python convert.py --path clicks.tsv --user_col visitor --item_col page --time_col ts --output data/clicks
    python convert.py --path AMAZON_FASHION_5.json.gz --valid_negative 20 --output data/fashion
    python convert.py --path ncf-data/ml-1m --output data/ml1m-ncf     # the NCF paper's .train/.test files
    python convert.py --dataset demo --output data/demo
    python convert.py --path new-ratings.csv --update data/ml100k --output data/ml100k-2   # extend a dataset

Every (user, item) interaction is a positive; repeated pairs are dropped. Each user's latest interaction is held out
as the test item, ranked at evaluation time against ``--valid_negative`` items the user never interacted with. The
output directory format is described in docs/data.md ("Dataset directory").
"""

import argparse
import gzip
import os
import sys
import time
import warnings
import zlib
from pathlib import Path

import pandas as pd

from ncflib.data.layout import check_output, write_dataset
from ncflib.data.readers import FILE_NAMES, FORMATS, detect_format, ncf_prefix_exists, read, read_lightgcn_training
from ncflib.data.splits import (
    SPLITS,
    Interactions,
    Split,
    generated_interactions,
    hold_out_validation,
    split_interactions,
    split_ratings,
)
from ncflib.data.update import SPLIT_FLAGS, check_columns, duplicates_of_old, given_split, read_previous, update_counts
from ncflib.errors import ConversionError, warnings_after
from ncflib.flags import Flags, given


class Progress:
    """Staged log lines with elapsed seconds, so long conversions show where they are."""

    def __init__(self, quiet=False):
        self.start = time.perf_counter()
        self.quiet = quiet

    def __call__(self, message):
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)

    def elapsed(self):
        return time.perf_counter() - self.start


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="convert.py",
        description="Convert raw interaction logs into an ncf dataset directory (train/test split, test "
                    "negatives, id maps). The input format is detected from the file name and first line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    flags = Flags(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--path", help="input file (or a directory holding u.data, ratings.dat, ratings.csv or the "
                                       "NCF paper's PREFIX.train.rating/.test.rating/.test.negative)")
    source.add_argument("--dataset", choices=["demo"], help="a built-in dataset: 'demo' is a small synthetic set "
                                                            "with planted structure, deterministic in --seed")
    flags.add(source, "--synthetic", nargs=3, type=int, metavar=("USERS", "ITEMS", "INTERACTIONS"), rule="at least 1",
                        help="generate a synthetic dataset of this shape (for scale tests)")
    parser.add_argument("--output", required=True, help="dataset directory to create")
    parser.add_argument("--format", choices=FORMATS, help="input format; detected when not given")
    parser.add_argument("--user_col", help="user id column (name or 0-based index) for csv/parquet/json inputs")
    parser.add_argument("--item_col", help="item id column (name or 0-based index)")
    parser.add_argument("--time_col", help="time column (name or index; numbers or ISO dates); without one, the "
                                           "held-out item is drawn at random with --seed")
    parser.add_argument("--rating_col", help="rating column (name or index), stored alongside; not used as a filter")
    parser.add_argument("--text_col", nargs="+", metavar="COLUMN",
                        help="review text column(s), joined by a space (Amazon files: summary and reviewText "
                             "unless given); kept by the rating splits (--split random, --test_path) as word "
                             "indices over a vocabulary of the training reviews (vocab.csv)")
    flags.add(parser, "--max_words", type=int, default=20000, rule="at least 1",
                        help="vocabulary size: the most common words of the training reviews kept")
    flags.add(parser, "--skip_top", type=int, default=0, rule="0 or more",
                        help="leave this many of the most common words (the, and, ...) out of the vocabulary first")
    parser.add_argument("--sep", default="auto", help="column separator for delimited files ('tab', ',', ';', "
                                                      "'::', ...); 'auto' detects it")
    parser.add_argument("--header", choices=["auto", "yes", "no"], default="auto",
                        help="whether a delimited file's first line holds column names")
    parser.add_argument("--split", choices=SPLITS, default="leave_one_out",
                        help="'leave_one_out': each user's latest interaction is the test item, ranked among "
                             "--valid_negative sampled negatives (NVIDIA, the NCF paper); 'ratio': a random "
                             "--test_fraction of each user's items (NGCF/LightGCN), 'time_ratio': the latest "
                             "--test_fraction; the ratio splits are evaluated by full ranking; 'random': a random "
                             "--test_fraction of all interactions, every rating kept as given (fastai's split for "
                             "rating prediction)")
    parser.add_argument("--test_path", help="a second file of the --path format whose rows are the test set "
                                            "(MovieLens u1.test beside u1.base): ratings kept as given, ids indexed "
                                            "over both files")
    flags.add(parser, "--test_fraction", type=float, default=0.2, rule="in (0, 1)",
                        help="with --split ratio or time_ratio: the share of each user's items held out for test "
                             "(at least one, and at least one left to train)")
    parser.add_argument("--validation", action="store_true",
                        help="also hold out a validation set, on which ncf.py chooses its best epoch: with "
                             "leave_one_out each user's second latest interaction (with its own negatives; users "
                             "then need 3 interactions), with the ratio splits --validation_fraction of the items "
                             "left after the test items, with NGCF/LightGCN's files --validation_fraction of each "
                             "user's train.txt items (test.txt as given)")
    flags.add(parser, "--validation_fraction", type=float, default=0.1, rule="in (0, 1)",
                        help="with --validation and a ratio split: the share of each user's remaining items held "
                             "out for validation")
    flags.add(parser, "--valid_negative", type=int, default=100, rule="0 or more",
                        help="test negatives drawn per user with leave_one_out (ignored for the NCF files, which "
                             "carry their own); 0: none, for rating prediction or full ranking only")
    flags.add(parser, "--min_interactions", type=int, default=2, rule="at least 2",
                        help="drop users with fewer distinct interactions than this (at least 2: one to test, one "
                             "to train)")
    parser.add_argument("--seed", type=int, default=0, help="seed for negatives, ties without time, synthetic data")
    parser.add_argument("--update", metavar="DATASET",
                        help="extend DATASET (a directory convert.py wrote) with the log --path: every interaction of "
                             "DATASET (training, validation and test, with times and ratings) and the log's are split "
                             "again with DATASET's protocol and settings, its users and items keep their indices, new "
                             "ones follow in order of first appearance; the log is read with DATASET's format and "
                             "columns; a (user, item) pair DATASET holds is dropped from the log and counted")
    parser.add_argument("--force", action="store_true", help="replace an existing --output directory")
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")
    args = parser.parse_args(argv)
    problem = flags.problem(args)
    if problem:
        parser.error(problem)
    if args.update:
        if not args.path:
            parser.error("--update extends a dataset with a log: pass the log with --path")
        split_flags = sorted(given(parser, argv) & set(SPLIT_FLAGS))
        if split_flags:
            parser.error(f"--{split_flags[0]}: an update splits with the settings of the dataset it extends; drop it")
    if args.validation_fraction != parser.get_default("validation_fraction") and not args.validation:
        parser.error("--validation_fraction is the share --validation holds out; add --validation, or drop it")
    if args.test_path and (not args.path or args.split != "leave_one_out"):
        parser.error("--test_path goes with --path (its training file) and no --split: the test file is the split")
    return args


def load_update(args, progress):
    """``--update``: (the old dataset and the new log joined as Interactions, its ``Previous``, the log's rows and how
    many repeat the old dataset's pairs); the split settings of ``args`` set to the old dataset's."""
    previous = read_previous(args.update)
    for name, value in previous.settings().items():
        setattr(args, name, value)
    columns = {"user": args.user_col, "item": args.item_col, "time": args.time_col, "rating": args.rating_col}
    check_columns(previous, args.format or previous.source.get("format"), columns)
    for key, column in (previous.source.get("columns") or {}).items():
        if key != "text" and column is not None and columns.get(key) is None:
            setattr(args, f"{key}_col", column)
    args.format = previous.source.get("format")
    if previous.protocol["name"] == "given":  # (NGCF/LightGCN's: new training pairs, the test set kept)
        progress(f"reading {args.path} as new training lines")
        log = read_lightgcn_training(args.path)
    else:
        log = load_interactions(args, progress)
    if isinstance(log, Split):  # (check_columns refused other formats: only an edited metadata gets here)
        raise ConversionError(f"{args.path}: comes split; --update extends a dataset with a plain log")
    progress(f"read {previous.path}: {previous.users.size:,} interactions of {previous.user_ids.size:,} users and "
             f"{previous.item_ids.size:,} items")
    data = previous.joined(log)
    return data, previous, log.users.size, duplicates_of_old(previous, data)


def load_interactions(args, progress, test_file=False):
    """Read the input named by the arguments (``test_file``: ``--test_path``, in ``--path``'s format); returns
    Interactions, or a finished Split for the NCF files."""
    columns = {"user": args.user_col, "item": args.item_col, "time": args.time_col, "rating": args.rating_col,
               "text": args.text_col}
    if args.dataset or args.synthetic:
        data = generated_interactions(args.synthetic, args.seed)
        progress(f"generated {data.users.size:,} synthetic interactions")
        return data
    path = Path(args.test_path if test_file else args.path)
    if not path.exists() and not ncf_prefix_exists(path):
        raise ConversionError(f"{path}: no such file or directory; check --{'test_path' if test_file else 'path'}")
    fmt = args.format or detect_format(Path(args.path))
    if test_file and (path.is_dir() or fmt in ("ncf", "lightgcn")):
        raise ConversionError(f"{path}: --test_path takes one file of --path's format, not {fmt} files or a folder")
    if path.is_dir() and fmt not in ("ncf", "lightgcn"):
        path = path / {fmt_: name for name, fmt_ in FILE_NAMES.items()}.get(fmt, "")
        if not path.is_file():
            raise ConversionError(f"{args.path}: is a directory; pass the ratings file itself with --path")
    progress(f"reading {path} as {fmt}")
    data = read(path, fmt, columns, args.sep, args.header)
    if isinstance(data, Interactions):
        progress(f"read {data.users.size:,} rows" + ("" if data.timestamps is not None else " (no time column)"))
    return data


def print_summary(metadata, seconds, output):
    counts = metadata["counts"]
    lines = [
        f"dataset written to {output} in {seconds:.1f} s",
        f"  source            {metadata['source'].get('path', metadata['source']['format'])} "
        f"({metadata['source']['format']})",
        f"  input rows        {counts.get('input_rows', 0):,}",
        f"  duplicates        {counts.get('duplicates_dropped', 0):,} repeated (user, item) pairs dropped",
        f"  users dropped     {counts.get('users_dropped', 0):,} with fewer than "
        f"{metadata['protocol'].get('min_interactions', 2)} interactions",
        f"  users             {metadata['num_users']:,}",
        f"  items             {metadata['num_items']:,}"
        + (f" ({counts['items_dropped']:,} seen only by dropped users)" if counts.get("items_dropped") else ""),
        f"  training pairs    {metadata['num_train']:,}",
        f"  test users        {metadata['num_test_users']:,}, "
        + (f"{metadata['test_negatives']} negatives each" if metadata["test_negatives"] else
           f"{metadata.get('num_test', 0):,} test items (no sampled negatives: full ranking or ratings)"),
        f"  split             {metadata['protocol']['split']}",
    ]
    update = counts.get("update")
    if update:
        lines[2] = f"  input rows        {counts['input_rows']:,} of the log, and {update['old_interactions']:,} " \
                   f"interactions of {update['from']}"
        lines.insert(3, f"  update            {update['new_users']:,} new users, {update['new_items']:,} new items, "
                        f"{update['new_interactions']:,} new interactions; {update['duplicates_of_old']:,} rows of the "
                        f"log repeat pairs of {update['from']} (dropped); old ids keep their indices")
    if metadata.get("num_validation"):
        lines.insert(-1, f"  validation        {metadata['num_validation']:,} held-out items")
    if "vocabulary_size" in metadata:
        lines.insert(-1, f"  review text       {metadata['vocabulary_size']:,} words in vocab.csv, from the training "
                         "reviews")
    for note in metadata["source"].get("notes", []):
        lines.append(f"  note              {note}")
    if counts.get("test_rows_without_training"):
        lines.append(f"  note              {counts['test_rows_without_training']:,} test rows have a user or item with "
                     f"no training row ({counts['test_users_without_training']:,} users and "
                     f"{counts['test_items_without_training']:,} items seen only in test); kept, and scored from rows "
                     "training never moved (the rating models from the known side)")
    if counts.get("test_pairs_also_in_train_dropped"):
        lines.append(f"  note              {counts['test_pairs_also_in_train_dropped']:,} test pairs were also "
                     "training pairs, which full ranking leaves out of the candidates: dropped from the test set")
    if metadata["protocol"].get("name") in ("random", "test_file") and "train_ratings" not in metadata["arrays"]:
        lines.append("  note              the input has no rating column: the rating models (--model dotbias, mf, "
                     "...) will not train on this dataset; the implicit ones rank its test items (full ranking)")
    if counts.get("given_negatives_equal_to_test_item"):
        lines.append(f"  note              {counts['given_negatives_equal_to_test_item']} given negatives equal the "
                     "user's test item; evaluation ignores them")
    print("\n".join(lines))


@warnings_after
def main(argv=None):
    with warnings.catch_warnings():
        # pandas' notices of its own future changes (Pandas4Warning) say nothing a user of this tool can act on
        warnings.simplefilter("ignore", getattr(pd.errors, "Pandas4Warning", FutureWarning))
        return _main(argv)


def _main(argv):
    args = parse_args(argv)
    progress = Progress(args.quiet)
    try:
        check_output(args.output, args.force, args.path)
        previous = None
        if args.update:
            data, previous, log_rows, repeated = load_update(args, progress)
            known, old = (previous.user_ids, previous.item_ids), previous.old_parts()
        else:
            data, known, old = load_interactions(args, progress), (None, None), None
        if previous is not None and previous.protocol["name"] == "given":
            split = given_split(previous, data, progress)
            source = {"format": previous.source.get("format"), "path": str(args.path)}
        elif isinstance(data, Split):
            if args.test_path:
                raise ConversionError(f"{args.path}: these files come split (the NCF paper's or NGCF's) and bring "
                                      "their own test file; drop --test_path")
            given_test_only = data.test_negatives is None  # NGCF/LightGCN's: a validation fraction can be drawn
            if args.split != "leave_one_out" or (args.validation and not given_test_only):
                raise ConversionError(f"{args.path}: these files come split (the NCF paper's or NGCF's); their split "
                                      "is used as given, so drop --split" + ("" if given_test_only else
                                                                              " and --validation"))
            split = hold_out_validation(data, args.validation_fraction, args.seed) if args.validation else data
            source = {"format": split.protocol.get("format", "ncf"), "path": str(args.path)}
        elif args.test_path or args.split == "random":
            test_data = load_interactions(args, progress, test_file=True) if args.test_path else None
            split = split_ratings(data, args.seed, progress, test_data, args.test_fraction, args.validation,
                                  args.validation_fraction, args.max_words, args.skip_top, known, old)
            source = {**data.source, **({"test_path": str(args.test_path)} if args.test_path else {})}
        else:
            if data.texts is not None:
                progress("review text is kept by the rating splits only (--split random or --test_path); left out")
            split = split_interactions(data, args.min_interactions, args.valid_negative, args.seed, progress,
                                       args.split, args.test_fraction, args.validation, args.validation_fraction,
                                       known, old)
            source = data.source
        if previous is not None:
            split.counts["update"] = update_counts(previous, split, log_rows, repeated)
            split.counts["duplicates_dropped"] -= repeated  # (counted apart: rows of the log the dataset held)
            split.counts["input_rows"] -= previous.users.size
            source = {**source, "update_of": str(previous.path)}
        metadata = write_dataset(split, args.output, source, args.seed, args.force, progress)
    except ConversionError as error:
        print(f"convert.py: error: {error}", file=sys.stderr)
        return 1
    except UnicodeDecodeError as error:  # raised deep inside pandas' parser, for any reader
        print(f"convert.py: error: {args.path}: not UTF-8 text (byte {error.object[error.start:error.start + 1]!r} "
              f"at offset {error.start} of a block); re-encode the file as UTF-8", file=sys.stderr)
        return 1
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        print(f"convert.py: error: {args.path}: truncated or damaged compressed file ({error}); fetch it again",
              file=sys.stderr)
        return 1
    try:
        print_summary(metadata, progress.elapsed(), args.output)
    except BrokenPipeError:  # the summary piped into a reader that stopped early (``| head``): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
