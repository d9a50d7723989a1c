"""New data without starting over: convert.py --update (ids kept, new ones appended, the old settings), ncf.py
--warm_start (tables grown, settings carried, refusals, resume) and recommend.py on the result."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import ncf
import recommend
from ncflib import checkpoint, warm
from tests.conftest import load_output, run_convert
from tests.test_convert import write_ncf_files

HEADER = "user,item,rating,time"


def write_log(path, rows, header=HEADER):
    Path(path).write_text("\n".join([header] + [",".join(map(str, row)) for row in rows]) + "\n")
    return path


def id_map(folder, kind):
    with open(Path(folder) / f"{kind}.csv", newline="") as handle:
        return [row["original_id"] for row in csv.DictReader(handle)]


def pairs(folder):
    """Every (user id, item id) pair of a dataset, by original ids, with its time and rating."""
    metadata, arrays = load_output(folder)
    users, items = id_map(folder, "users"), id_map(folder, "items")
    found = {}
    for part in ("train", "validation", "test"):
        if part in arrays:
            sides = zip(arrays[part], arrays[f"{part}_timestamps"], arrays[f"{part}_ratings"])
            for (user, item), when, rating in sides:
                found[(users[user], items[item])] = (int(when), float(rating))
    return found


def planted_rows(users, first_time, rng, groups=4, per_user=8):
    """Users in groups, each interacting with most items of its group: (user, item, rating, time) rows."""
    rows = []
    for user in users:
        group = user % groups
        for step, item in enumerate(rng.choice(10, size=per_user, replace=False)):
            rows.append((f"u{user}", f"i{group * 10 + item}", 1 + (user + item) % 5, first_time + 100 * user + step))
    return rows


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """An old dataset (users 0-39, items of groups' first 7 ids) and its update (8 more users, new items, repeats)."""
    folder = tmp_path_factory.mktemp("update")
    rng = np.random.default_rng(0)
    old_rows = [row for row in planted_rows(range(40), 0, rng) if int(row[1][1:]) % 10 < 7]
    new_rows = planted_rows(range(36, 48), 10_000, rng)  # users 36-39 come back; 40-47 are new
    new_rows += [old_rows[0], old_rows[5]]  # two pairs the old dataset holds
    write_log(folder / "old.csv", old_rows)
    write_log(folder / "new.csv", new_rows)
    assert run_convert(["--path", folder / "old.csv", "--output", folder / "old", "--split", "ratio",
                        "--validation"])[0] == 0
    assert run_convert(["--path", folder / "new.csv", "--update", folder / "old", "--output", folder / "new"])[0] == 0
    return folder


def test_an_update_keeps_every_old_id_and_pair_and_appends_the_new_ones_in_order(grown):
    old, new = grown / "old", grown / "new"
    for kind in ("users", "items"):
        assert id_map(new, kind)[:len(id_map(old, kind))] == id_map(old, kind)
    # New ids follow in order of first appearance in the log.
    with open(grown / "new.csv", newline="") as handle:
        log = list(csv.DictReader(handle))
    for kind, column in (("users", "user"), ("items", "item")):
        known, appended = set(id_map(old, kind)), []
        for row in log:
            if row[column] not in known and row[column] not in appended:
                appended.append(row[column])
        assert id_map(new, kind)[len(known):] == appended
    # Every old pair is there with its time and rating; so is every pair of the log.
    old_pairs, new_pairs = pairs(old), pairs(new)
    assert all(new_pairs[pair] == value for pair, value in old_pairs.items())
    assert {(row["user"], row["item"]) for row in log} <= set(new_pairs)
    metadata, _ = load_output(new)
    update = metadata["counts"]["update"]
    repeats = sum((row["user"], row["item"]) in old_pairs for row in log)
    assert repeats >= 2 and update["duplicates_of_old"] == repeats and update["log_rows"] == len(log)
    assert update["new_users"] == 8 and update["new_interactions"] == len(new_pairs) - len(old_pairs)
    assert update["new_items"] == len(id_map(new, "items")) - len(id_map(old, "items")) > 0
    # Split again with the old settings (ratio with validation, its fractions and seed).
    old_metadata, _ = load_output(old)
    for key in ("name", "test_fraction", "validation_fraction", "validation"):
        assert metadata["protocol"][key] == old_metadata["protocol"][key]
    assert metadata["seed"] == old_metadata["seed"] and metadata["num_validation"] > 0


def test_a_leave_one_out_update_holds_out_the_latest_items_and_draws_negatives(tiny_log, tmp_path):
    write_log(tmp_path / "old.csv", tiny_log)
    later = [(10, 106, 4, 2000), (15, 100, 3, 2001), (15, 106, 5, 2002), (11, 103, 1, 3000)]  # (11, 103): a repeat
    write_log(tmp_path / "new.csv", later)
    assert run_convert(["--path", tmp_path / "old.csv", "--output", tmp_path / "old", "--valid_negative", "1"])[0] == 0
    assert run_convert(["--path", tmp_path / "new.csv", "--update", tmp_path / "old", "--output",
                        tmp_path / "new"])[0] == 0
    metadata, arrays = load_output(tmp_path / "new")
    users, items = id_map(tmp_path / "new", "users"), id_map(tmp_path / "new", "items")
    test = {users[user]: items[item] for user, item in arrays["test"]}
    assert test["10"] == "106" and test["15"] == "106" and test["11"] == "103"  # the repeat kept its old time
    assert users[-1] == "15" and items[-1] == "106" and arrays["test_negatives"].shape == (len(users), 1)
    assert metadata["counts"]["update"]["duplicates_of_old"] == 1


def parts_by_pair(folder):
    """{(user id, item id): part} of a dataset, by original ids."""
    _, arrays = load_output(folder)
    users, items = id_map(folder, "users"), id_map(folder, "items")
    return {(users[user], items[item]): part for part in ("train", "validation", "test") if part in arrays
            for user, item in arrays[part]}


@pytest.mark.parametrize("split", ["ratio", "time_ratio", "leave_one_out", "random"])
def test_an_update_never_holds_out_a_pair_the_old_dataset_trained_on(tmp_path, split):
    """A model warm-started from the old dataset has seen its training pairs: none may become a validation or test
    pair of the update (under the random protocols a fresh draw over all pairs would put about a fifth of them
    there). Under ratio and random the old held-out pairs keep their parts and the held-out shares stay the
    protocol's."""
    rng = np.random.default_rng(1)
    pairs_drawn = rng.permutation([(user, item) for user in range(60) for item in range(40)])[:1500]
    rows = [(f"u{user}", f"i{item}", 1 + item % 5, 1000 + number) for number, (user, item) in enumerate(pairs_drawn)]
    write_log(tmp_path / "old.csv", rows[:1200])
    write_log(tmp_path / "new.csv", rows[1200:])
    assert run_convert(["--path", tmp_path / "old.csv", "--output", tmp_path / "old", "--split", split,
                        "--validation", "--valid_negative", "5"])[0] == 0
    assert run_convert(["--path", tmp_path / "new.csv", "--update", tmp_path / "old", "--output",
                        tmp_path / "new"])[0] == 0
    old, new = parts_by_pair(tmp_path / "old"), parts_by_pair(tmp_path / "new")
    assert set(old) <= set(new) and len(new) == 1500
    assert all(new[pair] == "train" for pair, part in old.items() if part == "train")
    held = [part for part in new.values() if part != "train"]
    assert held.count("test") > 0 and held.count("validation") > 0
    if split in ("ratio", "random"):
        assert all(new[pair] == part for pair, part in old.items())
        assert abs(held.count("test") / 1500 - 0.2) < 0.02  # the protocol's share, made up from the new pairs
        assert any(part == "test" for pair, part in new.items() if pair not in old)
    if split == "leave_one_out":  # one test and one validation pair per user, the latest new ones
        assert held.count("test") == len({user for user, _ in new})


def test_an_update_refuses_other_columns_formats_split_flags_and_given_splits(grown, tmp_path, capsys):
    base = ["--update", grown / "old", "--output", tmp_path / "out"]
    write_log(tmp_path / "untimed.csv", [("u1", "i1", 3)], header="user,item,rating")
    code, err = run_convert(["--path", tmp_path / "untimed.csv", *base], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "time" in err
    code, err = run_convert(["--path", grown / "new.csv", "--format", "parquet", *base], capsys)
    assert code == 1 and "reads as parquet" in err and "made from csv" in err
    code, err = run_convert(["--path", grown / "new.csv", "--user_col", "item", *base], capsys)
    assert code == 1 and "--user_col item" in err
    with pytest.raises(SystemExit):  # (argparse's one-line usage error)
        run_convert(["--path", grown / "new.csv", "--split", "leave_one_out", *base])
    assert "--split: an update splits with the settings" in capsys.readouterr().err
    # The NCF paper's files came with sampled negatives, which a new pair could hit: not updatable.
    given = tmp_path / "given"
    given.mkdir()
    write_ncf_files(given)
    assert run_convert(["--path", given, "--output", tmp_path / "ncf"])[0] == 0
    code, err = run_convert(["--path", grown / "new.csv", "--update", tmp_path / "ncf", "--output",
                             tmp_path / "out"], capsys)
    assert code == 1 and "came with its files" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_lightgcn_dataset_takes_new_training_lines_and_keeps_its_test_set(tmp_path, capsys):
    """NGCF/LightGCN's split came with its test file: an update adds training pairs (a file of 'user item ...'
    lines, as train.txt), keeps every old pair's part and the test set, and holds out the validation share of each
    user's training pairs from the new ones."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "lightgcn"
    folder.mkdir()
    train = {user: rng.choice(30, size=12, replace=False).tolist() for user in range(20)}
    test = {user: [item for item in range(30) if item not in train[user]][:3] for user in train}
    (folder / "train.txt").write_text("".join(f"{user} {' '.join(map(str, items[:9]))}\n"
                                              for user, items in train.items()))
    (folder / "test.txt").write_text("".join(f"{user} {' '.join(map(str, items))}\n" for user, items in test.items()))
    # New: each user's last 3 training items, a repeat of a test pair (dropped), a new user and a new item.
    lines = [f"{user} {' '.join(map(str, items[9:]))}" for user, items in train.items()]
    (tmp_path / "new.txt").write_text("\n".join(lines + [f"0 {test[0][0]}", "20 1 2 3 31"]) + "\n")
    assert run_convert(["--path", folder, "--validation", "--validation_fraction", "0.25", "--output",
                        tmp_path / "old"])[0] == 0
    assert run_convert(["--path", tmp_path / "new.txt", "--update", tmp_path / "old", "--output",
                        tmp_path / "new"])[0] == 0
    old, new = parts_by_pair(tmp_path / "old"), parts_by_pair(tmp_path / "new")
    assert all(new[pair] == part for pair, part in old.items())
    added = {pair: part for pair, part in new.items() if pair not in old}
    assert len(added) == 20 * 3 + 4 and set(added.values()) == {"train", "validation"}
    assert sorted(pair for pair, part in new.items() if part == "test") == \
        sorted(pair for pair, part in old.items() if part == "test")
    users = {user for user, _ in new}
    for user in users - {"20"}:  # a quarter of the user's 12 training and validation pairs: 3
        assert sum(1 for (who, _), part in new.items() if who == user and part == "validation") == 3
    metadata, _ = load_output(tmp_path / "new")
    update = metadata["counts"]["update"]
    assert update["new_users"] == 1 and update["new_items"] == 1 and update["duplicates_of_old"] == 1
    assert id_map(tmp_path / "new", "items")[-1] == "31" and metadata["source"]["format"] == "lightgcn"
    code, err = run_convert(["--path", folder, "--update", tmp_path / "old", "--output", tmp_path / "out"], capsys)
    assert code == 1 and "one file of new training lines" in err and not (tmp_path / "out").exists()


def test_a_random_rating_split_update_keeps_ratings_and_the_latest_rating_of_a_repeat(tmp_path):
    old_rows = [(user, item, 1 + (user * item) % 5, user * 10 + item) for user in range(6) for item in range(5)]
    write_log(tmp_path / "old.csv", old_rows)
    write_log(tmp_path / "new.csv", [(0, 0, 5, 999), (7, 2, 4, 1000)])
    assert run_convert(["--path", tmp_path / "old.csv", "--output", tmp_path / "old", "--split", "random"])[0] == 0
    assert run_convert(["--path", tmp_path / "new.csv", "--update", tmp_path / "old", "--output",
                        tmp_path / "new"])[0] == 0
    new_pairs = pairs(tmp_path / "new")
    assert new_pairs[("0", "0")] == (999, 5.0) and new_pairs[("7", "2")] == (1000, 4.0)
    assert len(new_pairs) == len(old_rows) + 1


# ------------------------------------------------------------------------------------------------------ warm start

TRAIN = ["--model", "gmf", "-f", "8", "-b", "64", "--eval_protocol", "full", "-k", "5", "--device", "cpu"]


@pytest.fixture(scope="module")
def old_run(grown, tmp_path_factory):
    folder = tmp_path_factory.mktemp("old_run")
    assert ncf.main(["--data", str(grown / "old"), *TRAIN, "-e", "3", "-l", "0.01", "--checkpoint_dir",
                     str(folder)]) == 0
    return folder / "best.pt"


def test_a_warm_start_grows_the_tables_keeps_the_old_rows_and_carries_the_settings(grown, old_run, tmp_path,
                                                                                    capsys):
    capsys.readouterr()
    assert ncf.main(["--data", str(grown / "new"), "--warm_start", str(old_run), "-e", "1", "--lr_schedule",
                     "constant", "--checkpoint_dir", str(tmp_path / "warm")]) == 0
    out = capsys.readouterr().out
    assert "grown for 8 new users" in out and "model: gmf" in out
    config = json.loads((tmp_path / "warm" / "log.json").read_text().splitlines()[0])
    assert config["factors"] == 8 and config["learning_rate"] == 0.01 and config["batch_size"] == 64  # carried
    assert config["eval_protocol"] == "full" and config["topk"] == 5 and config["lr_schedule"] == "constant"

    # The grown model before training: the checkpoint's rows, then a fresh model's rows (same seed).
    state = warm.load(old_run)
    new_args = state["model_args"] | {"num_users": 48, "num_items": len(id_map(grown / "new", "items"))}
    torch.manual_seed(0)
    fresh = checkpoint.build_model("gmf", **new_args).state_dict()
    torch.manual_seed(0)
    model, words = warm.grown_model(state, old_run, "gmf", new_args)
    grown_state = model.state_dict()
    for name in ("user_embedding.weight", "item_embedding.weight"):
        old_rows = state["state_dict"][name].shape[0]
        assert torch.equal(grown_state[name][:old_rows], state["state_dict"][name])
        assert torch.equal(grown_state[name][old_rows:], fresh[name][old_rows:])
    assert torch.equal(grown_state["output.weight"], state["state_dict"]["output.weight"])
    # --warm_shrink: 1 by default for a model scoring by cosine (the full-ranking GMF above), 0.5 for any other; the
    # checkpoint's weights multiplied, the new rows fresh.
    assert "multiplied" not in out
    assert warm.shrink_of(None, {"similarity": "cosine"}) == 1 and warm.shrink_of(None, {"similarity": "dot"}) == 0.5
    assert warm.shrink_of(None, {}) == 0.5 and warm.shrink_of(0.7, {"similarity": "cosine"}) == 0.7
    capsys.readouterr()
    assert ncf.main(["--data", str(grown / "new"), "--warm_start", str(old_run), "-e", "1", "--similarity", "dot",
                     "--loss", "bce", "--checkpoint_dir", str(tmp_path / "dot")]) == 0
    assert "its weights multiplied by 0.5 (--warm_shrink)" in capsys.readouterr().out
    # A buffer is no learned weight: a rating model's mean rating is kept as saved.
    rating_args = {"num_users": 4, "num_items": 5}
    rating = checkpoint.build_model("biasmf", **rating_args)
    rating.mean.fill_(3.5)
    rating_state = {"model_args": rating_args, "state_dict": rating.state_dict()}
    kept = warm.grown_model(rating_state, "biasmf.pt", "biasmf", rating_args | {"num_users": 6}, shrink=0.5)[0]
    assert kept.mean.item() == 3.5
    assert torch.equal(kept.user_embedding.weight[:4], 0.5 * rating.user_embedding.weight)
    torch.manual_seed(0)
    shrunk = warm.grown_model(state, old_run, "gmf", new_args, shrink=0.5)[0].state_dict()
    for name, value in state["state_dict"].items():
        assert torch.equal(shrunk[name][:value.shape[0]], 0.5 * value)
    assert torch.equal(shrunk["item_embedding.weight"][old_rows:], fresh["item_embedding.weight"][old_rows:])


def test_warm_epochs_follow_the_new_share_and_a_closed_form_is_solved_afresh(grown, old_run, tmp_path, capsys):
    capsys.readouterr()
    assert ncf.main(["--data", str(grown / "new"), "--warm_start", str(old_run), "--checkpoint_dir",
                     str(tmp_path / "warm")]) == 0
    out = capsys.readouterr().out
    share = 1 - warm.load(old_run)["ids"]["num_train"] / ncf.dataloading.load_dataset(str(grown / "new")).num_train
    found = re.search(r"epochs: (\d+) \(warm start: (\d+)% of the training pairs are new, so 2 x ([0-9.]+) x the "
                      r"(\d+) epochs of a fresh model", out)
    epochs, fresh = int(found.group(1)), int(found.group(4))
    assert int(found.group(2)) == round(100 * share) and fresh >= 10
    assert epochs == min(fresh, max(2, int(np.ceil(2 * share * fresh)))) < fresh
    assert len([line for line in out.splitlines() if line.startswith("epoch ")]) == epochs

    assert ncf.main(["--data", str(grown / "old"), "--model", "ease", "--ease_l2", "10", "--eval_protocol", "full",
                     "-k", "5", "--checkpoint_dir", str(tmp_path / "ease")]) == 0
    capsys.readouterr()
    assert ncf.main(["--data", str(grown / "new"), "--warm_start", str(tmp_path / "ease" / "best.pt"),
                     "--checkpoint_dir", str(tmp_path / "ease2")]) == 0
    out = capsys.readouterr().out
    assert "solved afresh" in out and "model: ease" in out
    assert torch.load(tmp_path / "ease2" / "best.pt", weights_only=True)["config"]["ease_l2"] == [10.0]


def test_a_warm_start_refuses_conflicting_flags_and_another_datasets_checkpoint(grown, old_run, planted_ratio,
                                                                                tmp_path, capsys):
    base = ["--data", str(grown / "new"), "--warm_start", str(old_run), "--checkpoint_dir", str(tmp_path / "x")]
    for flags, words in ((["--model", "mlp"], "--model mlp: --warm_start"), (["-f", "16"], "--factors 16"),
                         (["--mode", "test"], "--mode test")):
        with pytest.raises(SystemExit):
            ncf.main([*base, *flags])
        err = capsys.readouterr().err
        assert words in err.splitlines()[-1]
    # A checkpoint of an unrelated dataset: its ids are not a prefix of this one's.
    assert ncf.main(["--data", str(planted_ratio), *TRAIN, "-e", "1", "--checkpoint_dir", str(tmp_path / "other")]) \
        == 0
    capsys.readouterr()
    assert ncf.main(["--data", str(grown / "new"), "--warm_start", str(tmp_path / "other" / "best.pt"),
                     "--checkpoint_dir", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are not the first users of" in err[0]
    assert not (tmp_path / "y" / "best.pt").exists()


def test_a_resumed_warm_start_ends_as_an_uninterrupted_one(grown, old_run, tmp_path, monkeypatch):
    common = ["--data", str(grown / "new"), "--warm_start", str(old_run), "-e", "3"]
    assert ncf.main([*common, "--checkpoint_dir", str(tmp_path / "whole")]) == 0
    save = checkpoint.save_checkpoint

    def save_then_die(path, *args, **options):
        save(path, *args, **options)
        if Path(path).name == "last.pt" and args[5] == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ncf.main([*common, "--checkpoint_dir", str(tmp_path / "killed")])
    monkeypatch.undo()
    assert ncf.main([*common, "--checkpoint_dir", str(tmp_path / "killed"), "--resume"]) == 0
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["state_dict"]
    again = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["state_dict"]
    for name, value in whole.items():
        torch.testing.assert_close(again[name], value)


def test_recommend_serves_new_users_and_items_of_a_warm_started_checkpoint(grown, old_run, tmp_path, capsys):
    assert ncf.main(["--data", str(grown / "new"), "--warm_start", str(old_run), "-e", "2", "--checkpoint_dir",
                     str(tmp_path / "warm")]) == 0
    capsys.readouterr()
    new_item = id_map(grown / "new", "items")[-1]
    assert recommend.main(["--checkpoint", str(tmp_path / "warm" / "best.pt"), "--user", "u47", "-k", "3"]) == 0
    assert recommend.main(["--checkpoint", str(tmp_path / "warm" / "best.pt"), "--similar_to", new_item, "-k",
                           "2"]) == 0
    out = capsys.readouterr().out
    assert "user u47: top 3" in out and f"items nearest to {new_item}" in out
