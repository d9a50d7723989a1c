"""recommend.py: top-k in original ids with seen items left out, similar items, fold-in, exports, bad input."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import dataloading
import ncf
import recommend
from conftest import run_convert, shared_file
from ncflib import checkpoint, families, serving
from ncflib.checkpoint import load_model

NUM_USERS, NUM_ITEMS = 48, 30
TITLES = {1: "Star Wars (1977)", 2: "Star Trek: The Motion Picture (1979)", 3: "Return of the Jedi (1983)",
          4: "Fargo (1996)"}


def _title(item):
    return TITLES.get(item, f"Film {item} (19{50 + item})")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MovieLens-100K-style log with titles and two planted tastes (odd users like items 1-15, even users items
    16-30), converted and a GMF and a NeuMF trained on it: (folder, {kind: checkpoint path}, dataset)."""
    folder = tmp_path_factory.mktemp("recommend")
    raw = folder / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, NUM_USERS + 1):
        liked = np.arange(1, 16) if user % 2 else np.arange(16, 31)
        for step, item in enumerate(rng.choice(liked, size=9, replace=False)):
            rows.append(f"{user}\t{item}\t4\t{1000 + 10 * step + user}")
    (raw / "u.data").write_text("\n".join(rows) + "\n")
    (raw / "u.item").write_text("".join(f"{item}|{_title(item)}|01-Jan-1990||\n" for item in range(1, NUM_ITEMS + 1)),
                                encoding="latin-1")
    data = folder / "data"
    assert run_convert(["--path", raw / "u.data", "--output", data, "--valid_negative", "10"])[0] == 0
    checkpoints = {}
    for kind in ("gmf", "neumf"):
        assert ncf.main(["--data", str(data), "--model", kind, "-e", "12", "-b", "256", "-l", "0.01", "--lr_schedule",
                         "constant", "-f", "8", *(["--layers", "16", "8"] if kind == "neumf" else []),
                         "--checkpoint_dir", str(folder / kind)]) == 0
        checkpoints[kind] = folder / kind / "best.pt"
    return folder, checkpoints, dataloading.load_dataset(data)


def _run(capsys, *args):
    code = recommend.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _seen(dataset):
    """{user index: set of item indices} over training and held-out pairs."""
    seen = {}
    pairs = [(dataset.train_users, dataset.train_items),
             (torch.repeat_interleave(dataset.test.users, dataset.test.offsets.diff()), dataset.test.items)]
    for users, items in pairs:
        for user, item in zip(users.tolist(), items.tolist()):
            seen.setdefault(user, set()).add(item)
    return seen


@pytest.mark.parametrize("kind", ["gmf", "neumf"])
def test_every_users_list_leaves_out_what_they_saw_and_matches_a_brute_force_ranking(trained, kind, tmp_path,
                                                                                    capsys):
    _, checkpoints, dataset = trained
    output = tmp_path / "recs.csv"
    code, out, err = _run(capsys, "--checkpoint", checkpoints[kind], "--users", "all", "-k", "5", "--output", output)
    assert code == 0, err
    table = pd.read_csv(output, dtype={"user_id": str, "item_id": str})
    assert list(table.columns) == ["user_id", "rank", "item_id", "score", "title"]
    users, items = serving.catalogues(dataset)
    seen = _seen(dataset)
    model = load_model(checkpoints[kind], dataset).eval()
    every = torch.arange(dataset.num_items)
    assert table["user_id"].nunique() == dataset.num_users
    for user_id, rows in table.groupby("user_id", sort=False):
        user = users.user(user_id)
        listed = [items.item(item_id) for item_id in rows["item_id"]]
        assert not set(listed) & seen[user]  # nothing the user has interacted with
        assert list(rows["rank"]) == list(range(1, 6))
        with torch.no_grad():
            scores = model(torch.full_like(every, user), every)
        scores[list(seen[user])] = -math.inf
        assert np.allclose(rows["score"], torch.sort(scores, descending=True).values[:5].numpy(), atol=1e-4)
        assert list(rows["title"]) == [items.title(item) for item in listed]


