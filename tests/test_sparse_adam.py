"""Row-sparse Adam: equal to AdamW where every row is in every batch, lazy elsewhere, resumable, correct across
ranks, and usable from ncf.py."""

import copy

import pytest
import torch
import torch.multiprocessing as multiprocessing
from torch import nn

from ncflib import sparse_adam
from ncflib import training as train
from neumf import GMF, NeuMF

SETTINGS = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)


def loss_of(model, users, items, weights):
    return (model(users, items) * weights).sum()


def test_equals_adamw_when_every_row_is_in_every_batch():
    torch.manual_seed(0)
    dense = GMF(5, 4, factors=3)
    sparse = copy.deepcopy(dense)
    dense_optimizer = torch.optim.AdamW(dense.parameters(), **SETTINGS)
    sparse_optimizer = sparse_adam.build_optimizer(sparse, **SETTINGS, fused=False)
    for _ in range(4):
        # Every user and item appears, some several times (their gradients must add up).
        users = torch.tensor([0, 1, 2, 3, 4, 0, 0, 3])
        items = torch.tensor([0, 1, 2, 3, 3, 1, 1, 0])[torch.randperm(8)]
        weights = torch.randn(8)
        for model, optimizer in ((dense, dense_optimizer), (sparse, sparse_optimizer)):
            loss_of(model, users, items, weights).backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, expected), actual in zip(dense.state_dict().items(), sparse.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_rows_outside_the_batch_do_not_move():
    torch.manual_seed(0)
    model = GMF(6, 6, factors=4)
    optimizer = sparse_adam.build_optimizer(model, **SETTINGS, fused=False)
    loss_of(model, torch.tensor([0, 1]), torch.tensor([2, 3]), torch.ones(2)).backward()
    optimizer.step()
    optimizer.zero_grad()
    after_first = copy.deepcopy(model.state_dict())
    loss_of(model, torch.tensor([1]), torch.tensor([3]), torch.ones(1)).backward()
    optimizer.step()
    users, items = model.user_embedding.weight, model.item_embedding.weight
    # User 0 and item 2 were in the first batch only: dense Adam's momentum would keep moving them, lazy Adam not.
    assert torch.equal(users[[0, 2, 3, 4, 5]], after_first["user_embedding.weight"][[0, 2, 3, 4, 5]])
    assert torch.equal(items[[0, 1, 2, 4, 5]], after_first["item_embedding.weight"][[0, 1, 2, 4, 5]])
    assert not torch.equal(users[1], after_first["user_embedding.weight"][1])
    assert not torch.equal(items[3], after_first["item_embedding.weight"][3])


def test_evaluation_lookups_are_not_recorded():
    model = GMF(3, 3, factors=2)
    optimizer = sparse_adam.build_optimizer(model, **SETTINGS, fused=False)
    before = copy.deepcopy(model.state_dict())
    model.eval()
    model(torch.tensor([0]), torch.tensor([1]))
    model.train()
    with torch.no_grad():
        model(torch.tensor([2]), torch.tensor([2]))
    optimizer.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def train_steps(model, optimizer, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        users = torch.randint(0, 7, (6,), generator=generator)
        items = torch.randint(0, 9, (6,), generator=generator)
        loss = nn.functional.binary_cross_entropy_with_logits(model(users, items), torch.rand(6, generator=generator))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_state_round_trip_continues_exactly():
    torch.manual_seed(0)
    whole = NeuMF(7, 9, factors=4, layers=(8, 4), dropout=0.0)
    part = copy.deepcopy(whole)
    whole_optimizer = sparse_adam.build_optimizer(whole, **SETTINGS, fused=False)
    part_optimizer = sparse_adam.build_optimizer(part, **SETTINGS, fused=False)
    train_steps(whole, whole_optimizer, 5, seed=1)
    train_steps(part, part_optimizer, 5, seed=1)
    saved_model, saved_optimizer = copy.deepcopy(part.state_dict()), copy.deepcopy(part_optimizer.state_dict())

    fresh = NeuMF(7, 9, factors=4, layers=(8, 4), dropout=0.0)
    fresh.load_state_dict(saved_model)
    fresh_optimizer = sparse_adam.build_optimizer(fresh, **SETTINGS, fused=False)
    fresh_optimizer.load_state_dict(saved_optimizer)
    train_steps(whole, whole_optimizer, 5, seed=2)
    train_steps(fresh, fresh_optimizer, 5, seed=2)
    for name, value in whole.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_state_of_another_optimizer_is_refused():
    model = GMF(3, 3, factors=2)
    optimizer = sparse_adam.build_optimizer(model, **SETTINGS, fused=False)
    with pytest.raises(ValueError, match="optimizer state holds"):
        optimizer.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def _rank_steps(rank, world_size, init_file, users, items, weights, result_file):
    train.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    with train.process_group_teardown():  # as ncf.py ends: the ranks wait for each other, then Gloo is freed
        _steps_of_rank(rank, world_size, users, items, weights, result_file)


def _steps_of_rank(rank, world_size, users, items, weights, result_file):
    torch.manual_seed(0)
    model = GMF(7, 9, factors=3)
    optimizer = sparse_adam.build_optimizer(model, **SETTINGS, fused=False)  # before DDP sees the tables
    model = nn.parallel.DistributedDataParallel(model)
    share = (users.shape[1] + world_size - 1) // world_size  # uneven slices, as at an epoch's end
    for step in range(users.shape[0]):
        mine = slice(rank * share, (rank + 1) * share)
        # Each rank scales its sum so that DDP's average is the gradient of the whole batch's sum.
        (loss_of(model, users[step, mine], items[step, mine], weights[step, mine]) * world_size).backward()
        optimizer.step()
        optimizer.zero_grad()
    if rank == 0:
        torch.save(model.module.state_dict(), result_file)


@pytest.mark.slow  # two Gloo processes: `python -m pytest -m slow` (and CI) runs it
def test_ranks_together_equal_one_process(tmp_path):
    generator = torch.Generator().manual_seed(0)
    users = torch.randint(0, 7, (3, 5), generator=generator)
    items = torch.randint(0, 9, (3, 5), generator=generator)
    weights = torch.randn(3, 5, generator=generator)
    multiprocessing.spawn(_rank_steps, args=(2, tmp_path / "init", users, items, weights, tmp_path / "two.pt"),
                          nprocs=2)
    torch.manual_seed(0)
    single = GMF(7, 9, factors=3)
    optimizer = sparse_adam.build_optimizer(single, **SETTINGS, fused=False)
    for step in range(3):
        loss_of(single, users[step], items[step], weights[step]).backward()
        optimizer.step()
        optimizer.zero_grad()
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-6, msg=name)
