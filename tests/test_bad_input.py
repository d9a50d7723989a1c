"""The inputs once accepted without a word: each is refused in one line naming the file, row or flag (exit status
1, nothing written, replaced or deleted), or, where legitimate, converted with a notice that says how."""

import gzip
import hashlib
import json
import os
import zipfile

import numpy as np
import pytest

import convert
import ncf
import recommend
from conftest import run_convert


def snapshot(folder):
    """{relative path: content digest (or 'dir')} of everything under ``folder``, hidden files included."""
    found = {}
    for root, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def one_line_error(capsys, program):
    """The stderr of the run just made: exactly one line, from ``program``."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"{program}: error: "), err
    return err


def write_log(path, users=12, items=10, per_user=6, rating=True, seed=0):
    """A small ``user,item[,rating],time`` CSV: each user rates ``per_user`` distinct items."""
    rng = np.random.default_rng(seed)
    rows = ["user,item" + (",rating" if rating else "") + ",time"]
    for user in range(1, users + 1):
        for step, item in enumerate(rng.choice(np.arange(1, items + 1), per_user, replace=False)):
            rows.append(f"{user},{item}" + (f",{1 + (user + item) % 5}" if rating else "") + f",{100 * user + step}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def ratio_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ratio")
    data = folder / "data"
    log = write_log(folder / "log.csv", items=20, per_user=8)
    assert run_convert(["--path", log, "--output", data, "--split", "ratio"])[0] == 0
    return data


# ------------------------------------------------------------------------------------------------ 1. metadata


@pytest.mark.parametrize("key, value, message", [
    ("num_users", 12.0, "num_users is 12.0, expected a whole number"),
    ("num_items", True, "num_items is true, expected a whole number"),
    ("num_train", "72", 'num_train is "72", expected a whole number'),
    ("num_users", 13, "records num_users 13, but users.csv maps 12 ids"),
    ("num_items", 19, "records num_items 19, but items.csv maps 20 ids"),
    ("num_train", 7, "records num_train 7, but the arrays give"),
    ("num_test", 3, "records num_test 3, but the arrays give"),
])
def test_metadata_that_disagrees_with_its_arrays_is_refused(ratio_data, tmp_path, capsys, key, value, message):
    data = tmp_path / "data"
    data.mkdir()
    for file in ratio_data.iterdir():
        (data / file.name).write_bytes(file.read_bytes())
    metadata = json.loads((data / "metadata.json").read_text())
    assert isinstance(metadata[key], int) and json.dumps(metadata[key]) != json.dumps(value)
    metadata[key] = value
    (data / "metadata.json").write_text(json.dumps(metadata))
    before = snapshot(tmp_path)
    assert ncf.main(["--data", str(data), "-e", "1", "--checkpoint_dir", str(tmp_path / "ck")]) == 1
    err = one_line_error(capsys, "ncf.py")
    assert f"{data / 'metadata.json'}: " in err and message in err
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------ 2. --output


@pytest.fixture(scope="module")
def checkpoint(ratio_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    assert ncf.main(["--data", str(ratio_data), "--model", "gmf", "-e", "1", "-f", "4", "--eval_protocol", "full",
                     "--checkpoint_dir", str(folder)]) == 0
    return folder / "best.pt"


@pytest.mark.parametrize("flag, name", [("--output", "recs.csv"), ("--plot_items", "items.png")])
def test_an_existing_output_is_kept_unless_force(checkpoint, tmp_path, capsys, flag, name):
    if flag == "--plot_items":
        pytest.importorskip("matplotlib")
    task = ["--user", "1"] if flag == "--output" else []
    target = tmp_path / name
    target.write_text("mine\n")
    stale = tmp_path / f".{name}.tmp-{2**22 + 12345}"  # a run killed while writing: its process is gone
    stale.write_text("half")
    keep = tmp_path / ".other.csv.tmp-1"  # another file's temporary, its process (init) alive: not ours to remove
    keep.write_text("other")
    before = snapshot(tmp_path)
    assert recommend.main(["--checkpoint", str(checkpoint), *task, flag, str(target)]) == 1
    err = one_line_error(capsys, "recommend.py")
    assert err == f"recommend.py: error: {target}: already exists; pass --force to replace it, or another {flag}"
    assert snapshot(tmp_path) == before
    assert recommend.main(["--checkpoint", str(checkpoint), *task, flag, str(target), "--force"]) == 0
    assert target.read_bytes() != b"mine\n" and not stale.exists() and keep.read_text() == "other"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([name, keep.name])
    assert "replace an existing --output or --plot_items file" in _help(capsys)


def _help(capsys):
    with pytest.raises(SystemExit):
        recommend.main(["--help"])
    return capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ 3. random split


def test_a_random_split_without_ratings_converts_with_a_notice(tmp_path, capsys):
    log = write_log(tmp_path / "clicks.csv", rating=False)
    assert convert.main(["--path", str(log), "--output", str(tmp_path / "data"), "--split", "random"]) == 0
    out = capsys.readouterr().out
    assert "note              the input has no rating column: the rating models" in out
    before = snapshot(tmp_path)
    assert ncf.main(["--data", str(tmp_path / "data"), "--model", "dotbias", "-e", "1", "--checkpoint_dir",
                     str(tmp_path / "ck")]) == 1
    assert "has no training or test ratings" in one_line_error(capsys, "ncf.py")
    assert snapshot(tmp_path) == before
    with_ratings = write_log(tmp_path / "rated.csv")
    assert convert.main(["--path", str(with_ratings), "--output", str(tmp_path / "rated"), "--split", "random"]) == 0
    assert "no rating column" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ 4. --test_path


def test_users_and_items_seen_only_in_the_test_file_are_counted_and_said(tmp_path, capsys):
    base = tmp_path / "u1.base"
    test = tmp_path / "u1.test"
    base.write_text("".join(f"{user}\t{item}\t{1 + (user * item) % 5}\t{user * 10 + item}\n"
                            for user in range(1, 9) for item in range(1, 7)))
    # user 9 and items 7, 8 appear only here: three rows touch them (9-7 counts once)
    test.write_text("1\t7\t4\t500\n2\t8\t3\t501\n9\t7\t5\t502\n3\t2\t4\t503\n")
    assert convert.main(["--path", str(base), "--test_path", str(test), "--output", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert ("note              3 test rows have a user or item with no training row (1 users and 2 items seen only "
            "in test)") in out
    counts = json.loads((tmp_path / "data" / "metadata.json").read_text())["counts"]
    assert (counts["test_users_without_training"], counts["test_items_without_training"],
            counts["test_rows_without_training"]) == (1, 2, 3)
    assert ncf.main(["--data", str(tmp_path / "data"), "--model", "biasmf", "-e", "1", "--checkpoint_dir",
                     str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "cold test rows: 3 of 4 (a user or item with no training rating; kept in the metrics" in out


def test_movielens_u1_test_has_32_items_seen_only_in_test(tmp_path, capsys):
    from conftest import shared_file

    base = shared_file("ml-100k", "u1.base")
    assert convert.main(["--path", str(base), "--test_path", str(base.with_name("u1.test")), "--output",
                         str(tmp_path / "u1"), "--quiet"]) == 0
    counts = json.loads((tmp_path / "u1" / "metadata.json").read_text())["counts"]
    assert counts["test_items_without_training"] == 32 and counts["test_users_without_training"] == 0


# ------------------------------------------------------------------------------------------------ 5. --text_col


@pytest.mark.parametrize("kind", ["amazon", "csv"])
def test_a_text_column_that_does_not_exist_is_refused(tmp_path, capsys, kind):
    if kind == "amazon":
        path = tmp_path / "reviews.json.gz"
        lines = [json.dumps({"reviewerID": f"u{user}", "asin": f"i{item}", "overall": 4, "unixReviewTime": user + item,
                             "reviewText": "fine"}) for user in range(6) for item in range(5)]
        path.write_bytes(gzip.compress("\n".join(lines).encode()))
        field = "no record has the field 'reviewBody' for --text_col; fields are: asin, overall, reviewText"
    else:
        path = write_log(tmp_path / "log.csv")
        field = "no column 'reviewBody' for --text_col; columns are: user, item, rating, time"
    before = snapshot(tmp_path)
    assert run_convert(["--path", path, "--output", tmp_path / "data", "--split", "random", "--text_col",
                        "reviewBody"])[0] == 1
    err = one_line_error(capsys, "convert.py")
    assert f"{path}: " in err and field in err
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------ 6. NaN tables


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_embeddings_are_refused_before_any_output(tmp_path, capsys, bad):
    log = write_log(tmp_path / "log.csv", users=8)
    assert run_convert(["--path", log, "--output", tmp_path / "data", "--split", "random"])[0] == 0
    table = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    table[5, 2] = bad
    table[7, 0] = bad
    np.save(tmp_path / "users.npy", table)
    before = snapshot(tmp_path)
    assert ncf.main(["--data", str(tmp_path / "data"), "--model", "mf", "-e", "1", "-f", "4", "--user_embeddings",
                     str(tmp_path / "users.npy"), "--checkpoint_dir", str(tmp_path / "ck")]) == 1
    err = one_line_error(capsys, "ncf.py")
    assert err == (f"ncf.py: error: --user_embeddings {tmp_path / 'users.npy'}: row 5 holds NaN or an infinite value "
                   "(2 such rows); every value must be a finite number")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------ 7. the rest


def _bad_times(tmp_path, name, times):
    lines = ["user,item,time"] + [f"{1 + row % 3},{row},{time}" for row, time in enumerate(times)]
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return tmp_path / name


@pytest.mark.parametrize("case", ["malformed ISO time", "true/false times", "negative MovieLens id", "full disk",
                                  "missing time in a datetime column"])
def test_the_smaller_cases_are_one_line(tmp_path, capsys, monkeypatch, case):
    if case == "malformed ISO time":
        path = _bad_times(tmp_path, "iso.csv", ["2020-01-01T10:00:00", "2020-01-02", "2020-13-45T99:00", "2020-01-03"])
        message = "line 4: time (column 'time') '2020-13-45T99:00' is neither a number nor an ISO 8601 date"
    elif case == "true/false times":
        path = _bad_times(tmp_path, "bool.csv", ["True", "False", "True"])
        message = "line 2: time (column 'time') True is true/false, not a time"
    elif case == "negative MovieLens id":
        path = tmp_path / "u.data"
        path.write_text("1\t2\t3\t100\n-4\t3\t4\t101\n")
        message = "line 2: user id -4 is negative, and movielens-100k ids are positive"
    elif case == "missing time in a datetime column":
        import pandas as pd

        path = tmp_path / "times.parquet"
        times = pd.Series(pd.date_range("2020-01-01", periods=6, freq="h", tz="UTC"), dtype=object)
        times[4] = None
        pd.DataFrame({"user": [1, 1, 1, 2, 2, 2], "item": [1, 2, 3, 1, 2, 3], "time": times}).to_parquet(path)
        message = "line 5: missing time (column 'time')"
    else:
        path = write_log(tmp_path / "log.csv")

        def short_write(file, array, **_):  # numpy's own words on a full disk: an OSError without errno
            raise OSError(f"{array.nbytes} requested and 0 written")

        monkeypatch.setattr(np, "save", short_write)
        message = "cannot write the dataset (no space left on device); free some space or choose another --output"
    before = snapshot(tmp_path)
    assert run_convert(["--path", path, "--output", tmp_path / "data", "--split", "ratio"])[0] == 1
    err = one_line_error(capsys, "convert.py")
    assert message in err
    assert snapshot(tmp_path) == before


def test_fractional_times_convert_with_a_notice_that_says_how(tmp_path, capsys):
    path = _bad_times(tmp_path, "frac.csv", [100.25, 100.75, 101, 99.5, 102, 103.5])
    assert convert.main(["--path", str(path), "--output", str(tmp_path / "data"), "--split", "ratio"]) == 0
    assert ("note              4 times have a fraction of a second, dropped (rounded down): rows within one second "
            "keep their file order") in capsys.readouterr().out


def test_pandas_notices_of_its_own_future_do_not_precede_the_one_line(tmp_path, capsys, monkeypatch):
    """A Pandas4Warning raised while reading (pandas deprecating something the reader uses) is not printed before
    convert.py's one-line error: a user cannot act on it."""
    import warnings

    import pandas as pd

    category = getattr(pd.errors, "Pandas4Warning", FutureWarning)
    real = convert.load_interactions

    def warns_then_reads(*args, **kwargs):
        warnings.warn("this keyword is deprecated", category, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "load_interactions", warns_then_reads)
    path = _bad_times(tmp_path, "bool.csv", ["True", "False", "True"])
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")  # as `python -W always` would show it
        assert run_convert(["--path", path, "--output", tmp_path / "data"])[0] == 1
    assert not [warning for warning in shown if issubclass(warning.category, category)]
    assert "true/false, not a time" in one_line_error(capsys, "convert.py")