def test_one_user_prints_titles_and_include_seen_keeps_their_items(trained, capsys):
    _, checkpoints, dataset = trained
    code, out, err = _run(capsys, "--checkpoint", checkpoints["gmf"], "--user", "1", "-k", "4")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("user 1: top 4 of 30 items") and lines[1].split() == ["rank", "item_id", "score",
                                                                                     "title"]
    assert len(lines) == 6 and all("(19" in line for line in lines[2:])
    users, items = serving.catalogues(dataset)
    seen = _seen(dataset)[users.user("1")]
    code, out, _ = _run(capsys, "--checkpoint", checkpoints["gmf"], "--user", "1", "-k", str(NUM_ITEMS - 1),
                        "--include_seen")
    listed = {items.item(line.split()[1]) for line in out.splitlines()[2:]}
    assert code == 0 and len(seen & listed) >= len(seen) - 1  # at most one seen item falls out of 29 of 30


def test_output_formats_hold_the_same_rows(trained, tmp_path, capsys):
    _, checkpoints, _ = trained
    tables = []
    for suffix in ("parquet", "csv", "jsonl"):
        output = tmp_path / f"recs.{suffix}"
        assert _run(capsys, "--checkpoint", checkpoints["neumf"], "--user", "2", "3", "--output", output)[0] == 0
        reader = {"parquet": pd.read_parquet, "csv": pd.read_csv,
                  "jsonl": lambda path: pd.read_json(path, lines=True)}[suffix]
        table = reader(output).astype({"user_id": str, "item_id": str, "score": float})
        tables.append(table)
        assert len(table) == 20 and list(table["user_id"].unique()) == ["2", "3"]
    for table in tables[1:]:
        pd.testing.assert_frame_equal(table, tables[0], check_exact=False, atol=1e-6)


def test_similar_items_by_title_are_nearest_by_cosine_and_leave_out_the_query(trained, capsys):
    _, checkpoints, dataset = trained
    code, out, err = _run(capsys, "--checkpoint", checkpoints["gmf"], "--similar_to", "star wars (1977)", "-k", "5")
    assert code == 0, err
    assert out.splitlines()[0] == ("items nearest to 1 (Star Wars (1977)) by cosine similarity of GMF factors x "
                                   "output weights")
    _, items = serving.catalogues(dataset)
    listed = [items.item(line.split()[1]) for line in out.splitlines()[2:]]
    model = load_model(checkpoints["gmf"], dataset)
    vectors = torch.nn.functional.normalize(model.item_embedding.weight * model.output.weight[0], dim=1).detach()
    cosine = vectors @ vectors[0]
    cosine[0] = -math.inf
    assert listed == torch.topk(cosine, 5).indices.tolist()
    # The planted tastes: Star Wars (item 1) sits among items 1-15, so its neighbours mostly do too.
    assert sum(index < 15 for index in listed) >= 4
    code, out, err = _run(capsys, "--checkpoint", checkpoints["neumf"], "--similar_to", "Jedi", "-k", "3")
    assert code == 0 and "GMF factors x output weights and MLP item embedding" in out.splitlines()[0]


@pytest.mark.parametrize("name, message", [
    ("Star", "matches 2 titles: 1 (Star Wars (1977)); 2 (Star Trek: The Motion Picture (1979))"),
    ("Casablanca", "neither an item id nor part of a title"),
])
def test_an_ambiguous_or_unknown_title_is_one_line_that_says_what_to_do(trained, capsys, name, message):
    _, checkpoints, _ = trained
    code, out, err = _run(capsys, "--checkpoint", checkpoints["gmf"], "--similar_to", name)
    assert code == 1 and out == "" and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["gmf", "neumf"])
def test_fold_in_is_deterministic_leaves_the_model_alone_and_finds_the_users_taste(trained, kind, capsys):
    _, checkpoints, dataset = trained
    # The model after all its epochs (last.pt): HR@10 among 11 candidates is at its top from the first epochs on, so
    # best.pt holds a barely trained NeuMF whose tastes are too faint for a fold-in to find reliably (2-3 seeds of 5).
    model = load_model(checkpoints[kind].with_name("last.pt"), dataset).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainable = [parameter.requires_grad for parameter in model.parameters()]
    history = torch.tensor([0, 2, 4, 6, 8])  # items 1, 3, 5, 7, 9: the odd users' taste
    first = serving.fold_in(model, history, dataset.num_items, 50, 0.05, 4, seed=3)
    again = serving.fold_in(model, history, dataset.num_items, 50, 0.05, 4, seed=3)
    assert torch.equal(first, again)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert [parameter.requires_grad for parameter in model.parameters()] == trainable
    first[history] = -math.inf
    assert (torch.topk(first, 5).indices < 15).all()  # the rest of that taste, nothing of the other
    code, out, err = _run(capsys, "--checkpoint", checkpoints[kind], "--history", "1", "Jedi", "5", "-k", "3")
    assert code == 0, err
    assert out.startswith("a new user with 3 items: top 3 of 30 items by fold-in (50 steps), answered in ")
    assert len(out.splitlines()) == 5


