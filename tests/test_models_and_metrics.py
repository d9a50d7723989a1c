"""neumf.py and the evaluation maths of dataloading.py: known answers and invariants."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

import dataloading
from ncflib import evaluation
from ncflib.checkpoint import build_model
from ncflib.data import splits
from neumf import GMF, MLP, NeuMF, linear_relu, lookup, relu_dropout

MODEL_KWARGS = {"gmf": dict(factors=8), "mlp": dict(layers=[16, 8, 4], dropout=0.0),
                "neumf": dict(factors=8, layers=[16, 8, 4], dropout=0.0)}


def test_hand_computed_hr_and_ndcg():
    # Three users, four negatives each. Ranks of the positive (0-based): 0, 2, 4 (ties count against it).
    positive = torch.tensor([0.9, 0.5, 0.1])
    negatives = torch.tensor([[0.1, 0.2, 0.3, 0.4],
                              [0.6, 0.5, 0.4, 0.3],  # 0.6 above, 0.5 ties -> rank 2
                              [0.2, 0.3, 0.4, 0.5]])
    mask = torch.ones_like(negatives, dtype=torch.bool)
    for k, expected_hits, expected_ndcg in ((1, 1, 1.0), (3, 2, 1.0 + 1 / math.log2(4)),
                                            (5, 3, 1.0 + 1 / math.log2(4) + 1 / math.log2(6))):
        hits, ndcg = evaluation.rank_metrics(positive, negatives, mask, k)
        assert int(hits) == expected_hits
        assert float(ndcg) == pytest.approx(expected_ndcg)


def test_constant_scores_give_zero():
    scores = torch.zeros(5, 100)
    hits, ndcg = evaluation.rank_metrics(scores[:, 0], scores[:, 1:], torch.ones(5, 99, dtype=torch.bool), 10)
    assert int(hits) == 0 and float(ndcg) == 0.0


def test_masked_negatives_do_not_count():
    # The negative equal to the test item and the repeated negative are ignored: rank 0 instead of 2.
    test_items = torch.tensor([7])
    negatives = torch.tensor([[7, 3, 3, 5]])
    mask = evaluation.candidate_mask(test_items, negatives)
    assert mask.tolist() == [[False, True, False, True]]
    positive, scores = torch.tensor([0.5]), torch.tensor([[0.9, 0.1, 0.9, 0.2]])
    hits, _ = evaluation.rank_metrics(positive, scores, mask, 1)
    assert int(hits) == 1
    hits, _ = evaluation.rank_metrics(positive, scores, torch.ones_like(mask), 1)
    assert int(hits) == 0  # unmasked, the two 0.9s outrank it


@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf"])
def test_models_return_one_logit_per_pair(kind):
    model = build_model(kind, num_users=5, num_items=7, **MODEL_KWARGS[kind])
    users, items = torch.tensor([[0, 4], [1, 2]]), torch.tensor([[6, 0], [3, 3]])
    assert model(users, items).shape == (2, 2)


@pytest.mark.parametrize("make, message", [
    (lambda: GMF(0, 5), "num_users and num_items must be positive, got 0 and 5"),
    (lambda: GMF(5, 5, factors=0), "factors must be positive, got 0"),
    (lambda: MLP(5, 5, layers=[15, 8]), "so it must be even, got 15"),
    (lambda: MLP(5, 5, layers=[16, 0]), r"layers must be one or more positive sizes, got \[16, 0\]"),
    (lambda: MLP(5, 5, dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (lambda: NeuMF(5, 5, layers=[]), r"layers must be one or more positive sizes, got \[\]")])
def test_constructors_validate(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _neumf_from_two_models(alpha):
    """(GMF, MLP, NeuMF initialised from the two with ``alpha``, users, items): small and seeded."""
    torch.manual_seed(0)
    gmf, mlp = GMF(6, 9, factors=4), MLP(6, 9, layers=[8, 4], dropout=0.0)
    neumf = NeuMF(6, 9, factors=4, layers=[8, 4], dropout=0.0).load_pretrained(gmf, mlp, alpha=alpha)
    return gmf, mlp, neumf, torch.arange(6), torch.tensor([0, 2, 4, 6, 8, 1])


def test_pretrained_neumf_mixes_the_two_models():
    gmf, mlp, neumf, users, items = _neumf_from_two_models(alpha=0.3)
    with torch.no_grad():
        expected = 0.3 * gmf(users, items) + 0.7 * mlp(users, items)
        assert torch.allclose(neumf(users, items), expected, atol=1e-6)


def test_neumf_branch_logits_are_the_branches_as_models_of_their_own():
    gmf, mlp, neumf, users, items = _neumf_from_two_models(alpha=0.3)
    with torch.no_grad():
        joint, gmf_logits, mlp_logits = neumf(users, items, branches=True)
        assert torch.equal(joint, neumf(users, items))
        assert torch.allclose(gmf_logits, gmf(users, items), atol=1e-6)
        assert torch.allclose(mlp_logits, mlp(users, items), atol=1e-6)
    trainable = lambda: {name for name, parameter in neumf.named_parameters() if parameter.requires_grad}  # noqa: E731
    assert not {"gmf.output.weight", "mlp.output.bias"} & trainable()  # the paper's NeuMF: not used, not trained
    neumf.train_branch_outputs(True)
    assert {"gmf.output.weight", "mlp.output.bias"} <= trainable()


@pytest.mark.parametrize("max_bitmap_bytes", [0, 2**28], ids=["sorted-keys", "bitmap"])
def test_exact_negatives_never_hit_a_positive(max_bitmap_bytes):
    generator = torch.Generator().manual_seed(0)
    users = torch.arange(50).repeat_interleave(8)
    items = torch.randint(0, 12, (400,), generator=generator)
    positive_set = dataloading.PositiveSet(users, items, 50, 12, max_bitmap_bytes)
    assert (positive_set.bitmap is None) == (max_bitmap_bytes == 0)
    draw_users = torch.arange(50).repeat(40).view(40, 50)
    drawn = dataloading.draw_negatives(draw_users, 12, generator, positive_set).view(-1)
    draw_users = draw_users.reshape(-1)
    positives = set((users * 12 + items).tolist())
    assert not set((draw_users * 12 + drawn).tolist()) & positives
    assert drawn.min() >= 0 and drawn.max() < 12


def test_epoch_batches_cover_every_positive_once_with_n_negatives():
    split = type("Split", (), {})()
    train = np.array([[u, i] for u in range(10) for i in range(u % 3, u % 3 + 4)], dtype=np.int32)[:38]
    split.train, split.test = train, np.array([[u, 9] for u in range(10)], dtype=np.int32)
    split.test_negatives = np.tile(np.arange(5, 8, dtype=np.int32), (10, 1))
    split.user_ids, split.item_ids = np.arange(10), np.arange(12)
    split.extra_arrays, split.validation, split.validation_negatives = {}, None, None
    dataset = dataloading.dataset_from_split(split, "toy")
    batches = list(dataloading.epoch_batches(dataset, 15, 2, torch.Generator().manual_seed(1)))
    assert [len(labels) for _, _, labels, _ in batches] == [15] * 7 + [9]  # 5 positives per batch, the last has 3
    assert all(weights is None for *_, weights in batches)  # no train_weights: every sample counts once
    positives = sorted((int(u), int(i)) for users, items, labels, _ in batches
                       for u, i, label in zip(users, items, labels) if label == 1)
    assert positives == sorted(map(tuple, train.tolist()))
    again = list(dataloading.epoch_batches(dataset, 15, 2, torch.Generator().manual_seed(1)))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))  # same seed, same batches

    # With weights, each negative carries its own positive's weight, and the batches are otherwise the same.
    weights = torch.arange(len(train), dtype=torch.float32) + 1
    weighted = dataclasses.replace(dataset, train_weights=weights)
    by_pair = {(int(u), int(i)): float(w) for (u, i), w in zip(train.tolist(), weights)}
    for (users, items, labels, batch_weights), plain in zip(
            dataloading.epoch_batches(weighted, 15, 2, torch.Generator().manual_seed(1)), batches):
        assert torch.equal(items, plain[1])
        positives = int(labels.sum())
        expected = torch.tensor([by_pair[(int(u), int(i))] for u, i in zip(users[:positives], items[:positives])])
        assert torch.equal(batch_weights, expected.repeat(3))  # the positives, then 2 negatives of each
    # Two ranks each take a slice of every batch; the weights follow their pairs, and together cover every pair once.
    seen = []
    for rank in range(2):
        for users, items, labels, batch_weights in dataloading.epoch_batches(
                weighted, 15, 2, torch.Generator().manual_seed(1), rank=rank, world_size=2):
            positives = int(labels.sum())
            pairs = list(zip(users[:positives].tolist(), items[:positives].tolist()))
            assert batch_weights.tolist() == [by_pair[pair] for pair in pairs] * 3
            seen += pairs
    assert sorted(seen) == sorted(map(tuple, train.tolist()))


@pytest.mark.parametrize("world_size", [1, 2])
def test_implicit_batches_repeat_their_users_in_as_many_blocks_as_they_say(world_size):
    # ImplicitInputs.groups is a promise the models rely on: users is `groups` copies of its first len / groups.
    dataset = dataloading.dataset_from_split(splits.generated_split((40, 60, 400), seed=3, num_negatives=5), "toy")
    for rank in range(world_size):
        batches = list(dataloading.ImplicitBatches(dataset, 64, 3, seed=5, rank=rank, world_size=world_size))
        assert len(batches) > 3 and batches[-1].samples < batches[0].samples  # a smaller last batch too
        for batch in batches:
            users, items, labels, _, groups = batch.inputs
            assert groups == 4 and users.numel() == items.numel() == labels.numel() == batch.samples
            blocks = users.view(groups, -1)
            assert torch.equal(blocks, blocks[:1].expand_as(blocks))
            assert labels.view(groups, -1)[0].eq(1).all() and labels.view(groups, -1)[1:].eq(0).all()


@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf"])
def test_grouped_batches_give_the_plain_forward_pass_values_and_gradients(kind):
    # Told that the users repeat in blocks, the models look each user up once and broadcast it: outputs and
    # every gradient equal the plain pass's, dropout included (the same draws, in train mode).
    torch.manual_seed(0)
    model = build_model(kind, 30, 40, factors=8, layers=[16, 12, 6], dropout=0.5).double().train()
    groups, block = 5, 23
    users, items = torch.randint(0, 30, (block,)).repeat(groups), torch.randint(0, 40, (groups * block,))
    upstream = torch.randn(groups * block, dtype=torch.double)
    results = []
    for grouping in ({}, {"groups": groups}):
        model.zero_grad()
        torch.manual_seed(7)
        output = model(users, items, **grouping)
        (output * upstream).sum().backward()
        results.append((output.detach(), {name: p.grad.clone() for name, p in model.named_parameters()
                                          if p.grad is not None}))
    (plain, plain_grads), (grouped, grouped_grads) = results
    torch.testing.assert_close(grouped, plain)
    assert grouped_grads.keys() == plain_grads.keys() and len(plain_grads) >= 4
    for name in plain_grads:
        torch.testing.assert_close(grouped_grads[name], plain_grads[name], msg=name)


def test_recency_ranks_count_later_pairs_of_the_same_user():
    users = np.array([0, 0, 0, 1, 1, 0, 2])
    times = np.array([5, 7, 7, 1, 2, 3, 9])
    # User 0: two pairs at time 7 (both latest, rank 0), then 5 (two later pairs: rank 2), then 3 (rank 3).
    assert dataloading.recency_ranks(users, times).tolist() == [2, 0, 0, 1, 0, 3, 0]
    order = np.random.default_rng(0).permutation(users.size)  # the stored row order does not matter
    assert dataloading.recency_ranks(users[order], times[order]).tolist() == [[2, 0, 0, 1, 0, 3, 0][k] for k in order]
    weights = dataloading.recency_weights(np.array([0, 1, 2, 50]), 3.0, 2.0)
    np.testing.assert_allclose(weights, [4.0, 1 + 3 * np.exp(-0.5), 1 + 3 * np.exp(-1.0), 1.0], rtol=1e-6)


@pytest.mark.parametrize("p", [0.5, 0.25, 0.75, 0.125, 0.0625, 1 / 256, 0.1, 0.8, 0.3])  # 1, 2, 4, 4, 4, 8 bits; 16
def test_dropout_drops_the_right_share_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    y = relu_dropout(x, p, True)  # the tower's ReLU and dropout, on positive inputs: dropout alone
    assert abs((y == 0).float().mean().item() - p) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.03  # inverted dropout keeps the expectation
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 1.0 / (1.0 - p)))
    assert torch.equal(relu_dropout(x, p, False), x)


@pytest.mark.parametrize("p", [0.5, 0.25, 0.0625])
def test_dropout_masks_are_independent_across_elements_and_calls(p):
    # The CPU masks take 1, 2 or 4 bits an element from shared random words: neighbours within a byte, the same bit
    # of the next byte or word, and two calls must still be independent draws (every pair of outcomes at the
    # product of its rates), for sizes that end mid-byte too.
    from neumf import _keep_mask

    torch.manual_seed(1)
    for shape in [(1_000_003,), (997, 1001)]:
        mask = _keep_mask(torch.empty(shape), p).reshape(-1).double()
        assert mask.shape[0] == math.prod(shape) and abs(mask.mean().item() - (1 - p)) < 0.003
        for lag in (1, 2, 3, 8, 64):
            both = (mask[:-lag] * mask[lag:]).mean().item()
            assert abs(both - (1 - p) ** 2) < 0.004, (shape, lag, both)
    first, second = (_keep_mask(torch.empty(500_000), p).double() for _ in range(2))
    assert abs((first * second).mean().item() - (1 - p) ** 2) < 0.004


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_fused_relu_dropout_equals_relu_then_dropout_with_gradients(device, p):
    from neumf import _keep_mask

    def unfused(x):  # ReLU, then inverted dropout with the same mask draw as the fused form
        if x.device.type == "cpu":
            return torch.relu(x) * _keep_mask(x, p) * (1.0 / (1.0 - p))
        return nn.functional.dropout(torch.relu(x), p, training=True)

    x = torch.randn(300, 64, device=device, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(300, 64, device=device, dtype=torch.float64)
    torch.manual_seed(3)
    expected = unfused(x)
    (expected_grad,) = torch.autograd.grad(expected, x, upstream)
    torch.manual_seed(3)  # the same draws: the fused form changes what is stored, not what is computed
    fused = relu_dropout(x, p, training=True)
    (fused_grad,) = torch.autograd.grad(fused, x, upstream)
    assert torch.equal(fused, expected) and torch.equal(fused_grad, expected_grad)
    assert 0 < (fused == 0).double().mean().item() < 1
    assert torch.equal(relu_dropout(x, p, training=False), torch.relu(x))


def test_lookup_equals_the_embedding_lookup_in_values_and_gradients():
    # lookup's CPU training path (index_select forward, index_add_ backward) against nn.Embedding's own, for a table
    # and for the rows of an activation, with repeated ids in a 2-D shape; a sparse table keeps its sparse gradient.
    torch.manual_seed(0)
    table = nn.Embedding(30, 6).double()
    ids = torch.randint(0, 30, (9, 7))
    upstream = torch.randn(9, 7, 6, dtype=torch.double)
    (ours,) = torch.autograd.grad((lookup(table, ids) * upstream).sum(), table.weight)
    (theirs,) = torch.autograd.grad((table(ids) * upstream).sum(), table.weight)
    assert torch.equal(lookup(table, ids), table(ids)) and torch.equal(ours, theirs) and ours.abs().sum() > 0
    rows = torch.randn(30, 6, dtype=torch.double, requires_grad=True)
    (ours,) = torch.autograd.grad((lookup(rows, ids) * upstream).sum(), rows)
    (theirs,) = torch.autograd.grad((rows[ids] * upstream).sum(), rows)
    torch.testing.assert_close(ours, theirs)
    sparse = nn.Embedding(30, 6, sparse=True)
    lookup(sparse, ids).sum().backward()
    assert sparse.weight.grad.is_sparse


@pytest.mark.parametrize("kind", ["mlp", "neumf"])
def test_training_tower_per_distinct_user_and_item_equals_the_joined_first_layer(kind):
    # A training batch's first layer is applied per distinct user and item, then gathered (train mode); the joined
    # embeddings through the whole layer (eval mode; no dropout to tell the modes apart) give the same outputs and
    # the same gradients for every parameter.
    torch.manual_seed(0)
    model = build_model(kind, 30, 40, factors=8, layers=[16, 12, 6], dropout=0.0).double()
    users, items = torch.randint(0, 30, (200,)), torch.randint(0, 40, (200,))  # repeated users and items
    mlp = getattr(model, "mlp", model)  # NeuMF's MLP branch, or the MLP itself
    joined = torch.cat([mlp.user_embedding(users), mlp.item_embedding(items)], dim=-1)
    torch.testing.assert_close(mlp.distinct_first_layer(users, items), mlp.linears[0](joined))
    results = []
    for training in (True, False):
        model.zero_grad()
        output = model.train(training)(users, items)
        (output ** 2).sum().backward()
        results.append((output.detach(), {name: p.grad.clone() for name, p in model.named_parameters()
                                          if p.grad is not None}))  # (NeuMF's branch outputs take no part)
    (distinct_output, distinct_grads), (joined_output, joined_grads) = results
    torch.testing.assert_close(distinct_output, joined_output)
    assert distinct_grads.keys() == joined_grads.keys()
    for name in distinct_grads:
        torch.testing.assert_close(distinct_grads[name], joined_grads[name], msg=name)


@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf"])
@pytest.mark.parametrize("num_items", [7, 500])  # fewer items than candidates (a per-item table), and more
@pytest.mark.parametrize("layers", [[16, 12, 6], [10]])  # a tower, and none (the joined embeddings go to the output)
def test_candidate_scores_equal_the_forward_pass_pair_by_pair(kind, num_items, layers):
    torch.manual_seed(0)
    model = build_model(kind, 11, num_items, factors=8, layers=layers, dropout=0.5).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()  # away from the tiny initialisation, so a wrong term shows
        users = torch.tensor([3, 0, 10, 3])
        items = torch.randint(0, num_items, (4, 9))
        expected = model(users[:, None].expand_as(items), items)
        assert torch.allclose(model.score(users, items), expected, rtol=1e-5, atol=1e-5)
        every = torch.arange(num_items).expand(4, -1)  # full ranking scores every item at once
        assert torch.allclose(model.score_all(users), model(users[:, None].expand_as(every), every), rtol=1e-5,
                              atol=1e-5)


@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf"])
@pytest.mark.parametrize("layers", [[16, 12, 6], [16, 8], [10]])  # two hidden layers, one, and none
def test_all_item_scorer_equals_the_forward_pass_and_bfloat16_stays_close(kind, layers):
    torch.manual_seed(0)
    model = build_model(kind, 11, 300, factors=8, layers=layers, dropout=0.5).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
        users = torch.tensor([3, 0, 10, 3, 7])
        every = torch.arange(300).expand(5, -1)
        expected = model(users[:, None].expand_as(every), every)
        scores = model.all_item_scorer()(users)
        assert scores.dtype == torch.float32 and scores.shape == (5, 300)
        assert torch.allclose(scores, expected, rtol=1e-5, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as ncf.py --amp evaluates on a CPU
            low = model.all_item_scorer()(users)
        assert low.dtype == torch.float32
        if isinstance(model, GMF):  # a dot product stays in float32 (cheap, and bfloat16 would tie many items)
            assert torch.allclose(low, expected, rtol=1e-5, atol=1e-4)
        else:
            assert (low - expected).abs().max() <= 0.05 * expected.abs().max()  # bfloat16: 8 bits of mantissa
            assert not torch.allclose(low, expected, rtol=1e-6, atol=0)  # the tower did run in bfloat16
    if kind != "gmf":
        with pytest.raises(RuntimeError, match="eval"):
            model.train().all_item_scorer()


def test_linear_relu_equals_the_plain_ops():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(300, 24), torch.randn(16, 24), torch.randn(16)
    with torch.no_grad():
        assert torch.allclose(linear_relu(x, weight, bias), torch.relu(x @ weight.T + bias), rtol=1e-5, atol=1e-5)


def test_evaluation_batches_default_by_device_and_do_not_change_the_metrics():
    # --valid_batch_size left out: 2^14 samples a batch on a CPU, NVIDIA's 2^20 elsewhere; any batching gives the
    # same metrics, a last partial batch included.
    assert evaluation.default_batch_samples("cpu") == 2**14 and evaluation.default_batch_samples("cuda") == 2**20
    dataset = dataloading.dataset_from_split(splits.generated_split((40, 60, 400), seed=3, num_negatives=5), "toy")
    model = build_model("neumf", dataset.num_users, dataset.num_items, factors=8, layers=[16, 8], dropout=0.0).eval()
    chosen = evaluation.evaluator(model, dataset, "sampled", 3, None, lambda: torch.autocast("cpu", enabled=False))()
    for batch_samples in (2**14, 25):  # 25: 4 users of 6 candidates a batch, the last batch partial
        metrics = evaluation.evaluator(model, dataset, "sampled", 3, batch_samples,
                                       lambda: torch.autocast("cpu", enabled=False))()
        assert metrics.keys() == chosen.keys() and chosen["eval_samples"] == 40 * 6
        for key in chosen:
            assert metrics[key] == pytest.approx(chosen[key], abs=1e-6), key


@pytest.mark.parametrize("dropout, stride", [(0.5, 3), (0.0, 2)])
def test_checkpoints_of_the_sequential_tower_load_into_todays_mlp(dropout, stride):
    # Earlier versions held the tower as one nn.Sequential of (Linear, ReLU[, Dropout]) per layer: their keys
    # (tower.0, tower.3, ... with dropout) are read as linears.0, linears.1, ...
    torch.manual_seed(0)
    model = NeuMF(7, 9, factors=4, layers=[8, 6, 4], dropout=dropout)
    earlier = {key.replace(f"mlp.linears.{index}.", f"mlp.tower.{index * stride}."): value
               for key, value in model.state_dict().items() for index in [int(key.split(".")[2])
                                                                           if key.startswith("mlp.linears.") else 0]}
    assert "mlp.tower.0.weight" in earlier and f"mlp.tower.{stride}.weight" in earlier
    fresh = NeuMF(7, 9, factors=4, layers=[8, 6, 4], dropout=dropout)
    fresh.load_state_dict(earlier)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
