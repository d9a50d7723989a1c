"""RP3beta: the sparse item-item walk against its definition in numpy, and through ncf.py and recommend.py."""

import json
import math

import numpy as np
import pytest
import scipy.sparse
import torch

import dataloading
import ncf
import recommend
from ncflib import serving
from ncflib.checkpoint import load_model
from ncflib.rp3beta import RP3beta, parse_setting


def walk(matrix, alpha, beta):
    """RP3beta's W by its definition (dense numpy): the three-step walk, the popularity penalty, no self-walk."""
    user_degree, item_degree = np.maximum(matrix.sum(1), 1), np.maximum(matrix.sum(0), 1)
    weights = ((matrix / item_degree) ** alpha).T @ ((matrix / user_degree[:, None]) ** alpha) / item_degree ** beta
    np.fill_diagonal(weights, 0.0)
    return weights


@pytest.mark.parametrize("setting", [(0.8, 0.3, 3), (1.0, 0.0, 6), (0.5, 0.6, 1)])
def test_rp3beta_equals_its_definition(setting):
    rng = np.random.default_rng(2)
    matrix = (rng.random((11, 7)) < 0.4).astype(np.float64)
    matrix[4] = 0.0  # a user with no items scores 0 everywhere
    users, items = (torch.from_numpy(index) for index in np.nonzero(matrix))
    model = RP3beta(11, 7, len(users), neighbours=6)
    assert model.solve(users, items, setting) == {"alpha": setting[0], "beta": setting[1], "neighbours": setting[2]}
    full, keep = walk(matrix, *setting[:2]), setting[2]
    # Each item keeps its ``keep`` largest weights of W (which of equal weights is kept is torch.topk's choice).
    kept = np.zeros_like(full)
    for row in range(7):
        chosen = model.neighbour_items[row, :keep].numpy()
        assert np.allclose(np.sort(full[row, chosen]), np.sort(full[row])[::-1][:keep][::-1], atol=1e-6)
        np.testing.assert_allclose(model.neighbour_weights[row, :keep].numpy(), full[row, chosen], rtol=1e-5)
        kept[row, chosen] = full[row, chosen]
    expected = matrix @ kept  # a user's scores: their items' kept rows of W, summed
    np.testing.assert_allclose(model.score_all(torch.arange(11)).numpy(), expected, rtol=1e-5, atol=1e-6)
    shuffled = torch.tensor([5, 4, 0, 5, 10])  # any order, repeats: each row is its own user's
    np.testing.assert_allclose(model.score_all(shuffled).numpy(), expected[shuffled.numpy()], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score_history(torch.tensor([1, 3])).numpy(), kept[[1, 3]].sum(0), rtol=1e-5,
                               atol=1e-6)


def test_the_blocks_of_source_items_do_not_change_the_weights(monkeypatch):
    from ncflib import rp3beta

    rng = np.random.default_rng(3)
    matrix = (rng.random((30, 25)) < 0.3).astype(np.float64)
    users, items = (torch.from_numpy(index) for index in np.nonzero(matrix))
    whole = RP3beta(30, 25, len(users), neighbours=5)
    whole.solve(users, items, (0.7, 0.4, 5))
    monkeypatch.setattr(rp3beta, "BLOCK_ENTRIES", 60)  # blocks of 2 source items, the last one short
    blocked = RP3beta(30, 25, len(users), neighbours=5)
    blocked.solve(users, items, (0.7, 0.4, 5))
    assert torch.allclose(whole.neighbour_weights, blocked.neighbour_weights)
    assert torch.equal(whole.score_all(torch.arange(30)).argsort(1), blocked.score_all(torch.arange(30)).argsort(1))


@pytest.mark.parametrize("text, message", [("1,0.5", "is not ALPHA,BETA,NEIGHBOURS"),
                                           ("0,0.5,10", "alpha must be in (0, 10]"),
                                           ("1,-1,10", "beta in [0, 10]"), ("1,0.5,0", "neighbours at least 1")])
def test_a_setting_names_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_setting(text)


