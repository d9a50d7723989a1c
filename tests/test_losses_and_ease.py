"""The full-ranking losses (known values and gradients, shared negatives against per-sample ones, a planted set each
ranks first) and EASE (its closed form against a dense solve, its refusal, recommend.py on its checkpoint)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dataloading
import ncf
import recommend
from dataloading import ImplicitInputs, SharedInputs
from ncflib import ease, evaluation, implicit, serving
from ncflib.checkpoint import load_model
from ncflib.losses import LOSSES
from neumf import GMF


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# One positive scored 2, its two negatives 1 and -1 (cosines for ccl: 0.9 against 0.7 and 0.2).
CASES = {
    "bce": ({}, (2.0, [1.0, -1.0]), softplus(-2) + softplus(1) + softplus(-1),
            (-sigmoid(-2), [sigmoid(1), sigmoid(-1)])),
    "bpr": ({}, (2.0, [1.0, -1.0]), (softplus(-1) + softplus(-3)) / 2,
            (-(sigmoid(-1) + sigmoid(-3)) / 2, [sigmoid(-1) / 2, sigmoid(-3) / 2])),
    "softmax": ({"temperature": 0.5}, (2.0, [1.0, -1.0]),
                math.log(math.exp(4) + math.exp(2) + math.exp(-2)) - 4,
                ((math.exp(4) / (math.exp(4) + math.exp(2) + math.exp(-2)) - 1) * 2,
                 [math.exp(2) / (math.exp(4) + math.exp(2) + math.exp(-2)) * 2,
                  math.exp(-2) / (math.exp(4) + math.exp(2) + math.exp(-2)) * 2])),
    "ccl": ({"margin": 0.5, "negative_weight": 2.0}, (0.9, [0.7, 0.2]), 0.1 + 2 * (0.2 + 0.0) / 2,
            (-1.0, [1.0, 0.0])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_loss_and_its_gradient_on_a_hand_computed_case(name):
    options, (positive, negative), value, (positive_grad, negative_grad) = CASES[name]
    positive = torch.tensor([positive], dtype=torch.float64, requires_grad=True)
    negative = torch.tensor([negative], dtype=torch.float64, requires_grad=True)
    total = LOSSES[name](positive, negative, **options)
    total.backward()
    assert total.item() == pytest.approx(value, rel=1e-6)
    assert positive.grad.item() == pytest.approx(positive_grad, rel=1e-6)
    assert negative.grad[0].tolist() == pytest.approx(negative_grad, rel=1e-6, abs=1e-12)
    # A weight counts a positive's loss that many times.
    assert LOSSES[name](positive, negative, torch.tensor([3.0], dtype=torch.float64), **options).item() == \
        pytest.approx(3 * value, rel=1e-6)


def test_softmax_subtracts_the_negatives_log_probabilities_when_corrected():
    positive, negative = torch.tensor([1.0]), torch.tensor([[0.5, 0.0]])
    log_q = torch.tensor([math.log(0.5), math.log(0.25)])
    expected = math.log(math.exp(1) + math.exp(0.5 - math.log(0.5)) + math.exp(0 - math.log(0.25))) - 1
    assert LOSSES["softmax"](positive, negative, log_q=log_q).item() == pytest.approx(expected, rel=1e-6)


def test_shared_batches_give_each_negative_the_log_of_its_expected_draws():
    """log(N q_j): with N draws per batch from q, item j is expected N q_j times; uniform q is 1 / items, so the
    correction is the constant log(N / items) (0 when a batch draws as many negatives as there are items)."""
    from dataloading import Dataset, SharedNegativeBatches, negative_distribution

    train = np.array([[0, 0], [0, 1], [1, 1], [1, 1], [2, 3], [2, 1]])
    dataset = Dataset.from_arrays(3, 5, train, np.array([[0, 2], [1, 4]]), None, "test")
    (batch,) = SharedNegativeBatches(dataset, 6, 8, seed=0)
    assert batch.inputs.negatives.shape == (8,)
    torch.testing.assert_close(batch.inputs.log_q, torch.full((8,), math.log(8 / 5)))
    distribution = negative_distribution(dataset.train_items, 5, beta=1.0)  # counts 1, 4, 1 (floor), 1, 1 of 8
    torch.testing.assert_close(distribution, torch.tensor([1, 4, 1, 1, 1]) / 8.0)
    (batch,) = SharedNegativeBatches(dataset, 6, 8, seed=0, distribution=distribution)
    expected = torch.log(8 * distribution[batch.inputs.negatives])
    torch.testing.assert_close(batch.inputs.log_q, expected)


@pytest.mark.parametrize("name, similarity", [("bce", "dot"), ("bpr", "dot"), ("softmax", "cosine"),
                                              ("softmax", "dot"), ("ccl", "cosine")])
def test_shared_negatives_give_the_per_sample_loss_when_every_positive_has_the_same_negatives(name, similarity):
    torch.manual_seed(0)
    model = GMF(9, 12, factors=5, similarity=similarity)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    users, items = torch.tensor([0, 3, 5, 8]), torch.tensor([1, 2, 3, 4])
    negatives = torch.tensor([7, 9, 11])  # none of them a positive
    options = {"temperature": 0.2, "margin": 0.3, "negative_weight": 4.0}
    shared = implicit.shared_loss(name, options)(model, SharedInputs(users, items, negatives, None, None),
                                                 _no_autocast)
    blocks = 1 + len(negatives)
    per_sample_inputs = ImplicitInputs(users.repeat(blocks), torch.cat([items, negatives.repeat_interleave(4)]),
                                       torch.cat([torch.ones(4), torch.zeros(12)]), None, blocks)
    per_sample = implicit.per_sample_loss(name, options)(model, per_sample_inputs, _no_autocast)
    torch.testing.assert_close(shared[1], per_sample[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["bce", "softmax"])
def test_a_shared_negative_that_is_the_rows_own_positive_adds_nothing(name):
    torch.manual_seed(0)
    model = GMF(3, 12, factors=5)
    loss = implicit.shared_loss(name, {"temperature": 1.0, "margin": 0.0, "negative_weight": 1.0})
    users, items = torch.tensor([0]), torch.tensor([1])
    without = loss(model, SharedInputs(users, items, torch.tensor([7, 9]), None, None), _no_autocast)[1] / 3
    with_hit = loss(model, SharedInputs(users, items, torch.tensor([7, 9, 1]), None, None), _no_autocast)[1] / 4
    assert with_hit.item() == pytest.approx(without.item(), rel=1e-6)


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


@pytest.mark.parametrize("flags", [["--loss", "softmax", "-l", "0.005"], ["--loss", "bpr", "--similarity", "dot"],
                                   ["--loss", "ccl", "--negative_weight", "10"], ["--loss", "bce", "-l", "0.02"]])
def test_each_loss_ranks_the_planted_items_first(planted_ratio, tmp_path, flags):
    log = tmp_path / "log.json"
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "-e", "30", "-b", "16",
                     "--shared_negatives", "16", "-l", "0.01", "-f", "8", *flags, "--checkpoint_dir", "",
                     "--log_path", str(log)]) == 0
    summary = json.loads(log.read_text().splitlines()[-1])
    # Each user has 10 items in its group, 8 of them seen: the 2 unseen ones and 40 - 10 of other groups are the
    # candidates; a model that learned the groups puts the held-out items in its top 5.
    assert summary["best_metrics"]["recall@5"] >= 0.9, summary["best_metrics"]


def test_ease_equals_a_dense_solve_of_its_closed_form():
    rng = np.random.default_rng(1)
    matrix = (rng.random((7, 5)) < 0.5).astype(np.float64)
    matrix[3] = 0.0  # a user with no training items scores 0 everywhere
    users, items = (torch.from_numpy(index) for index in np.nonzero(matrix))
    model = ease.EASE(7, 5, len(users))
    assert model.solve(users, items, 3.0) == {"l2_weight": 3.0}
    inverse = np.linalg.inv(matrix.T @ matrix + 3.0 * np.eye(5))
    expected = np.eye(5) - inverse / np.diag(inverse)
    np.testing.assert_allclose(model.item_weights.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(model.score_all(torch.arange(7)).numpy(), matrix @ expected, atol=1e-5)
    shuffled = torch.tensor([5, 3, 0, 5, 6])  # any order, repeats: each row is its own user's
    np.testing.assert_allclose(model.score_all(shuffled).numpy(), matrix[shuffled.numpy()] @ expected, atol=1e-5)
    assert not model.score_all(torch.tensor([3])).any()
    history = torch.tensor([0, 2])
    np.testing.assert_allclose(model.score_history(history).numpy(), expected[[0, 2]].sum(0), atol=1e-5)
    # Its scores are sums of rows: full ranking and recommend.py score it in chunks as large as a dot product's, not
    # in the few users a CPU gives a tower.
    chunk = evaluation.users_per_full_chunk(3000, "cpu", 2**14, model)
    assert chunk == evaluation.DOT_PRODUCT_SCORES // 3000 > evaluation.users_per_full_chunk(3000, "cpu", 2**14)


def test_ease_solves_within_the_memory_its_refusal_counts_on():
    """The refusal sizes EASE by BYTES_PER_ENTRY (a float32 G, one float64 matrix, the float32 B): the solve must
    work in place. Measured as the peak resident memory of a fresh process, reset just before the solve (Linux)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    script = """
import torch
from ncflib import ease

def peak():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024

items, pairs = 3000, 60000
model = ease.EASE(400, items, pairs)
model.set_interactions(torch.randint(0, 400, (pairs,)), torch.randint(0, items, (pairs,)))
gram = model.gram()
model.item_weights.fill_(1.0)  # resident before the solve, as G is
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak starts again from what is resident now
before = peak()
model.use(gram, 10.0)
print((peak() - before) / (8 * items**2))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-1000:]
    # One float64 matrix beyond G and the model's B (a solve that copied at each step would hold two or three).
    assert 0.9 < float(done.stdout) < 1.5
    assert ease.BYTES_PER_ENTRY == 4 + 8 + 4


def test_ease_trains_tests_recommends_and_refuses_a_catalogue_too_large(planted_ratio, tmp_path, capsys,
                                                                         monkeypatch):
    folder = tmp_path / "ease"
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "--model", "ease",
                     "--ease_l2", "1", "10", "--checkpoint_dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "L2 weights: 1 10" in out
    records = [json.loads(line) for line in (folder / "log.json").read_text().splitlines()]
    assert [record["l2_weight"] for record in records if record["type"] == "epoch"] == [1.0, 10.0]
    best = records[-1]["best_metrics"]
    assert best["recall@5"] >= 0.9
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "--mode", "test",
                     "--load_checkpoint_path", str(folder / "best.pt"), "--log_path", str(tmp_path / "t.json")]) == 0
    tested = json.loads((tmp_path / "t.json").read_text().splitlines()[-1])
    assert tested["recall@5"] == pytest.approx(best["recall@5"])
    capsys.readouterr()
    checkpoint = str(folder / "best.pt")
    assert recommend.main(["--checkpoint", checkpoint, "--user", "0", "-k", "2"]) == 0
    top = [int(line.split()[1]) for line in capsys.readouterr().out.splitlines()[2:4]]
    assert all(item // 10 == 0 for item in top)  # user 0 is in group 0
    assert recommend.main(["--checkpoint", checkpoint, "--history", "31", "32", "33", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "from their items" in lines[0] and all(int(line.split()[1]) // 10 == 3 for line in lines[2:5])
    # --similar_to: the items whose rows of B are nearest (cosine) to the query's, the query left out.
    assert recommend.main(["--checkpoint", checkpoint, "--similar_to", "5", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    model = load_model(folder / "best.pt")
    _, items = serving.catalogues(dataloading.load_dataset(planted_ratio))
    rows = torch.nn.functional.normalize(model.item_weights, dim=1)
    similarity = rows @ rows[items.item("5")]
    similarity[items.item("5")] = -math.inf
    assert [line.split()[1] for line in lines[2:5]] == [items.ids[i] for i in similarity.topk(3).indices.tolist()]
    # --export: the arrays EASE names (its item-item weights, its users' items), and how they give a score.
    assert recommend.main(["--checkpoint", checkpoint, "--export", str(tmp_path / "exported"), "--no_onnx"]) == 0
    assert "exported 3 arrays" in capsys.readouterr().out
    assert np.array_equal(np.load(tmp_path / "exported" / "item_weights.npy"), model.item_weights.numpy())
    description = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert set(description["files"]) == {"item_weights.npy", "user_offsets.npy", "user_items.npy"}
    assert "item_weights[j, i]" in description["score"]
    monkeypatch.setattr(ease, "available_bytes", lambda device: 1000)
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "--model", "ease",
                     "--checkpoint_dir", str(tmp_path / "refused")]) == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "GiB" in error and "--model gfcf or rp3beta" in error
    assert not (tmp_path / "refused").exists()


def test_ease_exports_to_onnx_in_one_line(planted_ratio, tmp_path, capfd):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "--model", "ease",
                     "--ease_l2", "10", "--checkpoint_dir", str(tmp_path / "ease")]) == 0
    capfd.readouterr()
    # EASE's shapes depend on its data: the exporter's traced graph and notes, printed to the terminal's file
    # descriptors, stay out of it; the scores of model.onnx are EASE's.
    assert recommend.main(["--checkpoint", str(tmp_path / "ease" / "best.pt"), "--export", str(tmp_path / "x")]) == 0
    captured = capfd.readouterr()
    assert captured.err == "" and len(captured.out.splitlines()) == 1, captured
    assert float(captured.out.split("largest difference ")[1]) < 1e-4


def test_full_ranking_defaults_are_gmf_with_sampled_softmax_and_are_printed(planted_ratio, capsys):
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "-e", "1",
                     "--checkpoint_dir", ""]) == 0
    out = capsys.readouterr().out
    assert "model: gmf" in out and "loss: softmax (the full-ranking default" in out
    assert "similarity: cosine" in out and "shared negatives: 1024" in out
    assert "temperature: 0.3 (chosen for 40 items (lower for larger catalogues)" in out  # the rule's upper bound
    assert "negative weight" not in out  # ccl's alone

    # NeuMF under full ranking keeps NVIDIA's BCE, and the run says that its tower ranks slowly.
    assert ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "-k", "5", "-e", "1", "--model",
                     "neumf", "--checkpoint_dir", ""]) == 0
    assert "--model gmf ranks with one product" in capsys.readouterr().out
    # The losses' flags are checked: a cosine loss for a model without towers is a one-line error.
    with pytest.raises(SystemExit):
        ncf.main(["--data", str(planted_ratio), "--eval_protocol", "full", "--model", "mlp", "--similarity",
                  "cosine"])
    assert "--similarity is used by gmf; --model mlp does not read it" in capsys.readouterr().err


def test_the_default_temperature_falls_with_the_catalogue():
    from ncflib.defaults import choose_temperature

    sizes = [100, 1_682, 3_706, 17_632, 38_048, 10**6, 10**9]
    chosen = [choose_temperature(size) for size in sizes]
    assert chosen == sorted(chosen, reverse=True) and chosen[0] == 0.3 and chosen[-1] == 0.05
    assert choose_temperature(3_000) == 0.19  # the reference point of the power law
    assert choose_temperature(3_000 * 2**5) == pytest.approx(0.19 * 2**-0.8, abs=1e-3)  # 32 times the items


def test_masked_hits_marks_every_drawn_copy_of_a_rows_own_item_and_nothing_else():
    from ncflib.losses import masked_hits

    scores = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    positives, negatives = torch.tensor([1, 9, 3]), torch.tensor([7, 1, 9, 1])  # item 1 drawn twice
    expected = scores.masked_fill(negatives[None, :] == positives[:, None], float("-inf"))
    assert torch.equal(masked_hits(scores.clone(), positives, negatives), expected)
    assert torch.isinf(expected).sum() == 3  # row 0 twice, row 1 once, row 2 never
    rng = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 50, generator=rng)
    positives, negatives = torch.randint(20, (64,), generator=rng), torch.randint(20, (50,), generator=rng)
    expected = scores.masked_fill(negatives[None, :] == positives[:, None], float("-inf"))
    assert torch.equal(masked_hits(scores.clone(), positives, negatives), expected)