# ------------------------------------------------------------------------------------------------ round three


def last_line(capsys):
    """The last stderr line of a command line that stopped at parsing (argparse's usage, then one error line)."""
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("flags, message", [
    (["--early_stop", "0"], "--early_stop must be at least 1, got 0"),
    (["--early_stop", "-1"], "--early_stop must be at least 1, got -1"),
    (["--model", "gmf", "--loss", "softmax", "--temperature", "1e-30"],
     "--temperature must be in [1e-3, 1e3], got 1e-30"),
    (["--model", "gmf", "--loss", "softmax", "--temperature", "0"], "--temperature must be in [1e-3, 1e3], got 0"),
    (["--model", "gmf", "--loss", "softmax", "--temperature", "nan"],
     "--temperature must be in [1e-3, 1e3], got nan"),
    (["--model", "gmf", "--loss", "ccl", "--margin", "5"], "--margin must be in [-1, 1), got 5"),
    (["--model", "gmf", "--loss", "ccl", "--margin", "1"], "--margin must be in [-1, 1), got 1"),
    (["--model", "gmf", "--loss", "ccl", "--negative_weight", "-1"], "--negative_weight must be 0 or more, got -1"),
    (["--model", "gmf", "--loss", "ccl", "--negative_weight", "inf"], "--negative_weight must be 0 or more, got inf"),
    (["--model", "gmf", "--shared_negatives", "8", "--negative_popularity", "-0.5"],
     "--negative_popularity must be 0 or more, got -0.5"),
    (["--model", "gmf", "--shared_negatives", "8", "--negative_popularity", "inf"],
     "--negative_popularity must be 0 or more, got inf"),
    (["--model", "gmf", "--loss", "ccl", "--margin", "nan"], "--margin must be in [-1, 1), got nan"),
    (["--model", "ease", "--eval_protocol", "full", "--ease_l2", "500", "1e-300"],  # (G + l2 I singular in float64)
     "--ease_l2 must be in [1e-3, 1e9], got 1e-300"),
])
def test_values_that_cannot_mean_what_was_asked_stop_at_parsing(ratio_data, tmp_path, capsys, flags, message):
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        ncf.main(["--data", str(ratio_data), *flags, "--checkpoint_dir", str(tmp_path / "ck")])
    assert stopped.value.code == 2 and last_line(capsys) == f"ncf.py: error: {message}"
    assert snapshot(tmp_path) == before