def test_rp3beta_trains_tests_resumes_and_recommends(planted_ratio, tmp_path, capsys):
    folder = tmp_path / "rp3"
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "--model", "rp3beta",
                     "--rp3_grid", "0.5,0,4", "1,0.5,8", "--checkpoint_dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "RP3beta settings: 0.5,0,4; 1,0.5,8 (given, one an epoch)" in out and "RP3beta memory:" in out
    assert "RP3beta solve: about 0 s a setting (0 s in all)" in out and " walk steps a setting" in out
    records = [json.loads(line) for line in (folder / "log.json").read_text().splitlines()]
    epochs = [record for record in records if record["type"] == "epoch"]
    assert [(record["alpha"], record["beta"], record["neighbours"]) for record in epochs] == [(0.5, 0.0, 4),
                                                                                              (1.0, 0.5, 8)]
    best = records[-1]["best_metrics"]
    assert best["recall@5"] >= 0.9  # the held-out items are the user's group's
    # --mode test gives the same figure; a resume of the finished run solves nothing more.
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "--mode", "test",
                     "--load_checkpoint_path", str(folder / "best.pt"), "--log_path", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text().splitlines()[-1])["recall@5"] == pytest.approx(
        best["recall@5"])
    capsys.readouterr()
    model = load_model(folder / "best.pt")
    dataset = dataloading.load_dataset(planted_ratio)
    users, items = serving.catalogues(dataset)
    # A new user from their items alone: the rest of that group.
    assert recommend.main(["--checkpoint", str(folder / "best.pt"), "--history", "31", "32", "33", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "from their items" in lines[0] and all(int(line.split()[1]) // 10 == 3 for line in lines[2:5])
    # Similar items: item 31's row of W, by the scores of a user who has that one item (its group's items).
    assert recommend.main(["--checkpoint", str(folder / "best.pt"), "--similar_to", items.ids[31], "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "by the scores of a user who has that one item" in lines[0]
    row = model.score_history(torch.tensor([31]))
    row[31] = -math.inf
    assert [line.split()[1] for line in lines[2:5]] == [items.ids[item] for item in row.topk(3).indices.tolist()]
    assert all(int(line.split()[1]) // 10 == 3 for line in lines[2:5])
    # A user's top-k: the model's scores, seen items left out.
    assert recommend.main(["--checkpoint", str(folder / "best.pt"), "--user", users.ids[0], "-k", "2"]) == 0
    top = [line.split()[1] for line in capsys.readouterr().out.splitlines()[2:4]]
    scores = model.score_all(torch.tensor([0]))[0]
    seen = serving.known_interactions(dataset, torch.device("cpu"))
    scores[seen[1][seen[0][0]:seen[0][1]]] = -math.inf
    assert set(top) == {items.ids[item] for item in scores.topk(2).indices.tolist()}
    # --export: its neighbours, their weights and its users' items.
    assert recommend.main(["--checkpoint", str(folder / "best.pt"), "--export", str(tmp_path / "x"), "--no_onnx"]) == 0
    assert np.array_equal(np.load(tmp_path / "x" / "neighbour_items.npy"), model.neighbour_items.numpy())
    assert "neighbour_weights[i, k]" in json.loads((tmp_path / "x" / "export.json").read_text())["score"]


def test_rp3beta_flags_are_its_own_and_checked(capsys):
    for flags, message in ((["--model", "gmf", "--rp3_grid", "1,0.5,10"], "--rp3_grid is used by rp3beta; --model "
                                                                          "gmf does not read it"),
                           (["--model", "rp3beta", "-e", "3"], "--epochs is used by"),
                           (["--model", "rp3beta", "--rp3_grid", "1,0.5"], "argument --rp3_grid: '1,0.5' is not "
                                                                            "ALPHA,BETA,NEIGHBOURS")):
        with pytest.raises(SystemExit):
            ncf.parse_args(flags)
        assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("block_entries", [2**24, 40, 1])
def test_blocks_do_not_change_the_neighbours(monkeypatch, block_entries):
    # Blocks bounded by their walks (BLOCK_ENTRIES: one block, a few items each, one item each) give each item's
    # neighbours of W: each kept target carries its own weight of W, and every target clearly above the last kept
    # one is kept (which of near-equal weights is kept is torch.topk's choice).
    import ncflib.rp3beta as rp3

    rng = np.random.default_rng(5)
    matrix = (rng.random((40, 30)) < rng.random(30) * 0.3).astype(np.float64)
    users, items = (torch.from_numpy(index) for index in np.nonzero(matrix))
    monkeypatch.setattr(rp3, "BLOCK_ENTRIES", block_entries)
    blocks = rp3.walk_blocks(scipy.sparse.csr_array(matrix.T), matrix.sum(1))
    assert blocks[0][0] == 0 and blocks[-1][1] == 30 and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert (len(blocks) == 1) == (block_entries == 2**24) and (len(blocks) == 30) == (block_entries == 1)
    model = RP3beta(40, 30, len(users), neighbours=8)
    model.solve(users, items, (0.7, 0.4, 8))
    full = walk(matrix, 0.7, 0.4)
    for row in range(30):
        kept = min(8, np.count_nonzero(full[row]))  # a row with fewer walks than places keeps them all
        assert np.count_nonzero(model.neighbour_weights[row].numpy()) == kept
        positive = model.neighbour_weights[row] > 0
        targets = model.neighbour_items[row][positive].numpy()
        np.testing.assert_allclose(model.neighbour_weights[row][positive].numpy(), full[row, targets], rtol=1e-6)
        assert (model.neighbour_items[row][~positive] == row).all()  # the places left: the item itself, weight 0
        if kept:
            last = np.sort(full[row])[::-1][kept - 1]
            assert set(np.flatnonzero(full[row] > last * (1 + 1e-5))) <= set(targets.tolist())
