"""Full-ranking evaluation: known answers from hand-made scores, excluded training items, ties, sharding, and a
brute-force reference on random data."""

import contextlib
import math

import numpy as np
import pytest
import torch

from dataloading import HeldOut
from ncflib import evaluation


class FixedScores:
    """A stand-in model whose score for (user, item) is a given matrix's entry."""

    def __init__(self, scores):
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def eval(self):
        return self

    def score_all(self, users):
        return self.scores[users].clone()


def held_out(pairs):
    return HeldOut.from_pairs(np.array(pairs, dtype=np.int64))


def seen_of(pairs, num_users):
    pairs = torch.tensor(pairs, dtype=torch.int64)
    return [evaluation.interactions_by_user(pairs[:, 0], pairs[:, 1], num_users)]


def metrics(scores, test_pairs, train_pairs, k, users_per_chunk=7):
    scores = torch.as_tensor(scores, dtype=torch.float32)
    return evaluation.full_metrics(FixedScores(scores), held_out(test_pairs), seen_of(train_pairs, scores.shape[0]),
                                   scores.shape[1], k, users_per_chunk, contextlib.nullcontext)


# User 0 trained on item 0 (scored highest, so excluded) and holds out items 1 and 3; user 1 trained on item 2 and
# holds out item 5, tied with items 3 and 4.
SCORES = [[9, 5, 7, 3, 1, 0], [0, 1, 9, 2, 2, 2]]
TEST, TRAIN = [(0, 1), (0, 3), (1, 5)], [(0, 0), (1, 2)]


def test_known_answers_at_k_2():
    # User 0's candidates in order: items 2, 1, 3, 4, 5; its test items sit at positions 1 and 2. User 1's item 5
    # ties with items 3 and 4, so two candidates count as ahead of it: position 2, a miss at k = 2.
    result = metrics(SCORES, TEST, TRAIN, 2)
    ndcg_0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert result["hr@2"] == pytest.approx(0.5) and result["recall@2"] == pytest.approx(0.25)
    assert result["ndcg@2"] == pytest.approx(ndcg_0 / 2) and result["mrr@2"] == pytest.approx(0.25)
    assert result["eval_samples"] == 2 * 6


def test_known_answers_at_k_3():
    result = metrics(SCORES, TEST, TRAIN, 3)
    ndcg_0 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_1 = (1 / math.log2(4)) / 1
    assert result["hr@3"] == pytest.approx(1.0) and result["recall@3"] == pytest.approx((1 + 1) / 2)
    assert result["ndcg@3"] == pytest.approx((ndcg_0 + ndcg_1) / 2)
    assert result["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_training_items_are_never_candidates_nor_hits():
    # Every training item scores highest; a test item is the best of the rest, so it is first.
    scores = [[10, 10, 10, 1, 0, 0]]
    result = metrics(scores, [(0, 3)], [(0, 0), (0, 1), (0, 2)], 1)
    assert result["hr@1"] == 1.0 and result["mrr@1"] == 1.0
    # A held-out item that is also a training item (possible in given splits) is excluded: never a hit.
    result = metrics(scores, [(0, 0)], [(0, 0), (0, 1), (0, 2)], 3)
    assert result["hr@3"] == 0.0 and result["ndcg@3"] == 0.0


def test_a_constant_model_scores_zero():
    result = metrics(np.zeros((3, 8)), [(0, 1), (1, 2), (1, 5), (2, 7)], [(0, 0), (1, 1), (2, 2)], 5)
    assert all(value == 0.0 for key, value in result.items() if key != "eval_samples")


def reference(scores, test_pairs, train_pairs, k):
    """The metrics by the definitions, with a full sort per user and ties counted against the held-out item."""
    scores = np.asarray(scores, dtype=np.float64)
    totals = np.zeros(4)
    users = sorted({user for user, _ in test_pairs})
    for user in users:
        held = [item for u, item in test_pairs if u == user]
        seen = {item for u, item in train_pairs if u == user}
        candidates = [item for item in range(scores.shape[1]) if item not in seen]
        positions = []
        for item in held:
            if item in seen:
                continue
            score = scores[user, item]
            positions.append(sum(1 for other in candidates if other != item and scores[user, other] >= score))
        hits = [p for p in positions if p < k]
        ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(held))))
        totals += [bool(hits), len(hits) / len(held), sum(1 / math.log2(p + 2) for p in hits) / ideal,
                   1 / (min(hits) + 1) if hits else 0.0]
    return totals / len(users)


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_a_brute_force_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    num_users, num_items, k = 13, 17, 5
    scores = rng.integers(0, 6, (num_users, num_items)).astype(np.float32)  # many ties
    pairs = [(u, i) for u in range(num_users) for i in rng.choice(num_items, rng.integers(2, 9), replace=False)]
    rng.shuffle(pairs)
    train_pairs = pairs[: len(pairs) * 2 // 3]
    test_pairs = sorted(pairs[len(pairs) * 2 // 3:])
    result = metrics(scores, test_pairs, train_pairs, k, users_per_chunk=4)
    expected = reference(scores, test_pairs, train_pairs, k)
    got = [result[f"{name}@{k}"] for name in ("hr", "recall", "ndcg", "mrr")]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_ranks_together_equal_one_process(world_size):
    rng = np.random.default_rng(7)
    scores = torch.tensor(rng.random((11, 9)), dtype=torch.float32)
    test_pairs = sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, 11, 30), rng.integers(0, 9, 30))})
    train_pairs = [(u, (i + 1) % 9) for u, i in test_pairs]
    model, held, seen = FixedScores(scores), held_out(test_pairs), seen_of(train_pairs, 11)
    whole = evaluation.full_sums(model, held, seen, 4, 3, contextlib.nullcontext)
    shards = sum(evaluation.full_sums(model, held, seen, 4, 3, contextlib.nullcontext, rank, world_size)
                 for rank in range(world_size))
    torch.testing.assert_close(shards, whole)


def test_top_k_returns_the_best_items_in_order():
    scores = torch.tensor([[0.1, 0.9, -math.inf, 0.5], [1.0, 2.0, 3.0, 4.0]])
    values, items = evaluation.top_k(scores, 2)
    assert items.tolist() == [[1, 3], [3, 2]] and values[0].tolist() == pytest.approx([0.9, 0.5])
    assert evaluation.top_k(scores, 10)[1].shape == (2, 4)  # k larger than the catalogue: every item
