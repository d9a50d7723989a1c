"""RP3beta's top neighbours per row, and full ranking from a model's few nonzero scores (``SparseScorer``), against
sorts and dense matrices."""

import contextlib

import numpy as np
import pytest
import torch

from dataloading import HeldOut
from ncflib import evaluation
from ncflib.evaluation import full_sums, interactions_by_user
from ncflib.protocols import SparseScorer
from ncflib.rp3beta import row_top


def test_row_top_keeps_each_rows_best():
    # Rows of 3, 0, 2, 1 and 3 entries; a row's skipped column is never kept (row 2's 8, row 4's 6, which makes
    # room for the next). Rows longer than keep are ranked, best first; the others keep their entries in place.
    offsets = torch.tensor([0, 3, 3, 5, 6, 9])
    columns = torch.tensor([4, 7, 1, 3, 8, 5, 6, 2, 9])
    values = torch.tensor([0.5, 2.0, 1.0, 3.0, 9.0, 0.25, 5.0, 1.5, 0.5], dtype=torch.float64)
    rows, places, kept, best = row_top(offsets, columns, values, keep=2, skip=torch.tensor([0, 0, 8, 0, 6]))
    assert sorted(zip(rows.tolist(), places.tolist(), kept.tolist(), best.tolist())) == [
        (0, 0, 7, 2.0), (0, 1, 1, 1.0), (2, 0, 3, 3.0), (3, 0, 5, 0.25), (4, 0, 2, 1.5), (4, 1, 9, 0.5)]


@pytest.mark.parametrize("keep", [1, 3, 50])
def test_row_top_agrees_with_a_sort_of_each_row(keep):
    # Rows of many lengths (groups by powers of two), distinct values: each row's top values and their columns.
    rng = np.random.default_rng(keep)
    counts = rng.integers(0, 120, 40)
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]))
    values = torch.from_numpy(rng.permutation(int(counts.sum())).astype(np.float64))
    columns = torch.from_numpy(rng.integers(0, 1000, int(counts.sum())))
    rows, places, kept, best = row_top(offsets, columns, values, keep)
    for row in range(40):
        low, high = int(offsets[row]), int(offsets[row + 1])
        mine = rows == row
        if high - low <= keep:
            assert sorted(best[mine].tolist()) == sorted(values[low:high].tolist())
        else:
            order = values[low:high].argsort(descending=True)[:keep]
            assert best[mine].tolist() == values[low:high][order].tolist()
            assert places[mine].tolist() == list(range(keep))
        assert kept[mine].tolist() == [int(columns[low + int((values[low:high] == value).nonzero())])
                                       for value in best[mine].tolist()]


class Listed:
    """A SparseScorer over a fixed score matrix (its nonzero entries listed, some zeros listed too)."""

    def __init__(self, matrix):
        self.matrix, self.num_items = matrix, matrix.shape[1]

    def score_entries(self, users):
        block = self.matrix[users]
        listed = (block != 0) | (torch.arange(self.num_items) % 5 == 0)  # (explicit zeros are allowed)
        rows, items = listed.nonzero(as_tuple=True)
        return rows, items, block[rows, items]


class Dense:
    def __init__(self, matrix):
        self.matrix = matrix

    def score_all(self, users):
        return self.matrix[users].clone()


@pytest.mark.parametrize("num_items, capacity", [(7, 2**25), (7, 14), (60, 2**25), (60, 60)])
def test_full_ranking_of_listed_scores_equals_the_dense_ranking(monkeypatch, num_items, capacity):
    # Ties, zeros, held-out items scoring 0, catalogues with fewer than k + 1 unlisted candidates (7 items, k = 5),
    # two sets of seen items, and chunks of one or two users: the compact rows give the dense rows' sums.
    monkeypatch.setattr(evaluation, "COMPACT_ENTRIES", capacity)
    rng = np.random.default_rng(num_items)
    num_users, topk = 30, 5
    matrix = torch.from_numpy(rng.choice([0.0, 0.0, 0.0, 0.5, 1.0, 2.0], (num_users, num_items))).float()
    assert isinstance(Listed(matrix), SparseScorer) and not isinstance(Dense(matrix), SparseScorer)
    pairs = np.argwhere(rng.random((num_users, num_items)) < 0.5)
    train, held_pairs, valid = pairs[pairs[:, 1] % 3 == 0], pairs[pairs[:, 1] % 3 == 1], pairs[pairs[:, 1] % 3 == 2]
    seen = [interactions_by_user(torch.from_numpy(part[:, 0]), torch.from_numpy(part[:, 1]), num_users)
            for part in (train, valid)]
    held = HeldOut.from_pairs(held_pairs)
    compact = full_sums(Listed(matrix), held, seen, topk, 4, contextlib.nullcontext)
    dense = full_sums(None, held, seen, topk, 4, contextlib.nullcontext, score=Dense(matrix).score_all)
    torch.testing.assert_close(compact, dense, rtol=0, atol=1e-12)
    assert compact[0] > 0  # (some hits)
