"""GF-CF: the graph filter against its definition in numpy, and through ncf.py and recommend.py."""

import json

import numpy as np
import pytest
import torch

import ncf
import recommend
from ncflib.checkpoint import load_model
from ncflib.gfcf import GFCF, parse_setting


def graph_filter(matrix, alpha, rank, rows=None):
    """GF-CF's scores of ``rows`` (default every user's row of ``matrix``) by its definition (dense numpy): the
    linear filter x R^T R and the ideal low-pass filter of R's ``rank`` leading right singular vectors,
    R = D_u^-1/2 X D_i^-1/2."""
    rows = matrix if rows is None else rows
    user_scale = np.maximum(matrix.sum(1), 1) ** -0.5
    degree = matrix.sum(0)
    item_scale = np.where(degree > 0, np.maximum(degree, 1) ** -0.5, 0.0)
    normalised = matrix * user_scale[:, None] * item_scale
    vectors = np.linalg.svd(normalised)[2][:rank].T
    inverse = np.where(item_scale > 0, 1 / np.where(item_scale > 0, item_scale, 1), 0.0)
    return rows @ normalised.T @ normalised + alpha * ((rows * item_scale) @ vectors @ vectors.T) * inverse


@pytest.mark.parametrize("setting", [(0.3, 4), (0.0, 2), (1.0, 9)])
def test_gfcf_equals_its_definition(setting):
    rng = np.random.default_rng(0)
    matrix = (rng.random((12, 9)) < 0.4).astype(np.float64)
    matrix[3] = 0.0  # a user with no items
    matrix[:, 5] = 0.0  # an item no training pair holds: scored 0 by the low-pass filter, not inf
    users, items = (torch.from_numpy(index) for index in np.nonzero(matrix))
    model = GFCF(12, 9, len(users), rank=9)
    assert model.solve(users, items, setting) == {"alpha": setting[0], "rank": setting[1]}
    expected = graph_filter(matrix, *setting)
    np.testing.assert_allclose(model.score_all(torch.arange(12)).numpy(), expected, atol=2e-5)
    shuffled = torch.tensor([5, 3, 0, 5])
    np.testing.assert_allclose(model.score_all(shuffled).numpy(), expected[shuffled.numpy()], atol=2e-5)
    history = np.zeros((1, 9))  # a new user's items: filtered by the training users' R, as any row of X
    history[0, [1, 4]] = 1.0
    np.testing.assert_allclose(model.score_history(torch.tensor([1, 4])).numpy(),
                               graph_filter(matrix, *setting, rows=history)[0], atol=2e-5)


@pytest.mark.parametrize("text, message", [("0.3", "is not ALPHA,RANK"), ("-1,8", "alpha must be in"),
                                           ("0.3,0", "rank at least 1")])
def test_a_setting_names_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_setting(text)


def test_gfcf_trains_tests_and_recommends(planted_ratio, tmp_path, capsys):
    folder = tmp_path / "gfcf"
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "--model", "gfcf",
                     "--gfcf_grid", "0,4", "0.3,8", "--checkpoint_dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "GF-CF settings: 0,4; 0.3,8 (given, one an epoch)" in out and "GF-CF memory:" in out
    assert "GF-CF SVD: about" in out and "once for every setting" in out  # (estimated before it starts)
    records = [json.loads(line) for line in (folder / "log.json").read_text().splitlines()]
    # A solve's seconds say nothing of its pairs: no throughput is recorded for it.
    assert not any("train_throughput" in record for record in records if record["type"] == "epoch")
    assert [(record["alpha"], record["rank"]) for record in records if record["type"] == "epoch"] == [(0.0, 4),
                                                                                                      (0.3, 8)]
    best = records[-1]["best_metrics"]
    assert best["recall@5"] >= 0.9
    # A loaded checkpoint scores as the trained model did (R rebuilt from its pairs), under --mode test too.
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "--mode", "test",
                     "--load_checkpoint_path", str(folder / "best.pt"), "--log_path", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text().splitlines()[-1])["recall@5"] == pytest.approx(
        best["recall@5"])
    capsys.readouterr()
    assert recommend.main(["--checkpoint", str(folder / "best.pt"), "--history", "31", "32", "33", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "from their items" in lines[0] and all(int(line.split()[1]) // 10 == 3 for line in lines[2:5])
    # Similar items: the filter's scores for a user who has item 31 alone (its group's items).
    assert recommend.main(["--checkpoint", str(folder / "best.pt"), "--similar_to", "31", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "by the scores of a user who has that one item" in lines[0]
    assert all(int(line.split()[1]) // 10 == 3 for line in lines[2:5])
    assert recommend.main(["--checkpoint", str(folder / "best.pt"), "--export", str(tmp_path / "x"), "--no_onnx"]) == 0
    model = load_model(folder / "best.pt")
    assert np.array_equal(np.load(tmp_path / "x" / "singular_vectors.npy"), model.singular_vectors.numpy())
    with pytest.raises(SystemExit):
        ncf.parse_args(["--model", "gmf", "--gfcf_grid", "0.3,8"])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "--gfcf_grid is used by gfcf; --model gmf does not read it")


def test_the_svd_waits_for_a_setting_that_needs_it_and_is_kept_for_the_next():
    rng = np.random.default_rng(1)
    matrix = (rng.random((12, 9)) < 0.4).astype(np.float64)
    users, items = (torch.from_numpy(index) for index in np.nonzero(matrix))
    model = GFCF(12, 9, len(users), rank=4)
    model.solve(users, items, (0.0, 4))  # the linear filter alone: no SVD
    assert not model.singular_vectors.any()
    model.solve(users, items, (0.3, 4))
    vectors = model.singular_vectors.clone()
    assert vectors.any()
    np.testing.assert_allclose(model.score_all(torch.arange(12)).numpy(), graph_filter(matrix, 0.3, 4), atol=2e-5)
    model.solve(users, items, (0.6, 2))  # the same pairs: the same vectors, their leading columns taken
    assert torch.equal(model.singular_vectors, vectors)