@pytest.mark.parametrize("loss, layout", [(["--loss", "softmax", "--shared_negatives", "16"], "shared"),
                                          (["--loss", "bpr", "--shared_negatives", "0"], "blocks")])
def test_fold_in_fits_with_the_loss_the_run_trained_with(trained, tmp_path, loss, layout, capsys):
    folder, _, dataset = trained
    assert ncf.main(["--data", str(folder / "data"), "--model", "gmf", "-e", "12", "-b", "64", "-l", "0.01", "-f", "8",
                     *loss, "--checkpoint_dir", str(tmp_path / "run")]) == 0
    state = checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")
    model = load_model(tmp_path / "run" / "last.pt", dataset).eval()
    function, found = families.family_of("gmf").fold_in_loss(model, state["config"])
    assert found == layout
    history = torch.tensor([1, 3, 5, 7, 9])  # items 2, 4, 6, 8, 10: the odd users' taste
    scores = serving.fold_in(model, history, dataset.num_items, 50, 0.05, 4, seed=3, loss=(function, found))
    assert torch.equal(scores, serving.fold_in(model, history, dataset.num_items, 50, 0.05, 4, seed=3,
                                               loss=(function, found)))
    scores[history] = -math.inf
    assert (torch.topk(scores, 5).indices < 15).all()
    # A checkpoint written before the loss was recorded folds in with its model's own loss, and says so.
    del state["config"]["loss"]
    torch.save(state, tmp_path / "old.pt")
    capsys.readouterr()
    code, out, err = _run(capsys, "--checkpoint", tmp_path / "old.pt", "--data", folder / "data", "--history", "2",
                          "4", "-k", "3")
    assert code == 0, err
    assert out.startswith("note: the checkpoint records no --loss (written by an earlier version): folding in with "
                          "the gmf model's own loss")


def test_export_reproduces_gmf_scores_and_onnx_equals_pytorch(trained, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    _, checkpoints, dataset = trained
    folder = tmp_path / "export"
    code, out, err = _run(capsys, "--checkpoint", checkpoints["gmf"], "--export", folder)
    assert code == 0, err
    assert sorted(path.name for path in folder.iterdir()) == [
        "export.json", "item_embedding.npy", "items.csv", "model.onnx", "output_bias.npy", "output_weight.npy",
        "user_embedding.npy", "users.csv"]
    users, items = np.load(folder / "user_embedding.npy"), np.load(folder / "item_embedding.npy")
    weight, bias = np.load(folder / "output_weight.npy"), np.load(folder / "output_bias.npy")
    model = load_model(checkpoints["gmf"], dataset).eval()
    every_user = torch.arange(dataset.num_users).repeat_interleave(dataset.num_items)
    every_item = torch.arange(dataset.num_items).repeat(dataset.num_users)
    with torch.no_grad():
        expected = model(every_user, every_item).numpy()
    by_hand = (users[every_user.numpy()] * items[every_item.numpy()]) @ weight[0] + bias[0]
    np.testing.assert_allclose(by_hand, expected, rtol=1e-5, atol=1e-6)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"user": every_user.numpy(), "item": every_item.numpy()})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    table = pd.read_csv(folder / "items.csv", dtype=str)
    assert list(table.columns) == ["index", "original_id", "title"] and table["title"][0] == "Star Wars (1977)"
    description = json.loads((folder / "export.json").read_text())
    assert description["model"] == "gmf" and description["files"]["user_embedding.npy"]["shape"] == [NUM_USERS, 8]
    assert "largest difference" in out


