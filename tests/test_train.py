"""ncflib/training.py, the family-agnostic loop: gradient accumulation, selection by a named metric and direction,
and a model family it was not written for (a rating regression) trained through it unchanged."""

import contextlib

import pytest
import torch

import dataloading
from ncflib import training as train


def regression_loss(model, inputs, autocast):
    """A loss of another task than ranking: summed squared error of a rating."""
    features, targets = inputs
    with autocast():
        predictions = model(features).squeeze(-1)
    loss = ((predictions.float() - targets) ** 2).sum()
    return loss, loss


def batches_of(features, targets, sizes):
    """dataloading.Batch objects cutting (features, targets) into consecutive batches of the given sizes."""
    batches, start = [], 0
    for size in sizes:
        stop = start + size
        batches.append(dataloading.Batch((features[start:stop], targets[start:stop]), size, size))
        start = stop
    return batches


def trained_weights(sizes, grads_accumulated):
    torch.manual_seed(0)
    features, targets = torch.randn(40, 3), torch.randn(40)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train.train_epoch(model, optimizer, scaler, contextlib.nullcontext, batches_of(features, targets, sizes),
                      regression_loss, grads_accumulated=grads_accumulated)
    return torch.cat([parameter.detach().flatten() for parameter in model.parameters()])


def test_accumulated_gradients_with_a_last_partial_group_equal_the_unaccumulated_update():
    # 8 batches of 5 in groups of 3: two full groups, then a last group of two, applied scaled by its own size;
    # the same as steps on batches of 15, 15 and 10.
    accumulated = trained_weights([5] * 8, grads_accumulated=3)
    plain = trained_weights([15, 15, 10], grads_accumulated=1)
    torch.testing.assert_close(accumulated, plain)
    assert not torch.allclose(accumulated, trained_weights([5] * 8, grads_accumulated=1))  # the test can fail


def test_fit_selects_on_the_named_metric_in_its_direction_and_stops_at_the_threshold():
    torch.manual_seed(0)
    features = torch.randn(64, 2)
    targets = features @ torch.tensor([2.0, -1.0]) + 0.5
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def evaluate():
        with torch.no_grad():
            error = ((model(features).squeeze(-1) - targets) ** 2).mean().sqrt()
        return {"rmse": float(error), "eval_samples": 64}

    records, saved = [], []
    best, reached = train.fit(model, optimizer, scaler, regression_loss,
                              lambda epoch: batches_of(features, targets, [16] * 4), evaluate,
                              train.Selection("rmse", higher_is_better=False), epochs=200, threshold=0.05,
                              on_epoch=records.append, save=lambda name, record, best: saved.append(name))
    rmse = [record["rmse"] for record in records]
    assert reached and rmse[-1] <= 0.05 < min(rmse[:-1]) and len(records) < 200
    assert best["epoch"] == rmse.index(min(rmse)) and best["metrics"]["rmse"] == min(rmse)
    assert saved.count("last.pt") == len(records) and 0 < saved.count("best.pt") <= len(records)
    assert {"train_loss", "train_throughput", "eval_throughput", "learning_rate"} <= set(records[0])


def test_a_non_finite_loss_stops_the_fit():
    model = torch.nn.Linear(1, 1)
    batches = [dataloading.Batch((torch.tensor([[float("inf")]]), torch.tensor([1.0])), 1, 1)]
    with pytest.raises(train.NonFiniteLoss, match="in epoch 0"):
        train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu", enabled=False),
                  regression_loss, lambda epoch: batches, lambda: {"rmse": 0.0}, train.Selection("rmse", False),
                  epochs=3)


def test_selection_directions():
    higher, lower = train.Selection("hr@10"), train.Selection("rmse", higher_is_better=False)
    assert higher.improves(0.7, 0.6) and not higher.improves(0.6, 0.6) and higher.improves(0.0, higher.worst)
    assert lower.improves(0.8, 0.9) and not lower.improves(0.9, 0.9) and lower.improves(5.0, lower.worst)
    assert higher.reaches(0.7, 0.7) and lower.reaches(0.85, 0.9) and not lower.reaches(0.95, 0.9)


def test_early_stopping_waits_patience_epochs_after_the_best():
    curve = iter([0.1, 0.3, 0.2, 0.25, 0.29, 0.5, 0.6])
    model = torch.nn.Linear(1, 1)
    batches = [dataloading.Batch((torch.zeros(1, 1), torch.zeros(1)), 1, 1)]
    records = []
    best, reached = train.fit(model, torch.optim.SGD(model.parameters(), lr=0.0), torch.amp.GradScaler(
        "cpu", enabled=False), regression_loss, lambda epoch: batches, lambda: {"valid_hr@10": next(curve)},
        train.Selection("valid_hr@10"), epochs=7, patience=2, on_epoch=records.append)
    # Best at epoch 1 (0.3); epochs 2 and 3 do not beat it, so the run stops after epoch 3.
    assert [record["epoch"] for record in records] == [0, 1, 2, 3] and best["epoch"] == 1 and not reached


def test_early_stopping_counts_evaluations_not_epochs():
    # Evaluated after epochs 2, 5 and 8 (every third) and the last: a patience of 1 waits for the evaluation after
    # the best, instead of stopping at the first epoch that was not evaluated.
    curve = iter([0.3, 0.2, 0.9, 0.1])
    model = torch.nn.Linear(1, 1)
    batches = [dataloading.Batch((torch.zeros(1, 1), torch.zeros(1)), 1, 1)]
    records = []
    best, _ = train.fit(model, torch.optim.SGD(model.parameters(), lr=0.0), torch.amp.GradScaler(
        "cpu", enabled=False), regression_loss, lambda epoch: batches, lambda: {"valid_hr@10": next(curve)},
        train.Selection("valid_hr@10"), epochs=10, patience=1, eval_every=3, on_epoch=records.append)
    assert [record["epoch"] for record in records] == [0, 1, 2, 3, 4, 5] and best["epoch"] == 2
    assert best["metrics"] == {"valid_hr@10": 0.3}


def test_fit_evaluates_every_nth_epoch_and_the_last_and_chooses_among_those():
    torch.manual_seed(0)
    features, targets = torch.randn(32, 2), torch.randn(32)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    evaluations, records = [], []

    def evaluate():
        evaluations.append(len(records))
        return {"score": [0.0, 0.9, 0.0, 0.5, 0.0][len(records)]}

    best, _ = train.fit(model, optimizer, scaler, regression_loss, lambda epoch: batches_of(features, targets, [32]),
                        evaluate, train.Selection("score"), epochs=5, eval_every=2, on_epoch=records.append)
    assert evaluations == [1, 3, 4]  # epochs 1 and 3, then the last
    assert ["score" in record for record in records] == [False, True, False, True, True]
    assert best["epoch"] == 1 and best["metrics"] == {"score": 0.9}
