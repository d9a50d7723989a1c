"""Convert raw interaction logs into an ncf dataset directory (CPU only).

    python convert.py --path ml-100k/u.data --output data/ml100k
    python convert.py --path ml-20m/ratings.csv --output data/ml20m
    python convert.py --path clicks.tsv --user_col visitor --item_col page --time_col ts --output data/clicks
    python convert.py --path AMAZON_FASHION_5.json.gz --valid_negative 20 --output data/fashion
    python convert.py --path ncf-data/ml-1m --output data/ml1m-ncf     # the NCF paper's .train/.test files
    python convert.py --dataset demo --output data/demo

Every (user, item) interaction is a positive; repeated pairs are dropped. Each user's latest interaction is held out
as the test item, ranked at evaluation time against ``--valid_negative`` items the user never interacted with. The
output directory format is described in docs/data.md ("Dataset directory").
"""

import argparse
import gzip
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ncflib import textdata
from ncflib.data.layout import FORMAT_VERSION, split_fingerprint
from ncflib.data.synthetic import DEMO_SHAPE, synthetic_interactions
from ncflib.errors import ConversionError

FORMATS = ("movielens-100k", "movielens-1m", "movielens-20m", "csv", "parquet", "amazon", "ncf", "lightgcn")
# Column names recognised in files with a header when --user_col/--item_col/... are not given, in order of preference.
USER_NAMES = ("user_id", "userid", "user", "reviewerid", "visitorid", "customer_id", "uid")
ITEM_NAMES = ("item_id", "itemid", "item", "movieid", "artistid", "asin", "product_id", "productid", "iid")
TIME_NAMES = ("timestamp", "time", "unixreviewtime", "ts", "datetime", "date")
RATING_NAMES = ("rating", "weight", "overall", "score", "count")
NCF_SUFFIXES = (".train.rating", ".test.rating", ".test.negative")
FILE_NAMES = {"u.data": "movielens-100k", "ratings.dat": "movielens-1m", "ratings.csv": "movielens-20m"}


@dataclass
class Interactions:
    """Raw interactions as read from a source: original ids, optional time and rating, optional item titles."""

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None = None
    ratings: np.ndarray | None = None
    titles: dict = field(default_factory=dict)  # original item id -> title
    source: dict = field(default_factory=dict)
    texts: np.ndarray | None = None  # [N] str: each row's review text ('' for none), when the source has text
    first_data_line: int = 1  # file line of row 0, so errors can name the line


@dataclass
class Split:
    """A finished split in contiguous indices (what the dataset directory stores)."""

    train: np.ndarray  # [N, 2] int32 (user, item)
    test: np.ndarray  # [T, 2] int32 (user, held-out item), sorted by user; leave-one-out: row u is user u
    test_negatives: np.ndarray | None  # [U, K] int32 with one test item per user, else None
    user_ids: np.ndarray  # [U] original user ids
    item_ids: np.ndarray  # [I] original item ids
    titles: dict = field(default_factory=dict)
    extra_arrays: dict = field(default_factory=dict)  # optional ratings / timestamps, aligned with train and test
    counts: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    validation: np.ndarray | None = None  # [V, 2] int32, as test, when the split holds a validation set
    validation_negatives: np.ndarray | None = None  # [U, K] int32 with one validation item per user
    vocabulary: tuple | None = None  # (words, counts) of the review text, when the split keeps text


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


# --------------------------------------------------------------------------------------------------- detection


def detect_format(path):
    """Guess the format of ``path`` from its name and first line; return one of FORMATS."""
    path = Path(path)
    if path.is_dir() and (path / "train.txt").is_file() and (path / "test.txt").is_file() or \
            path.name == "train.txt" and (path.parent / "test.txt").is_file():
        return "lightgcn"
    if path.is_dir():
        for name, fmt in FILE_NAMES.items():
            if (path / name).is_file():
                return fmt
        if any(path.glob("*.train.rating")):
            return "ncf"
        raise ConversionError(f"{path}: directory holds no u.data, ratings.dat, ratings.csv or *.train.rating; "
                              "pass the ratings file itself with --path")
    name = path.name.lower()
    if name.endswith(NCF_SUFFIXES) or _ncf_prefix_exists(path):
        return "ncf"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        return "amazon"
    first = _first_line(path)
    if name == "u.data" or name.endswith((".data", ".base")):
        return "movielens-100k"
    if "::" in first:
        return "movielens-1m"
    if first.replace('"', "").strip().lower().startswith("userid,movieid,"):
        return "movielens-20m"
    if first.lstrip().startswith("{"):
        return "amazon"
    return "csv"


def _ncf_prefix_exists(path):
    return not path.exists() and Path(str(path) + ".train.rating").is_file()


def _open_text(path):
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _first_line(path):
    try:
        with _open_text(path) as handle:
            return handle.readline()
    except (OSError, EOFError) as error:
        raise ConversionError(f"{path}: cannot read ({error})") from None


def _check_readable(path):
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file; check --path")
    if path.is_file() and path.stat().st_size == 0:
        raise ConversionError(f"{path}: file is empty")


# ----------------------------------------------------------------------------------------------------- readers


def _numeric_column(values, name, path, first_data_line, dtype=np.int64):
    """Convert a column to numbers or raise an error naming the first bad line."""
    series = pd.Series(values)
    numbers = pd.to_numeric(series, errors="coerce")
    bad = numbers.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        value = series.iloc[row]
        if pd.isna(value) or str(value).strip() == "":
            raise ConversionError(f"{path}: line {row + first_data_line}: missing {name}")
        raise ConversionError(f"{path}: line {row + first_data_line}: {name} {str(value)[:40]!r} is not a number")
    numbers = numbers.to_numpy()
    if np.issubdtype(dtype, np.integer) and not np.array_equal(numbers, np.floor(numbers)):
        row = int(np.argmax(numbers != np.floor(numbers)))
        raise ConversionError(f"{path}: line {row + first_data_line}: {name} {numbers[row]!r} is not an integer")
    return numbers.astype(dtype)


def _read_fixed_layout(path, sep, names, header, fmt, first_data_line):
    """Read a MovieLens-style file whose columns are known: fast typed parse, precise error on failure."""
    _check_readable(path)
    dtypes = {"user": np.int64, "item": np.int64, "rating": np.float32, "timestamp": np.int64}
    kwargs = dict(sep=sep, header=header, names=names, usecols=range(len(names)), engine="c")
    source = path
    if len(sep) > 1:  # the C parser takes one-character separators only; '::' files become tab-separated first
        source = io.BytesIO(Path(path).read_bytes().replace(sep.encode(), b"\t"))
        kwargs["sep"] = "\t"
    try:
        frame = pd.read_csv(source, dtype=dtypes, **kwargs)
    except (ValueError, TypeError, pd.errors.ParserError):
        if isinstance(source, io.BytesIO):
            source.seek(0)
        try:
            frame = pd.read_csv(source, dtype=str, keep_default_na=False, **kwargs)
        except pd.errors.ParserError as error:
            raise ConversionError(f"{path}: not a {fmt} file ({str(error).splitlines()[0]})") from None
        for name in names:
            _numeric_column(frame[name], name, path, first_data_line, dtypes[name])
        raise ConversionError(f"{path}: not a {fmt} file") from None  # unreachable unless pandas is stricter than us
    except pd.errors.EmptyDataError:
        raise ConversionError(f"{path}: file is empty") from None
    if frame.empty:
        raise ConversionError(f"{path}: file holds no interactions")
    for name in names:
        if frame[name].isna().any():
            row = int(np.argmax(frame[name].isna().to_numpy()))
            raise ConversionError(f"{path}: line {row + first_data_line}: missing {name}")
    return Interactions(
        users=frame["user"].to_numpy(), items=frame["item"].to_numpy(),
        timestamps=frame["timestamp"].to_numpy(), ratings=frame["rating"].to_numpy(),
        source={"format": fmt, "path": str(path)}, first_data_line=first_data_line,
    )