def test_neumf_exports_to_onnx_with_pytorchs_scores(trained, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    _, checkpoints, dataset = trained
    folder = tmp_path / "neumf"
    assert _run(capsys, "--checkpoint", checkpoints["neumf"], "--export", folder)[0] == 0
    users, items = torch.arange(NUM_USERS).repeat(3), torch.randint(NUM_ITEMS, (3 * NUM_USERS,))
    with torch.no_grad():
        expected = load_model(checkpoints["neumf"], dataset).eval()(users, items).numpy()
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"user": users.numpy(), "item": items.numpy()})[0], expected,
                               rtol=1e-5, atol=1e-5)


def _bad_input_cases(folder, checkpoints):
    other = folder / "other"
    return [
        (["--user", "9999"], "user '9999' is not in", "--history"),
        (["--history", "nothing like it"], "neither an item id nor part of a title", None),
        (["--user", "1", "-k", "31"], "-k/--topk 31 is larger than the catalogue (30 items)", None),
        (["--user", "1", "--output", folder / "missing" / "recs.csv"], "does not exist", None),
        (["--user", "1", "--output", folder / "a folder.csv"], "is a folder", None),
        (["--user", "1", "--data", other], "trained on another dataset", "--data"),
        (["--users", folder / "users.txt", "--output", folder / "recs.csv"], "users.txt, line 3: user 'nobody'",
         None),
        (["--export", folder / "raw"], "is not an empty folder", None),
        (["--user", "1", "--checkpoint", folder / "nothing.pt"], "no such checkpoint", None),
    ]


def test_bad_input_is_one_line_and_writes_nothing(trained, capsys):
    folder, checkpoints, _ = trained
    if not (folder / "other").exists():
        assert run_convert(["--synthetic", "20", "10", "200", "--output", folder / "other", "--valid_negative",
                            "3"])[0] == 0
    (folder / "a folder.csv").mkdir(exist_ok=True)
    (folder / "users.txt").write_text("user_id\n1\nnobody\n")
    for flags, message, advice in _bad_input_cases(folder, checkpoints):
        before = sorted(path.name for path in folder.rglob("*"))
        code, out, err = _run(capsys, "--checkpoint", checkpoints["gmf"], *flags)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (flags, err)
        assert advice is None or advice in err
        assert sorted(path.name for path in folder.rglob("*")) == before  # nothing written, nothing left behind


def test_flags_that_do_not_fit_stop_at_parsing(trained, capsys):
    _, checkpoints, _ = trained
    for flags in (["--users", "all"], ["--user", "1", "--output", "recs.txt"], ["--user", "1", "-k", "0"],
                  ["--user", "1", "--similar_to", "Fargo"], ["--history", "1", "--fold_in_lr", "nan"]):
        with pytest.raises(SystemExit) as stop:
            recommend.main(["--checkpoint", str(checkpoints["gmf"]), *flags])
        assert stop.value.code == 2


def test_ml100k_user_1_gets_ten_titles_they_have_not_seen(tmp_path, capsys):
    source = shared_file("ml-100k", "u.data")
    data = tmp_path / "ml100k"
    assert run_convert(["--path", source, "--output", data])[0] == 0
    assert ncf.main(["--data", str(data), "--model", "gmf", "-e", "2", "--checkpoint_dir", str(tmp_path / "ck")]) == 0
    capsys.readouterr()
    code, out, err = _run(capsys, "--checkpoint", tmp_path / "ck" / "best.pt", "--user", "1")
    assert code == 0, err
    dataset = dataloading.load_dataset(data)
    users, items = serving.catalogues(dataset)
    listed = [items.item(line.split()[1]) for line in out.splitlines()[2:]]
    assert len(listed) == 10 and not set(listed) & _seen(dataset)[users.user("1")]
    assert all(items.title(index) in out for index in listed)


def test_the_benchmarks_report_fold_in_agreement_and_export_time(trained, capsys):
    from bench import fold_in_bench, recommend_bench

    folder, checkpoints, _ = trained
    flags = ["--checkpoint", str(checkpoints["gmf"]), "--data", str(folder / "data")]
    assert fold_in_bench.main(flags + ["--users", "12", "-k", "5"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split(" | ")
    shared, popular = float(row[3].split(" +- ")[0]), float(row[4])
    assert row[1] == "12" and 0 <= popular <= 5 and popular < shared <= 5  # the planted taste beats popularity
    assert recommend_bench.main(flags + ["--output", "recs.csv", "--repeats", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split(" | ")
    assert row[2] == ".csv" and float(row[3]) > 0 and f"({NUM_USERS * 10 + 1:,} lines)" in row[5]
