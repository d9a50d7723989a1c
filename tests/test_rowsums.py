"""The sums of sparse rows behind RP3beta, and full ranking from a model's few nonzero scores (``SparseScorer``),
against sorts and dense matrices."""

import contextlib

import numpy as np
import pytest
import torch

from dataloading import HeldOut
from ncflib import rowsums
from ncflib.evaluation import full_sums, interactions_by_user
from ncflib.protocols import SparseScorer
from ncflib.rowsums import RowSums, grouped_top, ragged


def test_row_sums_equal_a_coalesced_sum_and_leave_the_buffer_clear():
    rng = np.random.default_rng(0)
    sums = RowSums(width=13, groups=4)
    assert sums.groups == 4
    for _ in range(3):  # passes reuse the buffer
        groups = torch.from_numpy(np.sort(rng.integers(0, 4, 200)))
        columns = torch.from_numpy(rng.integers(0, 13, 200))
        values = torch.from_numpy(rng.random(200))
        got_groups, got_columns, got_sums = sums(groups, columns, values)
        expected = torch.sparse_coo_tensor(torch.stack([groups, columns]), values, (4, 13), check_invariants=True).coalesce()
        assert len(set(zip(got_groups.tolist(), got_columns.tolist()))) == got_groups.numel()  # each pair once
        dense = torch.zeros(4, 13, dtype=torch.float64)
        dense[got_groups, got_columns] = got_sums
        torch.testing.assert_close(dense, expected.to_dense())
        assert torch.equal(got_groups, got_groups.sort().values)  # grouped as given
        assert not sums.total.any()


def test_rows_per_pass_follow_the_capacity(monkeypatch):
    monkeypatch.setattr(rowsums, "CAPACITY", 100)
    assert RowSums(width=30).groups == 3 and RowSums(width=30, groups=2).groups == 2 and RowSums(width=500).groups == 1


def test_ragged_slices():
    owners, positions = ragged(torch.tensor([5, 0, 9]), torch.tensor([2, 0, 3]))
    assert owners.tolist() == [0, 0, 2, 2, 2] and positions.tolist() == [5, 6, 9, 10, 11]


def test_grouped_top_keeps_each_groups_best():
    groups = torch.tensor([0, 0, 0, 2, 2, 3])
    columns = torch.tensor([4, 7, 1, 3, 8, 5])
    values = torch.tensor([0.5, 2.0, 1.0, 3.0, 1.0, 0.25])
    rows, places, kept, best = grouped_top(groups, columns, values, num_groups=4, keep=2)
    assert list(zip(rows.tolist(), places.tolist(), kept.tolist(), best.tolist())) == [
        (0, 0, 7, 2.0), (0, 1, 1, 1.0), (2, 0, 3, 3.0), (2, 1, 8, 1.0), (3, 0, 5, 0.25)]


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
    monkeypatch.setattr(rowsums, "CAPACITY", capacity)
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