def _read_titles(path, sep, id_column, title_column, encoding, header):
    """Item titles from u.item / movies.dat / movies.csv beside the ratings; {} when absent or unreadable."""
    if not path.is_file():
        return {}
    try:
        if len(sep) > 1:
            lines = path.read_bytes().decode(encoding).splitlines()
            rows = [line.split(sep) for line in lines if line]
            return {int(row[id_column]): row[title_column] for row in rows if len(row) > title_column}
        frame = pd.read_csv(path, sep=sep, header=0 if header else None, encoding=encoding, dtype=str,
                            keep_default_na=False, usecols=[id_column, title_column], quotechar='"')
        ids = pd.to_numeric(frame.iloc[:, 0], errors="coerce")
        keep = ids.notna().to_numpy()
        return dict(zip(ids[keep].astype(np.int64).tolist(), frame.iloc[:, 1][keep].tolist()))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError):
        return {}


def read_movielens_100k(path):
    """MovieLens 100K ``u.data``: tab-separated ``user item rating timestamp``; titles from ``u.item``."""
    data = _read_fixed_layout(path, "\t", ["user", "item", "rating", "timestamp"], None, "movielens-100k", 1)
    data.titles = _read_titles(Path(path).parent / "u.item", "|", 0, 1, "latin-1", header=False)
    return data


def read_movielens_1m(path):
    """MovieLens 1M/10M ``ratings.dat``: ``user::item::rating::timestamp``; titles from ``movies.dat``."""
    data = _read_fixed_layout(path, "::", ["user", "item", "rating", "timestamp"], None, "movielens-1m", 1)
    data.titles = _read_titles(Path(path).parent / "movies.dat", "::", 0, 1, "latin-1", header=False)
    return data


def read_movielens_csv(path):
    """MovieLens 20M/25M/32M ``ratings.csv`` (header ``userId,movieId,rating,timestamp``); titles from movies.csv."""
    first = _first_line(path).replace('"', "").strip().lower()
    if not first.startswith("userid,movieid,rating,timestamp"):
        raise ConversionError(f"{path}: expected the header 'userId,movieId,rating,timestamp' of a MovieLens "
                              f"ratings.csv, found {first[:60]!r}; use --format csv with --user_col/--item_col")
    data = _read_fixed_layout(path, ",", ["user", "item", "rating", "timestamp"], 0, "movielens-20m", 2)
    data.titles = _read_titles(Path(path).parent / "movies.csv", ",", 0, 1, "utf-8", header=True)
    return data


def _sniff_separator(path):
    with _open_text(path) as handle:
        lines = [line.rstrip("\r\n") for _, line in zip(range(20), handle) if line.strip()]
    if not lines:
        raise ConversionError(f"{path}: file is empty")
    for sep in ("::", "\t", ",", ";", "|"):
        widths = {len(line.split(sep)) for line in lines}
        if len(widths) == 1 and widths.pop() > 1:
            return sep
    if all(len(line.split()) > 1 for line in lines):
        return r"\s+"
    raise ConversionError(f"{path}: cannot tell the column separator; pass --sep")


