"""convert.py: every input format from tiny fixtures, the split protocol's invariants, bad input, real counts."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import convert
import dataloading
from conftest import load_output, run_convert, shared_file
from ncflib import evaluation
from ncflib.data import readers, splits

# What the tiny_log fixture must become (original ids): test items by user and the training pairs.
ROOT = Path(__file__).resolve().parents[1]
EXPECTED_TEST = {10: 102, 11: 103, 12: 105, 14: 103}
EXPECTED_TRAIN = {(10, 100), (10, 101), (11, 100), (12, 104), (14, 105), (14, 102)}


def as_original(directory):
    """Train pairs and test items of a written dataset, in the original ids."""
    metadata, arrays = load_output(directory)
    users = pd.read_csv(directory / "users.csv")["original_id"].to_numpy()
    items = pd.read_csv(directory / "items.csv")["original_id"].to_numpy()
    train = {(users[u], items[i]) for u, i in arrays["train"]}
    test = {users[u]: items[i] for u, i in arrays["test"]}
    return metadata, arrays, train, test


def write_lines(path, lines, encoding="utf-8"):
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)
    return path


# ------------------------------------------------------------------------------------------------ every format


def write_u_data(folder, rows):
    write_lines(folder / "u.data", ["\t".join(map(str, row)) for row in rows])
    write_lines(folder / "u.item", [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|0|1" for i in range(100, 106)],
                encoding="latin-1")
    return folder / "u.data"


def write_ratings_dat(folder, rows):
    write_lines(folder / "ratings.dat", ["::".join(map(str, row)) for row in rows])
    write_lines(folder / "movies.dat", [f"{i}::Film {i} (Caf\xe9)::Drama" for i in range(100, 106)],
                encoding="latin-1")
    return folder / "ratings.dat"


def write_ratings_csv(folder, rows):
    write_lines(folder / "ratings.csv", ["userId,movieId,rating,timestamp"] + [",".join(map(str, r)) for r in rows])
    write_lines(folder / "movies.csv", ["movieId,title,genres"] + [f'{i},"Title, {i}",Drama' for i in range(100, 106)])
    return folder / "ratings.csv"


def write_generic_tsv_no_header(folder, rows):
    return write_lines(folder / "log.tsv", ["\t".join(map(str, (u, i, t))) for u, i, _, t in rows])


def write_generic_csv_header(folder, rows):
    lines = ["when;who;what"] + [f"{t};u{u};item-{i}" for u, i, _, t in rows]
    return write_lines(folder / "events.txt", lines)


def write_parquet(folder, rows):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    path = folder / "log.parquet"
    frame.to_parquet(path)
    return path


def write_amazon(folder, rows, compress=True):
    lines = [json.dumps({"overall": float(r), "reviewerID": f"A{u}", "asin": f"B{i:08d}", "unixReviewTime": t,
                         "reviewText": "fine"}) for u, i, r, t in rows]
    path = folder / ("reviews.json.gz" if compress else "reviews.json")
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


FORMATS = {
    "movielens-100k": (write_u_data, [], "Movie 102 (1995)"),
    "movielens-1m": (write_ratings_dat, [], "Film 102 (Caf\xe9)"),
    "movielens-20m": (write_ratings_csv, [], "Title, 102"),
    "tsv-no-header": (write_generic_tsv_no_header, ["--time_col", "2"], None),
    "csv-header-named-columns": (write_generic_csv_header, ["--user_col", "who", "--item_col", "what",
                                                            "--time_col", "when"], None),
    "parquet": (write_parquet, [], None),
    "amazon-gz": (write_amazon, [], None),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_gives_the_same_split(tmp_path, tiny_log, name):
    writer, extra, title = FORMATS[name]
    path = writer(tmp_path, tiny_log)
    assert run_convert(["--path", path, "--output", tmp_path / "out", "--valid_negative", "2", *extra])[0] == 0
    metadata, arrays, train, test = as_original(tmp_path / "out")

    def plain(value):  # the generic formats keep ids as labels ("u10", "item-100", "B00000100")
        return int("".join(ch for ch in str(value) if ch.isdigit()))

    assert {plain(u): plain(i) for u, i in test.items()} == EXPECTED_TEST
    assert {(plain(u), plain(i)) for u, i in train} == EXPECTED_TRAIN
    assert metadata["num_users"] == 4 and metadata["num_items"] == 6
    assert metadata["counts"]["duplicates_dropped"] == 1 and metadata["counts"]["users_dropped"] == 1
    assert arrays["test_negatives"].shape == (4, 2)
    if title:
        items = pd.read_csv(tmp_path / "out" / "items.csv", keep_default_na=False)
        assert items.set_index("original_id").loc[102, "title"] == title


def test_format_is_detected_from_name_and_content(tmp_path, tiny_log):
    assert readers.detect_format(write_u_data(tmp_path, tiny_log)) == "movielens-100k"
    assert readers.detect_format(write_ratings_dat(tmp_path, tiny_log)) == "movielens-1m"
    assert readers.detect_format(write_ratings_csv(tmp_path, tiny_log)) == "movielens-20m"
    assert readers.detect_format(write_amazon(tmp_path, tiny_log, compress=False)) == "amazon"
    assert readers.detect_format(write_parquet(tmp_path, tiny_log)) == "parquet"
    assert readers.detect_format(write_generic_tsv_no_header(tmp_path, tiny_log)) == "csv"
    assert readers.detect_format(tmp_path) == "movielens-100k"  # a folder holding u.data


def test_amazon_plain_json_lines(tmp_path, tiny_log):
    path = write_amazon(tmp_path, tiny_log, compress=False)
    assert run_convert(["--path", path, "--output", tmp_path / "out", "--valid_negative", "2"])[0] == 0
    metadata, arrays, _, test = as_original(tmp_path / "out")
    assert test["A12"] == "B00000105"
    assert metadata["source"]["format"] == "amazon"
    assert arrays["train_ratings"].dtype == np.float32


def write_ncf_files(folder):
    """A 3-user NCF-style set: 0-based ids, one test row per user, 3 negatives each (one equals the test item)."""
    write_lines(folder / "toy.train.rating", ["0\t1\t5\t10", "0\t2\t3\t11", "1\t0\t4\t12", "2\t3\t1\t13",
                                              "2\t3\t1\t14"])
    write_lines(folder / "toy.test.rating", ["0\t3\t5\t20", "1\t4\t2\t21", "2\t0\t3\t22"])
    write_lines(folder / "toy.test.negative", ["(0,3)\t0\t4\t5", "(1,4)\t1\t2\t4", "(2,0)\t1\t2\t5"])


def test_ncf_paper_files_are_used_as_given(tmp_path):
    write_ncf_files(tmp_path)
    assert run_convert(["--path", tmp_path / "toy", "--output", tmp_path / "out"])[0] == 0
    metadata, arrays = load_output(tmp_path / "out")
    assert arrays["test"].tolist() == [[0, 3], [1, 4], [2, 0]]
    assert arrays["test_negatives"].tolist() == [[0, 4, 5], [1, 2, 4], [1, 2, 5]]
    assert sorted(map(tuple, arrays["train"].tolist())) == [(0, 1), (0, 2), (1, 0), (2, 3)]
    assert metadata["num_items"] == 6 and metadata["test_negatives"] == 3
    assert metadata["counts"]["given_negatives_equal_to_test_item"] == 1
    # The same files found through the folder or through any one of the three names.
    for path in (tmp_path, tmp_path / "toy.test.negative"):
        assert run_convert(["--path", path, "--output", tmp_path / "again", "--force"])[0] == 0
        assert np.array_equal(load_output(tmp_path / "again")[1]["test"], arrays["test"])


def test_ncf_mismatched_negative_file_is_refused(tmp_path, capsys):
    write_ncf_files(tmp_path)
    write_lines(tmp_path / "toy.test.negative", ["(0,3)\t0\t4\t5", "(1,1)\t1\t2\t4", "(2,0)\t1\t2\t5"])
    code, err = run_convert(["--path", tmp_path / "toy", "--output", tmp_path / "out"], capsys)
    assert code == 1 and "do not match" in err and not (tmp_path / "out").exists()


def test_demo_and_synthetic_are_deterministic(tmp_path):
    for run in ("a", "b"):
        assert run_convert(["--dataset", "demo", "--output", tmp_path / run])[0] == 0
    first, second = load_output(tmp_path / "a")[1], load_output(tmp_path / "b")[1]
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[name], second[name]) for name in first)
    assert run_convert(["--synthetic", "300", "200", "6000", "--output", tmp_path / "s", "--seed", "3"])[0] == 0
    metadata, _ = load_output(tmp_path / "s")
    assert metadata["num_users"] == 300 and metadata["num_test_users"] == 300
    assert 5500 < metadata["num_train"] + metadata["num_test_users"] <= 6000


def test_without_time_column_the_held_out_item_is_seeded(tmp_path, capsys):
    rows = [f"{u},{i}" for u in range(20) for i in range(u % 5, u % 5 + 6)]
    path = write_lines(tmp_path / "pairs.csv", ["user,item"] + rows)
    tests = []
    for seed in ("1", "1", "2"):
        out = tmp_path / f"out{len(tests)}"
        assert run_convert(["--path", path, "--output", out, "--seed", seed, "--valid_negative", "4"])[0] == 0
        metadata, arrays = load_output(out)
        tests.append(arrays["test"][:, 1].tolist())
    assert "at random" in metadata["protocol"]["split"]
    assert tests[0] == tests[1] and tests[0] != tests[2]


# -------------------------------------------------------------------------------------------------- invariants


@pytest.fixture(scope="module")
def random_log(tmp_path_factory):
    """A random log with repeats and time ties, converted once; returns (raw frame, output directory)."""
    rng = np.random.default_rng(7)
    count = 6000
    frame = pd.DataFrame({"userId": rng.integers(1, 301, count), "movieId": rng.integers(1, 401, count),
                          "rating": rng.integers(1, 6, count), "timestamp": rng.integers(0, 2000, count)})
    folder = tmp_path_factory.mktemp("random")
    frame.to_csv(folder / "ratings.csv", index=False)
    assert run_convert(["--path", folder / "ratings.csv", "--output", folder / "out", "--seed", "5"])[0] == 0
    return frame, folder / "out"


def test_one_test_item_per_user_and_it_is_the_latest(random_log):
    frame, out = random_log
    metadata, arrays, _, test = as_original(out)
    assert arrays["test"][:, 0].tolist() == list(range(metadata["num_users"]))
    # Rows in time order, ties in file order; a repeated pair keeps its earliest row; the last row left is the test.
    ordered = frame.sort_values("timestamp", kind="stable")
    for user, rows in ordered.groupby("userId"):
        unique = rows.drop_duplicates("movieId", keep="first")
        if len(unique) < 2:
            assert user not in test
            continue
        assert test[user] == unique["movieId"].iloc[-1]


def test_train_and_test_partition_the_deduplicated_input(random_log):
    frame, out = random_log
    _, arrays, train, test = as_original(out)
    kept_users = set(test)
    expected = {pair for pair in zip(frame["userId"], frame["movieId"]) if pair[0] in kept_users}
    test_pairs = set(test.items())
    assert train | test_pairs == expected
    assert not train & test_pairs
    assert len(arrays["train"]) == len(train)  # no repeated pair left in train


def test_negatives_are_distinct_in_range_and_never_positive(random_log):
    frame, out = random_log
    metadata, arrays = load_output(out)
    negatives = arrays["test_negatives"]
    assert negatives.shape == (metadata["num_users"], 100)
    assert negatives.min() >= 0 and negatives.max() < metadata["num_items"]
    assert all(len(set(row)) == len(row) for row in negatives.tolist())
    positives = {(u, i) for u, i in np.concatenate([arrays["train"], arrays["test"]]).tolist()}
    assert not any((user, item) in positives for user, row in enumerate(negatives.tolist()) for item in row)


def test_negative_sampler_handles_users_with_most_items(tmp_path):
    # Users who interacted with 90% of the items take the exact path; the rest the vectorised one.
    rng = np.random.default_rng(0)
    num_items, dense_users = 50, 3
    users, items = [], []
    for user in range(10):
        chosen = rng.choice(num_items, 45 if user < dense_users else 5, replace=False)
        users += [user] * chosen.size
        items += sorted(chosen.tolist())
    users, items = np.array(users), np.array(items)
    counts = np.bincount(users)
    negatives = splits.sample_test_negatives(users, items, counts, num_items, 5, np.random.default_rng(1),
                                              chunk_users=4)
    for user in range(10):
        assert len(set(negatives[user])) == 5
        assert not set(negatives[user]) & set(items[users == user])


def test_same_seed_same_output_different_seed_different_negatives(random_log, tmp_path):
    frame, out = random_log
    path = out.parent / "ratings.csv"
    assert run_convert(["--path", path, "--output", tmp_path / "same", "--seed", "5"])[0] == 0
    assert run_convert(["--path", path, "--output", tmp_path / "other", "--seed", "6"])[0] == 0
    first, same, other = (load_output(d)[1] for d in (out, tmp_path / "same", tmp_path / "other"))
    assert all(np.array_equal(first[name], same[name]) for name in first)
    assert np.array_equal(first["train"], other["train"])
    assert not np.array_equal(first["test_negatives"], other["test_negatives"])
    assert load_output(out)[0]["fingerprint"] == load_output(tmp_path / "same")[0]["fingerprint"]


def test_min_interactions_filters_light_users(random_log, tmp_path):
    frame, out = random_log
    assert run_convert(["--path", out.parent / "ratings.csv", "--output", tmp_path / "f",
                        "--min_interactions", "25"])[0] == 0
    metadata, arrays = load_output(tmp_path / "f")
    per_user = np.bincount(arrays["train"][:, 0]) + 1
    assert per_user.min() >= 25
    unique = frame.drop_duplicates(["userId", "movieId"]).groupby("userId").size()
    assert metadata["num_users"] == int((unique >= 25).sum())


def test_existing_output_needs_force(random_log, tmp_path, capsys):
    frame, out = random_log
    path = out.parent / "ratings.csv"
    target = tmp_path / "existing"
    assert run_convert(["--path", path, "--output", target])[0] == 0
    (target / "keep.txt").write_text("mine")
    code, err = run_convert(["--path", path, "--output", target], capsys)
    assert code == 1 and "--force" in err and (target / "keep.txt").read_text() == "mine"
    assert run_convert(["--path", path, "--output", target, "--force"])[0] == 0
    assert not (target / "keep.txt").exists() and (target / "metadata.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["existing"]  # no staging or backup folder left behind


def folder_bytes(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("where", ["input folder", "its parent", "another folder"])
def test_force_never_replaces_the_input_or_a_folder_that_is_not_a_dataset(tmp_path, tiny_log, capsys, where):
    folder = tmp_path / "raw"
    folder.mkdir()
    source = write_u_data(folder, tiny_log)
    (folder / "notes.txt").write_text("mine")
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("also mine")
    output = {"input folder": folder, "its parent": tmp_path, "another folder": other}[where]
    before = folder_bytes(tmp_path)
    code, err = run_convert(["--path", source, "--output", output, "--force"], capsys)
    assert code == 1
    expected = "is not a dataset written by convert.py" if where == "another folder" else "holds the input --path"
    assert len(err.strip().splitlines()) == 1 and expected in err
    assert folder_bytes(tmp_path) == before  # byte-identical: nothing deleted, nothing written


def test_leftovers_of_a_killed_conversion_are_cleaned_and_a_lost_dataset_put_back(tmp_path, tiny_log):
    source = write_ratings_csv(tmp_path, tiny_log)
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    partial = tmp_path / f".data.partial-{dead}-abc123"
    partial.mkdir()
    backup = tmp_path / f".data.old-{dead}"  # killed between moving the old dataset aside and the new one in
    negatives = ["--valid_negative", "2"]
    assert run_convert(["--path", source, "--output", backup, *negatives])[0] == 0
    assert run_convert(["--path", source, "--output", tmp_path / "data", "--force", *negatives])[0] == 0
    assert not partial.exists() and not backup.exists() and (tmp_path / "data" / "metadata.json").is_file()
    backup.mkdir()
    (backup / "metadata.json").write_text("{}")
    code = run_convert(["--path", source, "--output", tmp_path / "other", *negatives])[0]
    assert code == 0 and backup.exists()  # another output's name: not this conversion's leftover
    shutil.rmtree(tmp_path / "data")
    assert run_convert(["--path", source, "--output", tmp_path / "data", *negatives])[0] == 1  # put back: exists
    assert (tmp_path / "data" / "metadata.json").read_text() == "{}" and not backup.exists()


def test_dataset_folder_has_the_usual_permissions(tmp_path, tiny_log):
    source = write_ratings_csv(tmp_path, tiny_log)
    old = os.umask(0o022)
    try:
        assert run_convert(["--path", source, "--output", tmp_path / "data", "--valid_negative", "2"])[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o755


def test_mixed_numeric_and_text_ids_are_labels(tmp_path):
    rows = [(12, "a1", 1), ("x", "a2", 2), (12, "a2", 3), ("x", "a1", 4), ("x", "a3", 5), (12, "a4", 6)]
    path = tmp_path / "mixed.json"
    path.write_text("".join(json.dumps({"reviewerID": user, "asin": item, "overall": 5, "unixReviewTime": time})
                            + "\n" for user, item, time in rows))
    assert run_convert(["--path", path, "--output", tmp_path / "data", "--valid_negative", "1"])[0] == 0
    assert (tmp_path / "data" / "users.csv").read_text().splitlines()[1:] == ["0,12", "1,x"]


def test_summary_piped_into_a_reader_that_stops_is_not_an_error(tmp_path):
    command = f"{sys.executable} {ROOT / 'convert.py'} --dataset demo --output {tmp_path / 'data'} --quiet | head -c 1"
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert (tmp_path / "data" / "metadata.json").is_file()


# --------------------------------------------------------------------------------------------------- bad input


def bad_input_cases(tmp_path, tiny_log):
    """(arguments, text the one-line error must contain) for each kind of bad input."""
    ok = write_ratings_csv(tmp_path, tiny_log)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01garbage-without-separators\n")
    bad_id = write_lines(tmp_path / "u.data", ["1\t2\t3\t4", "x7\t2\t3\t4"])
    bad_time = write_lines(tmp_path / "times.csv", ["user,item,timestamp", "1,2,100", "1,3,yesterday-ish"])
    nan_item = write_lines(tmp_path / "nan.csv", ["user,item,timestamp", "1,2,100", "1,,101", "2,3,5"])
    no_pairs = write_lines(tmp_path / "single.csv", ["user,item,timestamp", "1,2,100", "2,3,101", "1,2,102"])
    full = write_lines(tmp_path / "full.csv", ["user,item"] + [f"{u},{i}" for u in range(3) for i in range(4)])
    not_a_dir = tmp_path / "plainfile"
    not_a_dir.write_text("x")
    return {
        "missing file": (["--path", tmp_path / "nope.csv"], "no such file"),
        "empty file": (["--path", empty], "empty"),
        "unknown format": (["--path", binary], "separator"),
        "misnamed column": (["--path", bad_time, "--user_col", "customer"], "no column 'customer'"),
        "no user column": (["--path", write_lines(tmp_path / "x.csv", ["a,b", "1,2"])], "--user_col"),
        "non-numeric id": (["--path", bad_id], "line 2: user 'x7' is not a number"),
        "non-numeric time": (["--path", bad_time], "'yesterday-ish' is not a number"),
        "NaN value": (["--path", nan_item], "line 3: missing item id"),
        "no user with two interactions": (["--path", no_pairs], "no user has 2 or more"),
        "negatives impossible": (["--path", full], "--valid_negative 0 or less"),
        "unwritable output": (["--path", ok, "--output", not_a_dir / "sub"], "cannot write"),
        "wrong movielens header": (["--path", ok, "--format", "movielens-20m"], None),
        "truncated gzip": (["--path", write_truncated_gzip(tmp_path)], "cannot read"),
        "truncated gzip body": (["--path", write_truncated_gzip(tmp_path, "cut.csv.gz", 3000)], "truncated"),
        "not UTF-8": (["--path", write_lines(tmp_path / "latin.data", ["1\t2\t3\t4", "\xff\xfe\t2\t3\t4"],
                                             encoding="latin-1"), "--format", "movielens-100k"], "not UTF-8 text"),
        "infinite time": (["--path", write_lines(tmp_path / "inf.csv", ["user,item,timestamp", "1,2,100", "1,3,inf"])],
                          "line 3: time (column 'timestamp') inf is not a usable time"),
        "huge time": (["--path", write_lines(tmp_path / "big.csv", ["user,item,timestamp", "1,2,1e30", "1,3,5"])],
                      "line 2: time (column 'timestamp') 1e+30 is not a usable time"),
        "JSON without asin": (["--path", write_lines(tmp_path / "r.json", ['{"reviewerID": "a", "overall": 5}'] * 3),
                               "--format", "amazon"], "missing item id (column 'asin')"),
        "list ids": (["--path", write_parquet_lists(tmp_path)], "holds lists or records, not ids"),
    }


def write_parquet_lists(folder):
    path = folder / "lists.parquet"
    pd.DataFrame({"user_id": [[1], [2], [1]], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]}).to_parquet(path)
    return path


def write_truncated_gzip(folder, name="cut.json.gz", keep=60):
    path = folder / name
    if name.endswith(".csv.gz"):  # cut past the first line: the damage shows only while reading the rows
        text = "user,item,timestamp\n" + "".join(f"{u},{i},{u * 100 + i}\n" for u in range(300) for i in range(30))
        path.write_bytes(gzip.compress(text.encode())[:keep])
    else:
        path.write_bytes(gzip.compress(b'{"reviewerID": "a", "asin": "b"}\n' * 1000)[:keep])
    return path


@pytest.mark.parametrize("case", ["missing file", "empty file", "unknown format", "misnamed column", "no user column",
                                  "non-numeric id", "non-numeric time", "NaN value", "no user with two interactions",
                                  "negatives impossible", "unwritable output", "truncated gzip",
                                  "truncated gzip body", "not UTF-8", "infinite time", "huge time",
                                  "JSON without asin", "list ids"])
def test_bad_input_gives_one_line_error_and_writes_nothing(tmp_path, tiny_log, capsys, case):
    args, expected = bad_input_cases(tmp_path, tiny_log)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    output = [] if "--output" in args else ["--output", tmp_path / "out"]
    code, err = run_convert(args + output, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert.py: error: ")
    assert expected in lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no partial directory


def test_bad_flags_are_rejected_by_the_parser(tmp_path, capsys):
    for args in (["--dataset", "demo", "--output", "x", "--valid_negative", "-1"],
                 ["--dataset", "demo", "--output", "x", "--min_interactions", "1"],
                 ["--synthetic", "0", "5", "5", "--output", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            convert.parse_args(args)
        assert exit_info.value.code == 2


# ----------------------------------------------------------------------------------------------- real datasets


def test_movielens_100k_counts(tmp_path):
    path = shared_file("ml-100k", "u.data")
    assert run_convert(["--path", path, "--output", tmp_path / "ml100k"])[0] == 0
    metadata, arrays = load_output(tmp_path / "ml100k")
    assert (metadata["num_users"], metadata["num_items"], metadata["num_train"]) == (943, 1682, 99_057)
    assert metadata["num_test_users"] == 943 and arrays["test_negatives"].shape == (943, 100)
    items = pd.read_csv(tmp_path / "ml100k" / "items.csv")
    assert items.loc[0, "title"] == "Toy Story (1995)"


def test_ncf_paper_ml1m_counts(tmp_path):
    folder = shared_file("ml-1m", "ncf")
    train = shared_file("ml-1m", "ncf-reconstructed", "ml-1m.train.rating")
    for path in [*folder.glob("ml-1m.*"), train]:
        (tmp_path / path.name).symlink_to(path)
    assert run_convert(["--path", tmp_path / "ml-1m", "--output", tmp_path / "out"])[0] == 0
    metadata, arrays = load_output(tmp_path / "out")
    assert (metadata["num_users"], metadata["num_items"], metadata["num_train"]) == (6040, 3706, 994_169)
    assert arrays["test_negatives"].shape == (6040, 99)
    assert metadata["counts"]["given_negatives_equal_to_test_item"] == 156


def test_amazon_fashion_counts(tmp_path, capsys):
    path = shared_file("amazon-fashion-5core", "AMAZON_FASHION_5.json.gz")
    code, err = run_convert(["--path", path, "--output", tmp_path / "out"], capsys)
    assert code == 1 and "--valid_negative 20 or less" in err  # only 29 items: 100 negatives are impossible
    assert run_convert(["--path", path, "--output", tmp_path / "out", "--valid_negative", "20"])[0] == 0
    metadata, _ = load_output(tmp_path / "out")
    counts = metadata["counts"]
    assert (counts["input_rows"], counts["duplicates_dropped"], counts["users_dropped"]) == (3176, 134, 4)
    assert (metadata["num_users"], metadata["num_items"]) == (402, 29)
    assert metadata["num_train"] + metadata["num_test_users"] == 3176 - 134 - counts["interactions_of_dropped_users"]


def test_lastfm_counts(tmp_path):
    path = shared_file("lastfm-hetrec2011", "user_artists.dat")
    assert run_convert(["--path", path, "--output", tmp_path / "out"])[0] == 0
    metadata, _ = load_output(tmp_path / "out")
    counts = metadata["counts"]
    assert counts["input_rows"] == 92_834 and counts["duplicates_dropped"] == 0
    assert metadata["num_users"] + counts["users_dropped"] == 1892  # 8 users have a single artist
    assert metadata["num_items"] + counts["items_dropped"] == 17_632
    assert metadata["num_train"] + metadata["num_test_users"] == 92_834 - counts["interactions_of_dropped_users"]
    assert "at random" in metadata["protocol"]["split"]  # Last.fm has no timestamps


# ------------------------------------------------------------------------------------------------- other splits


def test_leave_one_out_validation_is_the_second_latest_item_and_never_trained_on(tmp_path, tiny_log):
    source = write_ratings_csv(tmp_path, tiny_log)
    assert run_convert(["--path", source, "--output", tmp_path / "out", "--validation", "--valid_negative", "2"])[0] \
        == 0
    metadata, arrays, train, test = as_original(tmp_path / "out")
    # Users 11, 12 (two distinct items) and 13 (one) have no item left to train on beside a test and a validation
    # item: dropped. User 14's items in time order: 102, 105, 103.
    assert test == {10: 102, 14: 103} and metadata["protocol"]["min_interactions"] == 3
    users = pd.read_csv(tmp_path / "out" / "users.csv")["original_id"].to_numpy()
    items = pd.read_csv(tmp_path / "out" / "items.csv")["original_id"].to_numpy()
    validation = {users[u]: items[i] for u, i in arrays["validation"]}
    assert validation == {10: 101, 14: 105} and train == {(10, 100), (14, 102)}
    negatives = arrays["validation_negatives"]
    assert negatives.shape == (2, 2) and metadata["num_validation"] == 2
    for user, row in enumerate(negatives.tolist()):
        own = {i for u, i in np.concatenate([arrays["train"], arrays["test"], arrays["validation"]]).tolist()
               if u == user}
        assert not own & set(row)


@pytest.mark.parametrize("split", ["ratio", "time_ratio"])
def test_ratio_splits_partition_each_users_items_in_the_asked_shares(random_log, tmp_path, split):
    frame, _ = random_log
    source = tmp_path / "ratings.csv"
    frame.to_csv(source, index=False)
    out = tmp_path / "out"
    assert run_convert(["--path", source, "--output", out, "--split", split, "--test_fraction", "0.25",
                        "--validation", "--validation_fraction", "0.2", "--seed", "3"])[0] == 0
    metadata, arrays = load_output(out)
    assert "test_negatives" not in arrays and metadata["test_negatives"] == 0
    parts = {name: arrays[name] for name in ("train", "test", "validation")}
    pairs = [set(map(tuple, array.tolist())) for array in parts.values()]
    assert sum(map(len, pairs)) == len(set.union(*pairs))  # disjoint, and no pair repeated
    for name, array in parts.items():
        assert (np.diff(array[:, 0]) >= 0).all(), name  # sorted by user
    counts = {name: np.bincount(array[:, 0], minlength=metadata["num_users"]) for name, array in parts.items()}
    total = sum(counts.values())
    expected_test = np.clip(np.rint(0.25 * total), 1, total - 1)
    assert (counts["test"] == expected_test).all() and (counts["train"] >= 1).all()
    assert (counts["validation"] == np.clip(np.rint(0.2 * (total - expected_test)), 0, total - expected_test - 1)).all()
    if split == "time_ratio":  # the held-out items are each user's latest (ties: later in the file)
        times = arrays["train_timestamps"], arrays["test_timestamps"], arrays["validation_timestamps"]
        for user in range(metadata["num_users"]):
            train_times = times[0][arrays["train"][:, 0] == user]
            assert train_times.max() <= times[2][arrays["validation"][:, 0] == user].min(initial=10**9)
            assert times[2][arrays["validation"][:, 0] == user].max(initial=-1) <= \
                times[1][arrays["test"][:, 0] == user].min()


def test_ratio_split_is_seeded(random_log, tmp_path):
    frame, _ = random_log
    source = tmp_path / "ratings.csv"
    frame.to_csv(source, index=False)
    outputs = []
    for seed in (1, 1, 2):
        out = tmp_path / f"out{len(outputs)}"
        assert run_convert(["--path", source, "--output", out, "--split", "ratio", "--seed", str(seed)])[0] == 0
        outputs.append(np.load(out / "test.npy"))
    assert np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])


def test_lightgcn_files_are_read_with_their_split(tmp_path, capsys):
    folder = tmp_path / "gowalla"
    folder.mkdir()
    (folder / "train.txt").write_text("0 0 1 2\n1 1 2\n2 0 3\n")
    (folder / "test.txt").write_text("0 3\n1 0 3\n2 1\n")
    assert run_convert(["--path", folder, "--output", tmp_path / "out"])[0] == 0
    metadata, arrays = load_output(tmp_path / "out")
    assert arrays["train"].tolist() == [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 0], [2, 3]]
    assert arrays["test"].tolist() == [[0, 3], [1, 0], [1, 3], [2, 1]] and metadata["source"]["format"] == "lightgcn"
    code, err = run_convert(["--path", folder / "train.txt", "--output", tmp_path / "again", "--split", "ratio"],
                            capsys)
    assert code == 1 and "their split is used as given" in err
    # --validation holds out a fraction of each user's train.txt pairs, at least one left to train on; test.txt
    # stays as given.
    (folder / "train.txt").write_text("0 0 1 2 4 5 6 7 8 9\n1 1 2\n2 0 3\n")
    assert run_convert(["--path", folder, "--output", tmp_path / "validated", "--validation",
                        "--validation_fraction", "0.3"])[0] == 0
    metadata, arrays = load_output(tmp_path / "validated")
    assert arrays["test"].tolist() == [[0, 3], [1, 0], [1, 3], [2, 1]]
    train, validation = (set(map(tuple, arrays[name].tolist())) for name in ("train", "validation"))
    given = {(0, item) for item in (0, 1, 2, 4, 5, 6, 7, 8, 9)} | {(1, 1), (1, 2), (2, 0), (2, 3)}
    item_ids = [int(item) for item in metadata_items(tmp_path / "validated")]
    assert {(user, item_ids[item]) for user, item in train | validation} == given and not train & validation
    assert sorted(user for user, _ in validation) == [0, 0, 0, 1, 2] and metadata["protocol"]["validation"]
    (folder / "test.txt").write_text("0 x\n")
    code, err = run_convert(["--path", folder, "--output", tmp_path / "bad"], capsys)
    assert code == 1 and "test.txt: line 1: expected 'user item item ...'" in err


def metadata_items(folder):
    """The original item ids of a dataset directory, by index."""
    return [line.split(",")[1] for line in (folder / "items.csv").read_text().splitlines()[1:]]


def test_a_loaded_dataset_carries_its_ratings_and_id_maps(tmp_path, tiny_log):
    import dataloading

    source = write_ratings_csv(tmp_path, tiny_log)
    assert run_convert(["--path", source, "--output", tmp_path / "out", "--valid_negative", "1"])[0] == 0
    dataset = dataloading.load_dataset(tmp_path / "out")
    _, arrays = load_output(tmp_path / "out")
    np.testing.assert_array_equal(dataset.train_ratings, arrays["train_ratings"])
    users, no_titles = dataset.original_ids("users")
    items, titles = dataset.original_ids("items")
    assert users == ["10", "11", "12", "14"] and no_titles is None
    assert items == [str(item) for item in range(100, 106)] and titles[2] == "Title, 102"
    assert dataloading.load_dataset_or_demo(None).original_ids("items") == (None, None)  # no files behind the demo


def _ratings_file(path, rows):
    path.write_text("".join(f"{user}\t{item}\t{rating}\t{time}\n" for user, item, rating, time in rows))
    return path


def test_random_split_keeps_every_rating_once_and_the_latest_of_a_repeated_pair(tmp_path):
    rng = np.random.default_rng(1)
    rows = [(user, item, int(rng.integers(1, 6)), 1000 + index) for index, (user, item) in
            enumerate((user, item) for user in range(1, 31) for item in rng.choice(np.arange(1, 41), 8, replace=False))]
    rows.append((rows[0][0], rows[0][1], 1 if rows[0][2] != 1 else 2, 5000))  # the pair again, later: it wins
    source = _ratings_file(tmp_path / "u.data", rows)
    splits = {}
    for seed in (0, 0, 1):
        output = tmp_path / f"random-{seed}"
        assert run_convert(["--path", source, "--split", "random", "--test_fraction", "0.25", "--validation",
                            "--validation_fraction", "0.2", "--seed", seed, "--output", output, "--force"])[0] == 0
        metadata, arrays = load_output(output)
        assert "test_negatives" not in arrays and metadata["protocol"]["name"] == "random"
        users = pd.read_csv(output / "users.csv")["original_id"]
        items = pd.read_csv(output / "items.csv")["original_id"]
        found = {}
        for part in ("train", "test", "validation"):
            pairs = arrays[part]
            assert np.all(np.diff(pairs[:, 0]) >= 0)  # sorted by user
            for (user, item), rating in zip(pairs.tolist(), arrays[f"{part}_ratings"].tolist()):
                found[(int(users[user]), int(items[item]))] = (part, rating)
        latest = {(user, item): rating for user, item, rating, _ in rows}
        assert {pair: rating for pair, (_, rating) in found.items()} == latest  # each pair once, the latest rating
        assert len(arrays["test"]) == round(0.25 * len(latest))
        assert len(arrays["validation"]) == round(0.2 * (len(latest) - len(arrays["test"])))
        splits.setdefault(seed, []).append(arrays["test"].tolist())
    assert splits[0][0] == splits[0][1] and splits[0][0] != splits[1][0]


def test_a_test_file_is_the_test_set_with_ids_indexed_over_both_files(tmp_path):
    base = _ratings_file(tmp_path / "u1.base", [(1, 10, 5, 1), (1, 11, 3, 2), (2, 10, 4, 3), (2, 10, 2, 9)])
    test = _ratings_file(tmp_path / "u1.test", [(1, 12, 1, 5), (3, 10, 4, 6), (2, 11, 5, 7)])
    output = tmp_path / "u1"
    assert run_convert(["--path", base, "--test_path", test, "--output", output])[0] == 0
    metadata, arrays = load_output(output)
    users = pd.read_csv(output / "users.csv")["original_id"].tolist()
    items = pd.read_csv(output / "items.csv")["original_id"].tolist()
    assert users == [1, 2, 3] and items == [10, 11, 12]

    def rows(part):
        return [(users[user], items[item], rating) for (user, item), rating in
                zip(arrays[part].tolist(), arrays[f"{part}_ratings"].tolist())]

    assert rows("train") == [(1, 10, 5), (1, 11, 3), (2, 10, 2)]  # the repeated (2, 10): its later row
    assert rows("test") == [(1, 12, 1), (2, 11, 5), (3, 10, 4)]  # sorted by user; user 3 is only in the test file
    assert metadata["counts"]["test_users_without_training"] == 1 and metadata["protocol"]["name"] == "test_file"
    dataset = dataloading.load_dataset(output)
    assert dataset.test.negatives is None and dataset.train_ratings.tolist() == [5, 3, 2]


def test_leave_one_out_without_negatives_loads_for_full_ranking_only(tmp_path, tiny_log):
    source = tmp_path / "log.csv"
    pd.DataFrame(tiny_log, columns=["user", "item", "rating", "time"]).to_csv(source, index=False)
    output = tmp_path / "plain"
    assert run_convert(["--path", source, "--valid_negative", "0", "--output", output])[0] == 0
    metadata, arrays = load_output(output)
    assert "test_negatives" not in arrays and metadata["test_negatives"] == 0
    dataset = dataloading.load_dataset(output)
    assert evaluation.protocol_problem(dataset, "sampled", 1) is not None
    assert evaluation.protocol_problem(dataset, "full", 1) is None


@pytest.mark.parametrize("flags, message", [
    (["--split", "ratio"], "--test_path goes with --path"),
])
def test_test_path_needs_its_training_file_and_no_split(tmp_path, capsys, flags, message):
    base = _ratings_file(tmp_path / "u1.base", [(1, 10, 5, 1), (2, 11, 3, 2)])
    with pytest.raises(SystemExit):
        convert.main(["--path", str(base), "--test_path", str(base), "--output", str(tmp_path / "out"), *flags])
    assert message in capsys.readouterr().err


def test_a_missing_test_file_is_one_line(tmp_path, capsys):
    base = _ratings_file(tmp_path / "u1.base", [(1, 10, 5, 1), (2, 11, 3, 2)])
    code, err = run_convert(["--path", base, "--test_path", tmp_path / "u1.test", "--output", tmp_path / "out"],
                            capsys)
    assert code == 1 and "u1.test: no such file or directory; check --test_path" in err
    assert not (tmp_path / "out").exists()