def test_more_shared_negatives_than_items_are_refused_before_any_output(ratio_data, tmp_path, capsys):
    before = snapshot(tmp_path)
    assert ncf.main(["--data", str(ratio_data), "--model", "gmf", "--eval_protocol", "full", "--shared_negatives",
                     "100000", "--checkpoint_dir", str(tmp_path / "ck")]) == 1
    assert one_line_error(capsys, "ncf.py") == (
        f"ncf.py: error: --shared_negatives 100,000 draws more negatives per batch than {ratio_data} has items (20); "
        "pass --shared_negatives 20 or fewer")
    assert snapshot(tmp_path) == before


def test_early_stopping_shorter_than_the_evaluations_waits_for_one(ratio_data, tmp_path, capsys):
    # Evaluated after epoch 2 (every third) and the last (3): a patience of 1 counts evaluations, so the run keeps a
    # best.pt and reports a real epoch instead of stopping before any evaluation.
    assert ncf.main(["--data", str(ratio_data), "--model", "gmf", "--eval_protocol", "full", "-e", "4",
                     "--eval_every", "3", "--early_stop", "1", "--checkpoint_dir", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "best HR@10 -1" not in out and "at epoch -1" not in out
    records = [json.loads(line) for line in (tmp_path / "ck" / "log.json").read_text().splitlines()]
    assert [record["epoch"] for record in records if record["type"] == "epoch"][-1] >= 2
    assert records[-1]["best_epoch"] in (2, 3) and (tmp_path / "ck" / "best.pt").is_file()


def test_metadata_counts_larger_than_the_arrays_are_refused_without_the_id_maps(ratio_data, tmp_path, capsys):
    for key, claimed, actual in (("num_users", 17, 12), ("num_items", 1292, 20)):
        data = tmp_path / key
        data.mkdir()
        for file in ratio_data.iterdir():
            if file.name not in ("users.csv", "items.csv"):
                (data / file.name).write_bytes(file.read_bytes())
        metadata = json.loads((data / "metadata.json").read_text())
        assert metadata[key] == actual
        (data / "metadata.json").write_text(json.dumps(metadata | {key: claimed}))
        before = snapshot(tmp_path)
        assert ncf.main(["--data", str(data), "-e", "1", "--checkpoint_dir", str(tmp_path / "ck")]) == 1
        assert one_line_error(capsys, "ncf.py") == (
            f"ncf.py: error: {data / 'metadata.json'}: records {key} {claimed}, but the arrays give {actual} (edited "
            "after convert.py wrote them?); re-create the dataset with convert.py")
        assert snapshot(tmp_path) == before


def write_lightgcn(folder, train, test):
    folder.mkdir()
    (folder / "train.txt").write_text("".join(" ".join(map(str, line)) + "\n" for line in train))
    (folder / "test.txt").write_text("".join(" ".join(map(str, line)) + "\n" for line in test))
    return folder


def test_a_lightgcn_folder_counts_what_training_never_saw_and_drops_test_pairs_it_trained_on(tmp_path, capsys):
    # User 3's train line holds no items; item 9 is only in test; user 0's test item 1 is also a training item.
    source = write_lightgcn(tmp_path / "lgcn", [[0, 1, 2, 3], [1, 2, 3, 4], [2, 0, 4, 5], [3]],
                            [[0, 1, 5], [1, 9], [2, 1], [3, 2, 3]])
    assert convert.main(["--path", str(source), "--output", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert ("  note              3 test rows have a user or item with no training row (1 users and 1 items seen only "
            "in test); kept, and scored from rows training never moved (the rating models from the known side)") in out
    assert ("  note              1 test pairs were also training pairs, which full ranking leaves out of the "
            "candidates: dropped from the test set") in out
    test = np.load(tmp_path / "data" / "test.npy")
    assert len(test) == 5 and json.loads((tmp_path / "data" / "metadata.json").read_text())["counts"][
        "test_pairs_also_in_train_dropped"] == 1


@pytest.mark.parametrize("flags, message", [
    (["--test_path", "nowhere.txt"], "these files come split (the NCF paper's or NGCF's) and bring their own test "
                                     "file; drop --test_path"),
])
def test_flags_a_lightgcn_folder_does_not_read_are_refused(tmp_path, capsys, flags, message):
    source = write_lightgcn(tmp_path / "lgcn", [[0, 1, 2], [1, 2, 3]], [[0, 3], [1, 0]])
    before = snapshot(tmp_path)
    assert convert.main(["--path", str(source), "--output", str(tmp_path / "data"), "--quiet", *flags]) == 1
    assert one_line_error(capsys, "convert.py") == f"convert.py: error: {source}: {message}"
    assert snapshot(tmp_path) == before


def test_a_validation_fraction_without_validation_stops_at_parsing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main(["--path", str(write_log(tmp_path / "log.csv")), "--output", str(tmp_path / "data"),
                      "--validation_fraction", "0.2"])
    assert last_line(capsys) == ("convert.py: error: --validation_fraction is the share --validation holds out; add "
                                 "--validation, or drop it")
    assert not (tmp_path / "data").exists()


def test_the_wording_names_what_is_wrong(tmp_path, capsys):
    # A Unix time among ISO dates is a valid time in the other form, not "neither".
    log = tmp_path / "mixed.csv"
    log.write_text("user,item,time\n1,1,2020-01-01T00:00:00\n1,2,1577923200\n2,1,2020-01-03T00:00:00\n"
                   "2,2,2020-01-04T00:00:00\n")
    assert convert.main(["--path", str(log), "--output", str(tmp_path / "a"), "--quiet"]) == 1
    assert one_line_error(capsys, "convert.py") == (
        f"convert.py: error: {log}: line 3: time (column 'time') '1577923200' is a number, while line 2 holds an "
        "ISO 8601 date ('2020-01-01T00:00:00'); write every time (column 'time') in one of the two forms")
    # A fractional id is named as a number, not as numpy's repr.
    log = tmp_path / "u.data"
    log.write_text("1\t1.5\t4\t100\n1\t2\t4\t101\n2\t1\t3\t102\n2\t2\t5\t103\n")
    assert convert.main(["--path", str(log), "--output", str(tmp_path / "b"), "--quiet"]) == 1
    assert one_line_error(capsys, "convert.py") == f"convert.py: error: {log}: line 1: item 1.5 is not an integer"
    # A text file given as a checkpoint: what it is not, not torch's first line.
    fake = tmp_path / "best.pt"
    fake.write_text("hello\n")
    assert recommend.main(["--checkpoint", str(fake), "--user", "1"]) == 1
    assert one_line_error(capsys, "recommend.py") == (
        f"recommend.py: error: {fake}: not a checkpoint: PyTorch checkpoints are zip archives and this file is not one "
        "(a text file, a file cut short or an array?); pass a best.pt or last.pt written by ncf.py")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best.pt", "mixed.csv", "u.data"]


def test_ease_says_what_its_solve_will_take_and_refuses_what_cannot_fit(ratio_data, tmp_path, capsys, monkeypatch):
    from ncflib import ease

    assert ncf.main(["--data", str(ratio_data), "--model", "ease", "--eval_protocol", "full", "--ease_l2", "10",
                     "--checkpoint_dir", ""]) == 0
    out = capsys.readouterr().out
    assert "EASE solve: about 0.0 GiB and 0 s an L2 weight (0 s in all) (estimated from the 20 items and this " \
           "machine's speed)" in out
    monkeypatch.setattr(ease, "available_bytes", lambda device: 1000)
    before = snapshot(tmp_path)
    assert ncf.main(["--data", str(ratio_data), "--model", "ease", "--eval_protocol", "full",
                     "--checkpoint_dir", str(tmp_path / "ck")]) == 1
    assert one_line_error(capsys, "ncf.py") == (
        "ncf.py: error: --model ease needs about 0.0 GiB for its item x item matrices of 20 items, more than 90% of "
        "the 0.0 GiB available here (the rest holds the data and the evaluation); use --model gfcf or rp3beta, whose "
        "memory grows with the interactions")
    assert snapshot(tmp_path) == before


def test_a_checkpoint_with_a_flipped_byte_in_its_weights_is_refused(checkpoint, ratio_data, tmp_path, capsys):
    # torch reads a checkpoint's parts without checking them: the byte would load as a wrong weight, silently.
    content = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as archive:
        part = next(info for info in archive.infolist() if "/data/" in info.filename and info.file_size >= 16)
    header = part.header_offset  # (a zip's local header: 30 bytes, then the name and the extra field)
    start = header + 30 + int.from_bytes(content[header + 26:header + 28], "little") + int.from_bytes(
        content[header + 28:header + 30], "little")
    content[start + 8] ^= 0xFF
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(content))
    before = snapshot(tmp_path)
    for main, program in ((recommend.main, "recommend.py"), (ncf.main, "ncf.py")):
        args = (["--checkpoint", str(damaged), "--data", str(ratio_data), "--user", "0"] if program == "recommend.py"
                else ["--data", str(ratio_data), "--eval_protocol", "full", "--mode", "test", "--load_checkpoint_path",
                      str(damaged)])
        assert main(args) == 1
        err = one_line_error(capsys, program)
        assert err == (f"{program}: error: {damaged}: a damaged checkpoint (its part {part.filename.partition('/')[2]} "
                       "does not match the checksum written with it); train again or pass another checkpoint")
    assert snapshot(tmp_path) == before


def test_a_librarys_warning_never_precedes_the_one_line_error(ratio_data, tmp_path, capsys, monkeypatch):
    # A warning raised on the way to a refusal (torch's, say, in its two-line form) is dropped: the one line that
    # says what to fix stands alone. A run that succeeds still shows its warnings.
    import warnings

    import dataloading

    real = dataloading.load_dataset

    def warn_then(path):
        warnings.warn("a library's notice about its own internals", UserWarning, stacklevel=1)
        return real(path)

    monkeypatch.setattr(dataloading, "load_dataset", warn_then)
    assert ncf.main(["--data", str(ratio_data), "-e", "1", "--eval_protocol", "full", "--shared_negatives", "100000",
                     "--checkpoint_dir", str(tmp_path / "ck")]) == 1
    assert one_line_error(capsys, "ncf.py").startswith("ncf.py: error: --shared_negatives")
    with pytest.warns(UserWarning, match="its own internals"):
        assert ncf.main(["--data", str(ratio_data), "--model", "gmf", "-e", "1", "-f", "4", "--eval_protocol",
                         "full", "--checkpoint_dir", str(tmp_path / "ok")]) == 0