def _looks_numeric(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _resolve_column(spec, columns, candidates, flag, path, required):
    """Find a column by name or 0-based index (``spec``), else by well-known names; None if optional and absent."""
    if spec is not None:
        if spec in columns:
            return spec
        if str(spec).lstrip("-").isdigit() and 0 <= int(spec) < len(columns):
            return columns[int(spec)]
        lowered = {str(column).lower(): column for column in columns}
        if str(spec).lower() in lowered:
            return lowered[str(spec).lower()]
        shown = ", ".join(str(column) for column in columns[:12])
        raise ConversionError(f"{path}: no column {spec!r} for {flag}; columns are: {shown}")
    lowered = {str(column).lower(): column for column in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    if required:
        shown = ", ".join(str(column) for column in columns[:12])
        raise ConversionError(f"{path}: cannot tell which column is the {flag.strip('-').replace('_col', '')}; "
                              f"pass {flag} (columns are: {shown})")
    return None


def _to_timestamps(values, name, path, first_data_line):
    """Numeric times as they are; date/time strings as Unix seconds; anything else is an error naming the line."""
    series = pd.Series(values)
    numbers = series if pd.api.types.is_numeric_dtype(series) else pd.to_numeric(series, errors="coerce")
    if numbers.notna().all():
        values = numbers.to_numpy()
        outside = ~(np.abs(values.astype(np.float64)) < 2.0**62)  # inf, NaN and beyond int64 (which wrap silently)
        if outside.any():
            row = int(np.argmax(outside))
            raise ConversionError(f"{path}: line {row + first_data_line}: {name} {values[row]} is not a usable time "
                                  "(infinite or out of range); fix or drop the row")
        return values.astype(np.int64)
    dates = pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
    if dates.notna().all():
        return (dates - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    return _numeric_column(series, name, path, first_data_line)  # raises, naming the first bad line


def _frame_to_interactions(frame, path, columns, fmt, first_data_line):
    """Pick user/item/time/rating columns out of a table read from a generic file."""
    names = list(frame.columns)
    user = _resolve_column(columns.get("user"), names, USER_NAMES, "--user_col", path, True)
    item = _resolve_column(columns.get("item"), names, ITEM_NAMES, "--item_col", path, True)
    when = _resolve_column(columns.get("time"), names, TIME_NAMES, "--time_col", path, False)
    rating = _resolve_column(columns.get("rating"), names, RATING_NAMES, "--rating_col", path, False)
    if user == item:
        raise ConversionError(f"{path}: --user_col and --item_col name the same column {user!r}")
    if frame.empty:
        raise ConversionError(f"{path}: file holds no interactions")
    for name, column in (("user id", user), ("item id", item)):
        head = frame[column].iloc[:1000] if frame[column].dtype == object else frame[column].iloc[:0]
        nested = head.map(lambda value: isinstance(value, (list, dict, tuple, np.ndarray))).to_numpy()
        if nested.any():  # (Parquet list or struct columns; the first rows tell, without a pass over them all)
            raise ConversionError(f"{path}: line {int(np.argmax(nested)) + first_data_line}: the {name} column "
                                  f"{column!r} holds lists or records, not ids; pass another column")
        missing = frame[column].isna().to_numpy(copy=True)
        if frame[column].dtype == object:
            missing |= (frame[column].astype(str).str.strip() == "").to_numpy()
        if missing.any():
            raise ConversionError(f"{path}: line {int(np.argmax(missing)) + first_data_line}: missing {name} "
                                  f"(column {column!r})")
    timestamps = None if when is None else _to_timestamps(frame[when], f"time (column {when!r})", path,
                                                          first_data_line)
    ratings = None if rating is None else _numeric_column(frame[rating], f"rating (column {rating!r})", path,
                                                          first_data_line, np.float32)
    text = columns.get("text")
    text = [text] if isinstance(text, str) else text
    text = None if text is None else [_resolve_column(name, names, (), "--text_col", path, True) for name in text]
    return Interactions(
        users=_normalise_ids(frame[user]), items=_normalise_ids(frame[item]), timestamps=timestamps, ratings=ratings,
        source={"format": fmt, "path": str(path), "columns": {"user": str(user), "item": str(item),
                                                               "time": None if when is None else str(when),
                                                               "rating": None if rating is None else str(rating),
                                                               **({} if text is None else {"text": text})}},
        first_data_line=first_data_line, texts=None if text is None else _join_text(frame, text),
    )


def _join_text(frame, columns):
    """Each row's text: the given columns joined by a space, missing values as ''."""
    if not columns:
        return np.full(len(frame), "", dtype=object)
    parts = [frame[column].map(lambda value: value if isinstance(value, str) else "") for column in columns]
    joined = parts[0]
    for part in parts[1:]:
        joined = joined + " " + part
    return joined.to_numpy(dtype=object)


def _normalise_ids(series):
    """Ids stay integers when every value is an integer; otherwise they are labels (strings)."""
    if pd.api.types.is_integer_dtype(series):
        return series.to_numpy()
    if pd.api.types.is_float_dtype(series) and np.array_equal(series, np.floor(series)):
        return series.to_numpy().astype(np.int64)
    return series.astype(str).str.strip().to_numpy()


def read_delimited(path, columns, sep="auto", header="auto"):
    """Any delimited text file; columns by name (with a header) or 0-based index."""
    _check_readable(path)
    sep = _sniff_separator(path) if sep == "auto" else {"tab": "\t", "\\t": "\t", "space": r"\s+"}.get(sep, sep)
    if header == "auto":
        header = _guess_header(path, sep, columns)
    try:
        frame = pd.read_csv(path, sep=sep, header=0 if header == "yes" else None, dtype=None,
                            engine="python" if len(sep) > 1 else "c", skipinitialspace=True,
                            compression="infer")
    except pd.errors.EmptyDataError:
        raise ConversionError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: cannot parse as delimited text ({str(error).splitlines()[0]})") from None
    if header != "yes":
        # Without a header the first two columns are user and item unless told otherwise; time only when named.
        frame.columns = [str(index) for index in range(frame.shape[1])]
        columns = {**columns, "user": columns.get("user") or "0", "item": columns.get("item") or "1"}
    else:
        frame.columns = [str(column).strip() for column in frame.columns]
    return _frame_to_interactions(frame, path, columns, "csv", 2 if header == "yes" else 1)


def _guess_header(path, sep, columns):
    """A first line is a header when a column name flag matches it, or when it is text over numbers."""
    with _open_text(path) as handle:
        first, second = handle.readline().strip(), handle.readline().strip()
    split = (lambda line: re.split(sep, line)) if sep == r"\s+" else (lambda line: line.split(sep))
    names = [cell.strip().strip('"').lower() for cell in split(first)]
    for spec in columns.values():
        if spec is not None and not str(spec).isdigit() and str(spec).lower() in names:
            return "yes"
    if any(name in names for name in USER_NAMES + ITEM_NAMES):
        return "yes"
    if second and any(not _looks_numeric(a) and _looks_numeric(b.strip().strip('"'))
                      for a, b in zip(names, split(second))):
        return "yes"
    return "no"


def read_parquet(path, columns):
    """A Parquet table (needs pyarrow); columns by name or 0-based index."""
    _check_readable(path)
    try:
        frame = pd.read_parquet(path)
    except ImportError:
        raise ConversionError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow") from None
    except Exception as error:  # noqa: BLE001 - pyarrow raises many kinds; all mean "not a readable Parquet file"
        raise ConversionError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0][:120]})") from None
    frame.columns = [str(column) for column in frame.columns]
    return _frame_to_interactions(frame, path, columns, "parquet", 1)


def read_amazon(path, columns):
    """Amazon review JSON lines (plain or .gz): ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``."""
    _check_readable(path)
    text = columns.get("text")
    wanted = ({"reviewerID", "asin", "overall", "unixReviewTime", "summary", "reviewText"}
              | {str(v) for key, v in columns.items() if v and key != "text"} | set(text or []))
    rows = []
    try:
        with _open_text(path) as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise ConversionError(f"{path}: line {line_number}: not valid JSON") from None
                if not isinstance(record, dict):
                    raise ConversionError(f"{path}: line {line_number}: expected a JSON object per line")
                rows.append({key: record.get(key) for key in wanted})
    except (OSError, EOFError) as error:
        raise ConversionError(f"{path}: cannot read ({error})") from None
    if not rows:
        raise ConversionError(f"{path}: file holds no interactions")
    frame = pd.DataFrame(rows)
    defaults = {"user": columns.get("user") or "reviewerID", "item": columns.get("item") or "asin",
                "time": columns.get("time") or "unixReviewTime", "rating": columns.get("rating") or "overall",
                # the summary, then the review; a file with neither converts with empty texts
                "text": text or [name for name in ("summary", "reviewText") if frame[name].notna().any()]}
    for key in ("time", "rating"):
        if frame[defaults[key]].isna().all() and columns.get(key) is None:
            defaults[key] = None
            frame = frame.drop(columns=[{"time": "unixReviewTime", "rating": "overall"}[key]])
    data = _frame_to_interactions(frame, path, defaults, "amazon", 1)
    return data


def _ncf_files(path):
    """{suffix: file} of the NCF paper's three files, from a directory, a prefix or one of the files."""
    path = Path(path)
    prefix = str(path)
    for suffix in NCF_SUFFIXES:
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    if path.is_dir():
        prefixes = sorted(str(p)[: -len(".train.rating")] for p in path.glob("*.train.rating"))
        if len(prefixes) != 1:
            raise ConversionError(f"{path}: expected exactly one *.train.rating file, found {len(prefixes)}")
        prefix = prefixes[0]
    files = {suffix: Path(prefix + suffix) for suffix in NCF_SUFFIXES}
    for file in files.values():
        _check_readable(file)
    return files


def _ncf_table(file, columns):
    """The first ``columns`` of an NCF rating file (user, item, rating, timestamp) as integer arrays."""
    try:
        frame = pd.read_csv(file, sep="\t", header=None, dtype=str, keep_default_na=False, usecols=range(columns))
    except (pd.errors.ParserError, ValueError) as error:
        raise ConversionError(f"{file}: not an NCF rating file ({str(error).splitlines()[0]})") from None
    return [_numeric_column(frame[i], ("user", "item", "rating", "timestamp")[i], file, 1) for i in range(columns)]


