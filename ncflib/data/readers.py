"""Input formats: raw interaction logs -> ``Interactions`` (original ids, optional time, rating, titles, text).

MovieLens 100K-32M, delimited text (CSV/TSV, with or without a header), Parquet, Amazon review JSON lines (with
text), the NCF paper's .train/.test files and LightGCN's train.txt/test.txt (those two come split already: their
readers return a finished ``splits.Split``). Every problem is a one-line ConversionError naming the file and line.

    data = read(Path("ml-100k/u.data"), detect_format(Path("ml-100k/u.data")))
"""

import gzip
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ncflib.data.splits import Interactions, Split, cold_counts, index_ids
from ncflib.errors import ConversionError

FORMATS = ("movielens-100k", "movielens-1m", "movielens-20m", "csv", "parquet", "amazon", "ncf", "lightgcn")
# Column names recognised in files with a header when --user_col/--item_col/... are not given, in order of preference.
USER_NAMES = ("user_id", "userid", "user", "reviewerid", "visitorid", "customer_id", "uid")
ITEM_NAMES = ("item_id", "itemid", "item", "movieid", "artistid", "asin", "product_id", "productid", "iid")
TIME_NAMES = ("timestamp", "time", "unixreviewtime", "ts", "datetime", "date")
RATING_NAMES = ("rating", "weight", "overall", "score", "count")
NCF_SUFFIXES = (".train.rating", ".test.rating", ".test.negative")
FILE_NAMES = {"u.data": "movielens-100k", "ratings.dat": "movielens-1m", "ratings.csv": "movielens-20m"}


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
    if name.endswith(NCF_SUFFIXES) or ncf_prefix_exists(path):
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


def ncf_prefix_exists(path):
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
        raise ConversionError(f"{path}: line {row + first_data_line}: {name} {numbers[row]:g} is not an integer")
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
    for name in ("user", "item"):
        negative = (frame[name] < 0).to_numpy()
        if negative.any():  # MovieLens numbers users and items from 1: a damaged file, or not MovieLens
            row = int(np.argmax(negative))
            raise ConversionError(f"{path}: line {row + first_data_line}: {name} id {frame[name].iloc[row]} is "
                                  f"negative, and {fmt} ids are positive; fix the row, or read the file with "
                                  "--format csv (ids as labels)")
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


def _to_timestamps(values, name, path, first_data_line, notes):
    """Numeric times as whole seconds (a fraction dropped, said in ``notes``); date/time strings as Unix seconds;
    anything else (true/false too) is an error naming the line."""
    series = pd.Series(values)
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series):
        missing = series.isna().to_numpy()  # (NaT would read as the smallest int64)
        if missing.any():
            raise ConversionError(f"{path}: line {int(np.argmax(missing)) + first_data_line}: missing {name}")
    if pd.api.types.is_bool_dtype(series):
        raise ConversionError(f"{path}: line {first_data_line}: {name} {series.iloc[0]} is true/false, not a time; "
                              "pass the time column with --time_col")
    numbers = series if pd.api.types.is_numeric_dtype(series) else pd.to_numeric(series, errors="coerce")
    if numbers.notna().all():
        values = numbers.to_numpy()
        outside = ~(np.abs(values.astype(np.float64)) < 2.0**62)  # inf, NaN and beyond int64 (which wrap silently)
        if outside.any():
            row = int(np.argmax(outside))
            raise ConversionError(f"{path}: line {row + first_data_line}: {name} {values[row]} is not a usable time "
                                  "(infinite or out of range); fix or drop the row")
        whole = np.floor(values.astype(np.float64))
        fractional = int((whole != values).sum())
        if fractional:  # ordered by the whole seconds: rows within one second keep their file order
            notes.append(f"{fractional:,} times have a fraction of a second, dropped (rounded down): rows within "
                         "one second keep their file order")
        return whole.astype(np.int64)
    dates = pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
    if dates.notna().all():
        return (dates - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    if dates.notna().any() and numbers.isna().any():  # dates, some malformed: name the first that is not one
        row = int(np.argmax(dates.isna().to_numpy()))
        value = series.iloc[row]
        if pd.isna(value) or str(value).strip() == "":
            raise ConversionError(f"{path}: line {row + first_data_line}: missing {name}")
        if pd.notna(numbers.iloc[row]):  # a number (a Unix time, say) among dates: both valid, but not together
            dated = int(np.argmax(dates.notna().to_numpy()))
            raise ConversionError(f"{path}: line {row + first_data_line}: {name} {str(value)[:40]!r} is a number, "
                                  f"while line {dated + first_data_line} holds an ISO 8601 date ("
                                  f"{str(series.iloc[dated])[:40]!r}); write every {name} in one of the two forms")
        raise ConversionError(f"{path}: line {row + first_data_line}: {name} {str(value)[:40]!r} is neither a number "
                              "nor an ISO 8601 date and time")
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
    notes = []
    timestamps = None if when is None else _to_timestamps(frame[when], f"time (column {when!r})", path,
                                                          first_data_line, notes)
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
                                                               **({} if text is None else {"text": text})},
                **({"notes": notes} if notes else {})},
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
    rows, fields = [], set()
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
                fields.update(record)
    except (OSError, EOFError) as error:
        raise ConversionError(f"{path}: cannot read ({error})") from None
    if not rows:
        raise ConversionError(f"{path}: file holds no interactions")
    for key, given in columns.items():  # a field no record has would convert as all-missing, silently
        for name in [given] if isinstance(given, str) else given or []:
            if str(name) not in fields:
                raise ConversionError(f"{path}: no record has the field {name!r} for --{key}_col; fields are: "
                                      f"{', '.join(sorted(fields)[:12])}")
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