def _ncf_negatives(file):
    """((user, item) pairs [U, 2], negatives [U, K]) of an NCF ``.test.negative`` file."""
    lines = [line.rstrip("\r\n").split("\t") for line in file.read_text().splitlines() if line.strip()]
    negatives, pairs = [], []
    for number, cells in enumerate(lines, start=1):
        match = re.fullmatch(r"\((\d+),(\d+)\)", cells[0].strip())
        if match is None or not all(cell.strip().isdigit() for cell in cells[1:]):
            raise ConversionError(f"{file}: line {number}: expected '(user,item)' followed by tab-separated item ids")
        pairs.append((int(match[1]), int(match[2])))
        negatives.append([int(cell) for cell in cells[1:]])
    widths = {len(row) for row in negatives}
    if len(widths) != 1 or 0 in widths:
        raise ConversionError(f"{file}: lines have different numbers of negatives {sorted(widths)}")
    return np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(negatives, dtype=np.int64)


def read_lightgcn(path):
    """NGCF/LightGCN's ``train.txt`` and ``test.txt`` (a line per user: ``user item item ...``, 0-based ids), as
    Gowalla, Yelp2018 and Amazon-Book are published. Their split is used as given; returns a finished Split for
    full-ranking evaluation (no sampled negatives). Ids are indexed in numeric order, so contiguous ids keep their
    values."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    parts = {}
    for name in ("train", "test"):
        file = folder / f"{name}.txt"
        _check_readable(file)
        users, items = [], []
        with _open_text(file) as handle:
            for number, line in enumerate(handle, start=1):
                cells = line.split()
                if not cells:
                    continue
                if not all(cell.isdigit() for cell in cells):
                    raise ConversionError(f"{file}: line {number}: expected 'user item item ...' as integer ids")
                users += [int(cells[0])] * (len(cells) - 1)
                items += [int(cell) for cell in cells[1:]]
        parts[name] = (np.array(users, dtype=np.int64), np.array(items, dtype=np.int64))
    user_codes, user_ids = _index_ids(np.concatenate([parts["train"][0], parts["test"][0]]))
    item_codes, item_ids = _index_ids(np.concatenate([parts["train"][1], parts["test"][1]]))
    size = parts["train"][0].size
    pairs = {"train": np.stack([user_codes[:size], item_codes[:size]], 1),
             "test": np.stack([user_codes[size:], item_codes[size:]], 1)}
    for name in pairs:  # sorted by user, repeated pairs dropped
        pairs[name] = np.unique(pairs[name], axis=0).astype(np.int32)
    overlap = np.intersect1d(pairs["train"][:, 0].astype(np.int64) * item_ids.size + pairs["train"][:, 1],
                             pairs["test"][:, 0].astype(np.int64) * item_ids.size + pairs["test"][:, 1]).size
    return Split(train=pairs["train"], test=pairs["test"], test_negatives=None, user_ids=user_ids, item_ids=item_ids,
                 counts={"input_rows": int(user_codes.size), "users_dropped": 0, "test_pairs_also_in_train": overlap,
                         "duplicates_dropped": int(user_codes.size - sum(part.shape[0] for part in pairs.values()))},
                 protocol={"split": "as given by the NGCF/LightGCN files", "name": "given", "format": "lightgcn",
                           "validation": False})


def read_ncf(path):
    """The NCF paper's ``PREFIX.train.rating``, ``PREFIX.test.rating`` and ``PREFIX.test.negative`` (0-based ids).

    Their split and their negatives are used as given. Returns a finished Split.
    """
    files = _ncf_files(path)
    prefix = str(files[".train.rating"])[: -len(".train.rating")]
    train_users, train_items, _, train_times = _ncf_table(files[".train.rating"], 4)
    test_users, test_items, test_ratings, test_times = _ncf_table(files[".test.rating"], 4)
    pairs, negatives = _ncf_negatives(files[".test.negative"])

    num_users = int(max(train_users.max(), test_users.max())) + 1
    num_items = int(max(train_items.max(), test_items.max(), negatives.max())) + 1
    order = np.argsort(test_users, kind="stable")
    if not np.array_equal(test_users[order], np.arange(num_users)):
        raise ConversionError(f"{files['.test.rating']}: expected exactly one row per user 0..{num_users - 1}")
    negative_order = np.argsort(pairs[:, 0], kind="stable")
    if not np.array_equal(pairs[negative_order], np.stack([test_users[order], test_items[order]], 1)):
        raise ConversionError(f"{files['.test.negative']}: its (user,item) pairs do not match "
                              f"{files['.test.rating'].name}")
    if min(train_users.min(), train_items.min(), negatives.min()) < 0:
        raise ConversionError(f"{prefix}: negative ids; the NCF files use 0-based ids")

    pair_keys = train_users * num_items + train_items
    _, first = np.unique(pair_keys, return_index=True)
    first.sort()
    duplicates = train_users.size - first.size
    train = np.stack([train_users[first], train_items[first]], 1)
    test = np.stack([test_users[order], test_items[order]], 1)
    negatives = negatives[negative_order]
    own_item = int((negatives == test[:, 1:2]).sum())
    return Split(
        train=train.astype(np.int32), test=test.astype(np.int32), test_negatives=negatives.astype(np.int32),
        user_ids=np.arange(num_users), item_ids=np.arange(num_items),
        extra_arrays={"train_timestamps": train_times[first], "test_timestamps": test_times[order],
                      "test_ratings": test_ratings[order].astype(np.float32)},
        counts={"input_rows": int(train_users.size + test_users.size), "duplicates_dropped": int(duplicates),
                "users_dropped": 0, "given_negatives_equal_to_test_item": own_item},
        protocol={"split": "as given by the NCF files", "test_negatives": "as given by the NCF files"},
    )


# ---------------------------------------------------------------------------------------------------- protocol


def _index_ids(ids):
    """Map original ids to 0..n-1 in sorted id order; returns (codes, unique ids)."""
    if np.issubdtype(ids.dtype, np.integer) and ids.size and ids.min() >= 0 and ids.max() < 4 * ids.size + 1_000_000:
        # Dense non-negative integer ids (the usual case) are indexed by counting, far faster than hashing.
        present = np.bincount(ids) > 0
        remap = np.cumsum(present) - 1
        return remap[ids], np.flatnonzero(present)
    codes, uniques = pd.factorize(ids, sort=True)
    return codes.astype(np.int64), np.asarray(uniques)


def _time_order(timestamps, rng, num_rows):
    """Each row's position when rows are sorted by time, ties in file order; a seeded random order without time."""
    if timestamps is None:
        return rng.permutation(num_rows)
    shifted = timestamps - timestamps.min()
    if shifted.max() < np.iinfo(np.int64).max // max(num_rows, 1):
        # Sorting packed (time, row) values is several times faster than a stable argsort of the times.
        order = np.sort(shifted * num_rows + np.arange(num_rows)) % num_rows
    else:
        order = np.argsort(timestamps, kind="stable")
    position = np.empty(num_rows, dtype=np.int64)
    position[order] = np.arange(num_rows)
    return position


def leave_last_out(data, min_interactions, rng, progress):
    """Drop repeated pairs (keeping the earliest), drop light users, and hold out each user's latest interaction.

    Returns (rows of the kept interactions sorted by user then time, user codes, item codes, per-user counts,
    original user ids, original item ids, counts for the summary).
    """
    num_rows = data.users.size
    user_codes, user_ids = _index_ids(data.users)
    item_codes, item_ids = _index_ids(data.items)
    num_items = item_ids.size
    position = _time_order(data.timestamps, rng, num_rows)
    progress(f"indexed {user_ids.size:,} users and {num_items:,} items")

    # Repeated (user, item) pairs: keep the earliest, so the held-out item is the latest *new* item for the user,
    # which is what a recommender is asked to predict. One sort of packed (pair, time position) values does it.
    pair = user_codes * num_items + item_codes
    if pair.max() < np.iinfo(np.int64).max // max(num_rows, 1):
        packed = np.sort(pair * num_rows + position)
        pair_sorted = packed // num_rows
        first = np.ones(num_rows, dtype=bool)
        first[1:] = pair_sorted[1:] != pair_sorted[:-1]
        kept_position = packed[first] % num_rows
        kept_pair = pair_sorted[first]
    else:
        order = np.lexsort((position, pair))
        first = np.ones(num_rows, dtype=bool)
        first[1:] = pair[order][1:] != pair[order][:-1]
        kept_pair, kept_position = pair[order][first], position[order][first]
    duplicates = num_rows - kept_pair.size

    # Back to rows sorted by (user, time): sort packed (user, time position) values.
    row_of_position = np.empty(num_rows, dtype=np.int64)
    row_of_position[position] = np.arange(num_rows)
    kept_user = kept_pair // num_items
    kept_rows = row_of_position[np.sort(kept_user * num_rows + kept_position) % num_rows]
    progress(f"dropped {duplicates:,} repeated (user, item) pairs")

    counts = np.bincount(user_codes[kept_rows], minlength=user_ids.size)
    light = counts < min_interactions
    if light.all():
        raise ConversionError(f"{data.source.get('path', 'input')}: no user has {min_interactions} or more distinct "
                              "interactions, so nothing is left to train and test on")
    kept_rows = kept_rows[~light[user_codes[kept_rows]]]

    # Contiguous indices over what is left: users and items that lost every interaction disappear.
    user_index = np.cumsum(~light) - 1
    item_used = np.zeros(num_items, dtype=bool)
    item_used[item_codes[kept_rows]] = True
    item_index = np.cumsum(item_used) - 1
    users = user_index[user_codes[kept_rows]]
    items = item_index[item_codes[kept_rows]]
    summary = {"input_rows": int(num_rows), "duplicates_dropped": int(duplicates),
               "users_dropped": int(light.sum()), "interactions_of_dropped_users": int(counts[light].sum()),
               "items_dropped": int(num_items - item_used.sum())}
    return kept_rows, users, items, counts[~light], user_ids[~light], item_ids[item_used], summary