def _lightgcn_lines(file):
    """(users, items) int64 arrays of a file of ``user item item ...`` lines (0-based integer ids)."""
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
    return np.array(users, dtype=np.int64), np.array(items, dtype=np.int64)


def read_lightgcn_training(path):
    """New training pairs for a dataset made from NGCF/LightGCN files (``convert.py --update``): one file of
    ``user item item ...`` lines, as their ``train.txt``; Interactions (the test set stays the dataset's)."""
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"{path}: is a folder; an update of a dataset made from NGCF/LightGCN files takes one "
                              "file of new training lines ('user item item ...'), as its train.txt; the test set "
                              "stays the dataset's")
    users, items = _lightgcn_lines(path)
    if not users.size:
        raise ConversionError(f"{path}: no 'user item item ...' line with an item; pass the new training pairs")
    return Interactions(users=users, items=items, source={"path": str(path), "format": "lightgcn"})


def read_lightgcn(path):
    """NGCF/LightGCN's ``train.txt`` and ``test.txt`` (a line per user: ``user item item ...``, 0-based ids), as
    Gowalla, Yelp2018 and Amazon-Book are published. Their split is used as given; returns a finished Split for
    full-ranking evaluation (no sampled negatives). Ids are indexed in numeric order, so contiguous ids keep their
    values."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    parts = {}
    for name in ("train", "test"):
        parts[name] = _lightgcn_lines(folder / f"{name}.txt")
    user_codes, user_ids = index_ids(np.concatenate([parts["train"][0], parts["test"][0]]))
    item_codes, item_ids = index_ids(np.concatenate([parts["train"][1], parts["test"][1]]))
    size = parts["train"][0].size
    pairs = {"train": np.stack([user_codes[:size], item_codes[:size]], 1),
             "test": np.stack([user_codes[size:], item_codes[size:]], 1)}
    for name in pairs:  # sorted by user, repeated pairs dropped
        pairs[name] = np.unique(pairs[name], axis=0).astype(np.int32)
    duplicates = int(user_codes.size - sum(part.shape[0] for part in pairs.values()))
    # A test pair that is also a training pair can never be hit (full ranking leaves a user's training items out):
    # dropped from the test set, and counted.
    keys = {name: part[:, 0].astype(np.int64) * item_ids.size + part[:, 1] for name, part in pairs.items()}
    also_trained = np.isin(keys["test"], keys["train"])
    pairs["test"] = pairs["test"][~also_trained]
    if not pairs["test"].size:
        raise ConversionError(f"{folder / 'test.txt'}: every test pair is also a training pair, so nothing is left to "
                              "test; check that train.txt and test.txt are the two parts of one split")
    return Split(train=pairs["train"], test=pairs["test"], test_negatives=None, user_ids=user_ids, item_ids=item_ids,
                 counts={"input_rows": int(user_codes.size), "users_dropped": 0,
                         "test_pairs_also_in_train_dropped": int(also_trained.sum()), "duplicates_dropped": duplicates,
                         **cold_counts(pairs["train"], pairs["test"])},
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
        protocol={"split": "as given by the NCF files", "name": "given", "format": "ncf",
                  "test_negatives": "as given by the NCF files"},
    )


def read(path, fmt, columns=None, sep="auto", header="auto"):
    """Read ``path`` as ``fmt`` (one of FORMATS): Interactions, or a finished Split for the NCF and LightGCN files.
    ``columns`` {user, item, time, rating, text: name or None} picks the columns of delimited, Parquet and Amazon
    input; ``sep`` and ``header`` those of delimited text."""
    columns = columns or {}
    readers = {
        "movielens-100k": read_movielens_100k, "movielens-1m": read_movielens_1m,
        "movielens-20m": read_movielens_csv, "ncf": read_ncf, "lightgcn": read_lightgcn,
        "csv": lambda p: read_delimited(p, columns, sep, header),
        "parquet": lambda p: read_parquet(p, columns), "amazon": lambda p: read_amazon(p, columns),
    }
    return readers[fmt](path)