def sample_test_negatives(users, items, counts, num_items, num_negatives, rng, chunk_users=None):
    """Draw ``num_negatives`` distinct items per user, uniformly among the items the user never interacted with.

    ``users``/``items`` hold every interaction (train and test), sorted by user; ``counts`` is interactions per user.
    Vectorised rejection sampling over chunks of users, checked against a dense chunk-by-items bitmap; users with
    few items left over use an exact draw from their complement. Returns an int32 array [num_users, num_negatives].
    """
    num_users = counts.size
    result = np.empty((num_users, num_negatives), dtype=np.int32)
    starts = np.concatenate(([0], np.cumsum(counts)))
    chunk_users = chunk_users or max(1, min(num_users, 64_000_000 // num_items))
    free_share = (num_items - counts) / num_items

    def exact_draw(user):
        seen = np.zeros(num_items, dtype=bool)
        seen[items[starts[user]:starts[user + 1]]] = True
        result[user] = rng.choice(np.flatnonzero(~seen), num_negatives, replace=False)

    # Rejection sampling wastes draws when a user's free items are few or nearly all needed; those users (rare in
    # real data) take the exact draw from their complement.
    needs_exact = (free_share < 0.5) | (num_negatives > 0.5 * (num_items - counts))
    for user in np.flatnonzero(needs_exact):
        exact_draw(user)

    for first_user in range(0, num_users, chunk_users):
        last_user = min(num_users, first_user + chunk_users)
        chunk = np.arange(first_user, last_user)
        chunk = chunk[~needs_exact[chunk]]
        if chunk.size == 0:
            continue
        seen = np.zeros((last_user - first_user, num_items), dtype=bool)
        lo, hi = starts[first_user], starts[last_user]
        seen[users[lo:hi] - first_user, items[lo:hi]] = True
        pending = chunk
        for _ in range(3):
            if pending.size == 0:
                break
            # Enough draws that nearly every row finishes in one round: the expected need is
            # k / free_share plus the repeats among the draws themselves.
            worst = free_share[pending].min()
            width = int(np.ceil(num_negatives / worst * 1.2 + num_negatives**2 / num_items + 16))
            candidates = rng.integers(0, num_items, (pending.size, width))
            valid = ~seen[(pending - first_user)[:, None], candidates]
            # A repeat within a row is invalid from its second occurrence on (stable sort keeps draw order).
            order = np.argsort(candidates, axis=1, kind="stable")
            ordered = np.take_along_axis(candidates, order, axis=1)
            repeat = np.zeros_like(valid)
            np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
            valid &= ~repeat
            rank = np.cumsum(valid, axis=1)
            done = rank[:, -1] >= num_negatives
            take = valid[done] & (rank[done] <= num_negatives)
            result[pending[done]] = candidates[done][take].reshape(-1, num_negatives)
            pending = pending[~done]
        for user in pending:  # after three unlucky rounds (very unlikely), draw exactly
            exact_draw(user)
    return result


SPLITS = ("leave_one_out", "ratio", "time_ratio", "random")


def split_interactions(data, min_interactions, num_negatives, seed, progress, split="leave_one_out",
                       test_fraction=0.2, validation=False, validation_fraction=0.1):
    """Apply the protocol to raw interactions: de-duplicate, filter, hold out the test (and validation) items, and,
    for leave-one-out, sample each user's test (and validation) negatives.

    ``split``: 'leave_one_out' holds out each user's latest interaction (with ``validation``, the one before it
    too); 'ratio' a random ``test_fraction`` of each user's items (NGCF/LightGCN), 'time_ratio' the latest share;
    with ``validation``, a ``validation_fraction`` of each user's remaining items is held out the same way.
    """
    rng = np.random.default_rng(seed)
    needed = max(min_interactions, 3 if validation and split == "leave_one_out" else 2)
    rows, users, items, counts, user_ids, item_ids, summary = leave_last_out(data, needed, rng, progress)
    num_users, num_items = user_ids.size, item_ids.size
    is_test, is_validation = _held_out_rows(users, counts, rng, split, test_fraction, validation, validation_fraction)
    negatives = validation_negatives = None
    if split == "leave_one_out" and num_negatives:
        _check_negatives_feasible(data, counts, user_ids, num_items, num_negatives)
        negatives = sample_test_negatives(users, items, counts, num_items, num_negatives, rng)
        if validation:
            validation_negatives = sample_test_negatives(users, items, counts, num_items, num_negatives, rng)
        progress(f"sampled {num_negatives} test negatives for each of {num_users:,} users"
                 + (", and as many validation negatives" if validation else ""))
    is_train = ~(is_test | is_validation)
    extra = {}
    for name, values in (("timestamps", data.timestamps), ("ratings", data.ratings)):
        if values is not None:
            for part, chosen in (("train", is_train), ("test", is_test), ("validation", is_validation)):
                if chosen.any():
                    extra[f"{part}_{name}"] = values[rows[chosen]]
    return Split(
        train=np.stack([users[is_train], items[is_train]], 1).astype(np.int32),
        test=np.stack([users[is_test], items[is_test]], 1).astype(np.int32),
        test_negatives=negatives, user_ids=user_ids, item_ids=item_ids, titles=data.titles,
        extra_arrays=extra, counts=summary,
        protocol=_protocol(split, data.timestamps is not None, needed, test_fraction, validation,
                           validation_fraction, num_negatives > 0),
        validation=np.stack([users[is_validation], items[is_validation]], 1).astype(np.int32) if validation
        else None, validation_negatives=validation_negatives)


def split_ratings(data, seed, progress, test_data=None, test_fraction=0.2, validation=False, validation_fraction=0.1,
                  max_words=20000, skip_top=0):
    """The splits of rating prediction, with every rating kept as given: a random ``test_fraction`` of all
    interactions held out (fastai's random split), or, with ``test_data``, that file's rows as the test set
    (MovieLens ``u1.base`` / ``u1.test``), the ids of both files indexed together. A repeated (user, item) pair
    within a file keeps its latest row (by time, then file order). With ``validation``, a random
    ``validation_fraction`` of the training rows is held out. No user or item is dropped and no negatives are drawn;
    a test user or item with no training row keeps its index (a model predicts it from biases and the mean). With
    review text, each part's reviews become word indices over a vocabulary counted on the training reviews alone
    (``max_words`` and ``skip_top``: ``textdata.build_vocabulary``)."""
    rng = np.random.default_rng(seed)
    parts = [data] if test_data is None else [data, test_data]
    file_of = np.concatenate([np.full(part.users.size, number) for number, part in enumerate(parts)])
    user_codes, user_ids = _index_ids(np.concatenate([part.users for part in parts]))
    item_codes, item_ids = _index_ids(np.concatenate([part.items for part in parts]))
    num_rows, num_users, num_items = file_of.size, user_ids.size, item_ids.size
    columns = {}
    for name in ("timestamps", "ratings"):
        if all(getattr(part, name) is not None for part in parts):
            columns[name] = np.concatenate([getattr(part, name) for part in parts])
    progress(f"indexed {num_users:,} users and {num_items:,} items")
    # The latest row of each (file, user, item): sort by pair, then time, then row; keep each pair's last.
    pair = (file_of * num_users + user_codes) * num_items + item_codes
    when = columns["timestamps"] if "timestamps" in columns else np.zeros(num_rows, dtype=np.int64)
    order = np.lexsort((np.arange(num_rows), when, pair))
    last = np.ones(num_rows, dtype=bool)
    last[:-1] = pair[order][1:] != pair[order][:-1]
    kept = np.sort(order[last])
    progress(f"kept the latest of {num_rows - kept.size:,} repeated (user, item) pairs")
    if test_data is None:
        shuffled = rng.permutation(kept)
        num_test = int(np.clip(np.rint(test_fraction * kept.size), 1, kept.size - 1))
        is_test = np.zeros(num_rows, dtype=bool)
        is_test[shuffled[:num_test]] = True
    else:
        is_test = file_of == 1
        if not is_test[kept].any() or is_test[kept].all():
            raise ConversionError(f"{test_data.source.get('path', 'the test file')}: the training or the test file "
                                  "has no rows; pass both files with rows")
    is_validation = np.zeros(num_rows, dtype=bool)
    if validation:
        training = rng.permutation(kept[~is_test[kept]])
        is_validation[training[:int(np.rint(validation_fraction * training.size))]] = True
    by_user = kept[np.argsort(user_codes[kept], kind="stable")]  # rows sorted by user, file order within a user

    def pairs(chosen):
        rows = by_user[chosen[by_user]]
        return np.stack([user_codes[rows], item_codes[rows]], 1).astype(np.int32), rows

    train, train_rows = pairs(~(is_test | is_validation))
    test, test_rows = pairs(is_test)
    held, validation_rows = pairs(is_validation)
    extra = {f"{part}_{name}": values[rows] for name, values in columns.items()
             for part, rows in (("train", train_rows), ("test", test_rows), ("validation", validation_rows))
             if rows.size}
    vocabulary = None
    if all(part.texts is not None for part in parts):
        texts = np.concatenate([part.texts for part in parts])
        vocabulary, text_arrays = _encode_texts(texts, {"train": train_rows, "test": test_rows,
                                                        "validation": validation_rows}, max_words, skip_top, progress)
        extra |= text_arrays
    unseen = np.setdiff1d(test[:, 0], train[:, 0]).size
    summary = {"input_rows": int(num_rows), "duplicates_dropped": int(num_rows - kept.size), "users_dropped": 0,
               "interactions_of_dropped_users": 0, "items_dropped": 0, "test_users_without_training": int(unseen)}
    if test_data is None:
        text = f"random: {test_fraction:g} of all interactions drawn with the seed are test interactions"
    else:
        text = f"test file: the rows of {test_data.source.get('path', 'the test file')} are the test interactions"
    text += f"; then {validation_fraction:g} of the rest drawn as validation" if validation else ""
    protocol = {"split": text, "name": "random" if test_data is None else "test_file",
                "duplicates": "repeated (user, item) pairs within a file: the latest row kept, its rating as given",
                "min_interactions": 1, "validation": bool(validation)}
    if vocabulary is not None:
        protocol["text"] = {"tokens": "lower case, runs of letters and digits", "vocabulary": "the training reviews'",
                            "max_words": max_words, "skip_top": skip_top}
    return Split(train=train, test=test, test_negatives=None, user_ids=user_ids, item_ids=item_ids,
                 titles={**(test_data.titles if test_data is not None else {}), **data.titles}, extra_arrays=extra,
                 counts=summary, protocol=protocol, validation=held if validation else None, vocabulary=vocabulary)


def _encode_texts(texts, rows_of, max_words, skip_top, progress):
    """((words, counts), {part_text, part_text_offsets: arrays}): the vocabulary of the training reviews, and every
    part's reviews as word indices over it."""
    tokens = {part: [textdata.tokenise(texts[row]) for row in rows] for part, rows in rows_of.items() if rows.size}
    words, counts = textdata.build_vocabulary(tokens["train"], max_words, skip_top)
    index = {word: number for number, word in enumerate(words)}
    arrays, empty = {}, 0
    for part, part_tokens in tokens.items():
        arrays[f"{part}_text"], arrays[f"{part}_text_offsets"] = textdata.encode(part_tokens, index)
        empty += int((np.diff(arrays[f"{part}_text_offsets"]) == 0).sum())
    progress(f"kept {len(words):,} words of the training reviews; {empty:,} of {sum(map(len, tokens.values())):,} "
             "reviews have none of them")
    return (words, counts), arrays


def _held_out_rows(users, counts, rng, split, test_fraction, validation, validation_fraction):
    """(is_test, is_validation) bool masks over the rows (sorted by user, then time)."""
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    per_user = counts[users]
    if split == "ratio":  # a random order within each user, drawn with the seed
        order = np.lexsort((rng.random(users.size), users))
        position = np.empty(users.size, dtype=np.int64)
        position[order] = np.arange(users.size) - starts[users[order]]
        from_end = per_user - 1 - position
    else:  # the latest first
        from_end = per_user - 1 - (np.arange(users.size) - starts[users])
    if split == "leave_one_out":
        return from_end == 0, (from_end == 1) & validation
    num_test = np.clip(np.rint(test_fraction * counts), 1, counts - 1)
    num_validation = np.clip(np.rint(validation_fraction * (counts - num_test)), 0, counts - num_test - 1) \
        if validation else np.zeros_like(counts)
    is_test = from_end < num_test[users]
    return is_test, ~is_test & (from_end < (num_test + num_validation)[users])


def _check_negatives_feasible(data, counts, user_ids, num_items, num_negatives):
    most = int(counts.max())
    if num_items - most < num_negatives:
        heaviest = user_ids[int(np.argmax(counts))]
        feasible = num_items - most
        raise ConversionError(
            f"{data.source.get('path', 'input')}: cannot draw {num_negatives} test negatives for user {heaviest}, "
            f"who interacted with {most:,} of the {num_items:,} items; pass --valid_negative {max(feasible, 0)} or less"
            + (" (or --min_interactions to drop such users)" if feasible < 1 else ""))


def _protocol(split, timed, min_interactions, test_fraction, validation, validation_fraction, test_negatives=True):
    """The metadata's description of a split."""
    if split == "leave_one_out":
        text = ("leave-one-out by time: each user's latest interaction is the test item; ties in time go to the row "
                "that comes later in the input" if timed else
                "leave-one-out at random (the input has no time column): the test item is drawn with the seed")
        text += "; the one before it is the validation item" if validation else ""
    else:
        which = "latest" if split == "time_ratio" and timed else "random"
        text = (f"{split}: the {which} {test_fraction:g} of each user's items (at least one, and one left to train) "
                "are test items" + (f"; then the {which} {validation_fraction:g} of the rest validation items"
                                    if validation else ""))
    protocol = {"split": text, "name": split, "duplicates": "repeated (user, item) pairs dropped, the earliest kept",
                "min_interactions": min_interactions, "validation": bool(validation)}
    if split == "leave_one_out" and test_negatives:
        protocol["test_negatives"] = "uniform without repeats among items the user never interacted with"
    return protocol


# ------------------------------------------------------------------------------------------------------ output


def _id_table(ids, titles=None):
    table = pd.DataFrame({"index": np.arange(len(ids)), "original_id": ids})
    if titles:
        table["title"] = [titles.get(key, "") for key in ids.tolist()]
    return table


def _prepare_output(output, force, source=None):
    """Refuse an existing output without --force, one --force must not replace, and an unwritable place; clean the
    leftovers of killed conversions; returns (staging dir, parent)."""
    output = Path(output)
    _clean_leftovers(output.absolute())
    if output.exists() and not force:
        raise ConversionError(f"{output}: already exists; pass --force to replace it")
    if output.exists() and not output.is_dir():
        raise ConversionError(f"{output}: exists and is not a directory")
    if source is not None and Path(output).resolve() in (Path(source).resolve(), *Path(source).resolve().parents):
        raise ConversionError(f"{output}: holds the input --path {source}, which replacing it would delete; choose "
                              "another --output")
    if output.exists() and not (output / "metadata.json").is_file():
        raise ConversionError(f"{output}: is not a dataset written by convert.py (no metadata.json), and --force "
                              "only replaces those; choose another --output, or remove it yourself")
    parent = output.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-{os.getpid()}-", dir=parent)), parent
    except OSError as error:
        raise ConversionError(f"{output}: cannot write here ({error.strerror}); choose another --output") from None


def _clean_leftovers(output):
    """Remove what a killed conversion of ``output`` left beside it: its half-built ``.partial-PID`` folder, and
    its ``.old-PID`` backup of the dataset it was replacing, put back in place when the new one never arrived."""
    for leftover in output.parent.glob(f".{output.name}.*-*"):
        match = re.fullmatch(rf"\.{re.escape(output.name)}\.(partial|old)-(\d+)(-\w+)?", leftover.name)
        if not match or not leftover.is_dir() or _process_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not output.exists():
            leftover.rename(output)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output(output, force, source=None):
    """Fail fast, before a long conversion, when the output could not or must not be written."""
    staging, _ = _prepare_output(output, force, source)
    staging.rmdir()


def write_dataset(split, output, source, seed, force, progress):
    """Write the dataset directory atomically: build it beside the target, then rename it into place."""
    output = Path(output)
    staging, parent = _prepare_output(output, force)
    try:
        arrays = {"train": split.train, "test": split.test, "test_negatives": split.test_negatives,
                  "validation": split.validation, "validation_negatives": split.validation_negatives,
                  **split.extra_arrays}
        arrays = {name: array for name, array in arrays.items() if array is not None}
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", array, allow_pickle=False)
        _id_table(split.user_ids).to_csv(staging / "users.csv", index=False)
        _id_table(split.item_ids, split.titles).to_csv(staging / "items.csv", index=False)
        if split.vocabulary is not None:
            textdata.write_vocabulary(staging / "vocab.csv", *split.vocabulary)
        metadata = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "num_users": int(split.user_ids.size),
            "num_items": int(split.item_ids.size),
            "num_train": int(split.train.shape[0]),
            "num_test_users": int(np.unique(split.test[:, 0]).size),
            "num_test": int(split.test.shape[0]),
            "num_validation": 0 if split.validation is None else int(split.validation.shape[0]),
            **({} if split.vocabulary is None else {"vocabulary_size": len(split.vocabulary[0])}),
            "test_negatives": 0 if split.test_negatives is None else int(split.test_negatives.shape[1]),
            "protocol": split.protocol,
            "counts": split.counts,
            "seed": seed,
            "arrays": {name: {"shape": list(array.shape), "dtype": str(array.dtype)} for name, array in arrays.items()},
            "fingerprint": split_fingerprint(split.train, split.test, split.test_negatives, split.validation,
                                             split.validation_negatives),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        umask = os.umask(0)  # read it back at once: mkdtemp made the folder 0700, a dataset is as any new folder
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        if output.exists():
            backup = parent / f".{output.name}.old-{os.getpid()}"
            output.rename(backup)
            staging.rename(output)
            shutil.rmtree(backup)
        else:
            staging.rename(output)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConversionError(f"{output}: cannot write the dataset ({error.strerror or error})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"wrote {output}")
    return metadata


# --------------------------------------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert raw interaction logs into an ncf dataset directory (train/test split, test "
                    "negatives, id maps). The input format is detected from the file name and first line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--path", help="input file (or a directory holding u.data, ratings.dat, ratings.csv or the "
                                       "NCF paper's PREFIX.train.rating/.test.rating/.test.negative)")
    source.add_argument("--dataset", choices=["demo"], help="a built-in dataset: 'demo' is a small synthetic set "
                                                            "with planted structure, deterministic in --seed")
    source.add_argument("--synthetic", nargs=3, type=int, metavar=("USERS", "ITEMS", "INTERACTIONS"),
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
    parser.add_argument("--max_words", type=int, default=20000,
                        help="vocabulary size: the most common words of the training reviews kept")
    parser.add_argument("--skip_top", type=int, default=0,
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
    parser.add_argument("--test_fraction", type=float, default=0.2,
                        help="with --split ratio or time_ratio: the share of each user's items held out for test "
                             "(at least one, and at least one left to train)")
    parser.add_argument("--validation", action="store_true",
                        help="also hold out a validation set, on which ncf.py chooses its best epoch: with "
                             "leave_one_out each user's second latest interaction (with its own negatives; users "
                             "then need 3 interactions), with the ratio splits --validation_fraction of the items "
                             "left after the test items")
    parser.add_argument("--validation_fraction", type=float, default=0.1,
                        help="with --validation and a ratio split: the share of each user's remaining items held "
                             "out for validation")
    parser.add_argument("--valid_negative", type=int, default=100,
                        help="test negatives drawn per user with leave_one_out (ignored for the NCF files, which "
                             "carry their own); 0: none, for rating prediction or full ranking only")
    parser.add_argument("--min_interactions", type=int, default=2,
                        help="drop users with fewer distinct interactions than this (at least 2: one to test, one "
                             "to train)")
    parser.add_argument("--seed", type=int, default=0, help="seed for negatives, ties without time, synthetic data")
    parser.add_argument("--force", action="store_true", help="replace an existing --output directory")
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")
    args = parser.parse_args(argv)
    if args.valid_negative < 0:
        parser.error("--valid_negative must be 0 (no negatives) or more")
    if args.max_words < 1 or args.skip_top < 0:
        parser.error(f"--max_words must be at least 1 and --skip_top 0 or more, got {args.max_words} and "
                     f"{args.skip_top}")
    if args.test_path and (not args.path or args.split != "leave_one_out"):
        parser.error("--test_path goes with --path (its training file) and no --split: the test file is the split")
    for flag, value in (("--test_fraction", args.test_fraction), ("--validation_fraction", args.validation_fraction)):
        if not 0 < value < 1:
            parser.error(f"{flag} must be between 0 and 1, got {value}")
    if args.min_interactions < 2:
        parser.error("--min_interactions must be at least 2 (each user needs a test item and a training item)")
    if args.synthetic and min(args.synthetic) < 1:
        parser.error("--synthetic USERS ITEMS INTERACTIONS must all be positive")
    return args


def generated_interactions(shape=None, seed=0):
    """The built-in demo (``shape`` None) or a synthetic set of ``shape`` (users, items, interactions), as
    Interactions; deterministic in ``seed``."""
    sizes = DEMO_SHAPE if shape is None else dict(zip(("num_users", "num_items", "num_interactions"), shape))
    try:
        rows = synthetic_interactions(**sizes, seed=seed)
    except ValueError as error:
        raise ConversionError(f"--synthetic: {error}") from None
    return Interactions(users=rows["user"], items=rows["item"], timestamps=rows["timestamp"], ratings=rows["rating"],
                        source={"format": "demo" if shape is None else "synthetic", **sizes, "seed": seed})


def generated_split(shape=None, seed=0, num_negatives=100):
    """``generated_interactions`` split as ``convert.py --dataset demo`` (or ``--synthetic``) splits it, in memory:
    the built-in demo of ``ncf.py`` and the synthetic sets of the benchmarks."""
    quiet = Progress(quiet=True)
    return split_interactions(generated_interactions(shape, seed), 2, num_negatives, seed, quiet)


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
    if not path.exists() and not _ncf_prefix_exists(path):
        raise ConversionError(f"{path}: no such file or directory; check --{'test_path' if test_file else 'path'}")
    fmt = args.format or detect_format(Path(args.path))
    if test_file and (path.is_dir() or fmt in ("ncf", "lightgcn")):
        raise ConversionError(f"{path}: --test_path takes one file of --path's format, not {fmt} files or a folder")
    if path.is_dir() and fmt not in ("ncf", "lightgcn"):
        path = path / {fmt_: name for name, fmt_ in FILE_NAMES.items()}.get(fmt, "")
        if not path.is_file():
            raise ConversionError(f"{args.path}: is a directory; pass the ratings file itself with --path")
    readers = {
        "movielens-100k": read_movielens_100k, "movielens-1m": read_movielens_1m,
        "movielens-20m": read_movielens_csv, "ncf": read_ncf, "lightgcn": read_lightgcn,
        "csv": lambda p: read_delimited(p, columns, args.sep, args.header),
        "parquet": lambda p: read_parquet(p, columns), "amazon": lambda p: read_amazon(p, columns),
    }
    progress(f"reading {path} as {fmt}")
    data = readers[fmt](path)
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
    if metadata.get("num_validation"):
        lines.insert(-1, f"  validation        {metadata['num_validation']:,} held-out items")
    if "vocabulary_size" in metadata:
        lines.insert(-1, f"  review text       {metadata['vocabulary_size']:,} words in vocab.csv, from the training "
                         "reviews")
    if counts.get("given_negatives_equal_to_test_item"):
        lines.append(f"  note              {counts['given_negatives_equal_to_test_item']} given negatives equal the "
                     "user's test item; evaluation ignores them")
    print("\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    progress = Progress(args.quiet)
    try:
        check_output(args.output, args.force, args.path)
        data = load_interactions(args, progress)
        if isinstance(data, Split):
            if args.validation or args.split != "leave_one_out":
                raise ConversionError(f"{args.path}: these files come split (the NCF paper's or NGCF's); their split "
                                      "is used as given, so drop --split and --validation")
            split = data
            source = {"format": split.protocol.get("format", "ncf"), "path": str(args.path)}
        elif args.test_path or args.split == "random":
            test_data = load_interactions(args, progress, test_file=True) if args.test_path else None
            split = split_ratings(data, args.seed, progress, test_data, args.test_fraction, args.validation,
                                  args.validation_fraction, args.max_words, args.skip_top)
            source = {**data.source, **({"test_path": str(args.test_path)} if args.test_path else {})}
        else:
            if data.texts is not None:
                progress("review text is kept by the rating splits only (--split random or --test_path); left out")
            split = split_interactions(data, args.min_interactions, args.valid_negative, args.seed, progress,
                                       args.split, args.test_fraction, args.validation, args.validation_fraction)
            source = data.source
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
