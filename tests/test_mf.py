"""Rating models (ncflib/ratings.py): known fits, bounds, frozen and loaded embeddings, the loss, RMSE/MAE known
answers."""

import contextlib
import math

import numpy as np
import pytest
import torch

from dataloading import RatingBatches
from ncflib import evaluation, serving
from ncflib import training as train
from ncflib.protocols import StartsFromMean
from ncflib.ratings import RATING_MODELS, BiasMF, Dot, DotBias, EmbNN, squared_error_loss

# The tutorial's toy matrix: 5 users x 4 items, zeros unobserved.
TOY = torch.tensor([[5, 3, 0, 1], [4, 0, 0, 1], [1, 1, 0, 5], [1, 0, 0, 4], [0, 1, 5, 4]], dtype=torch.float32)


def _toy_pairs():
    users, items = TOY.nonzero(as_tuple=True)
    return users, items, TOY[users, items]


def _fit(model, users, items, ratings, epochs, lr, batch_size=4, l2=0.0):
    """Train through train.fit, selecting on the training MSE (lower is better); returns that MSE."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def evaluate():
        return evaluation.rating_metrics(model, users, items, ratings, 1024, contextlib.nullcontext)

    best, _ = train.fit(model, optimizer, scaler, model.training_loss(l2=l2),
                        lambda epoch: RatingBatches(users, items, ratings, batch_size, seed=epoch), evaluate,
                        train.Selection("mse", higher_is_better=False), epochs=epochs)
    return best["metrics"]["mse"]


@pytest.mark.parametrize("kind, settings, epochs, lr", [("mf", {"factors": 3}, 300, 0.05),
                                                        ("embnn", {"factors": 3, "layers": (16,)}, 300, 0.01)])
def test_the_toy_matrix_is_fitted(kind, settings, epochs, lr):
    torch.manual_seed(0)
    users, items, ratings = _toy_pairs()
    model = RATING_MODELS[kind](5, 4, **settings)
    if isinstance(model, StartsFromMean):
        model.set_mean(ratings.mean())
    assert _fit(model, users, items, ratings, epochs, lr) < 0.01


@pytest.mark.parametrize("kind", ["mf", "biasmf", "dotbias", "embnn", "dot"])
def test_every_kind_scores_all_items_as_its_forward_pass_and_trains_a_little(kind):
    torch.manual_seed(0)
    model = RATING_MODELS[kind](7, 6, factors=4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
        users = torch.tensor([0, 3, 6])
        every = torch.arange(6).expand(3, -1)
        assert torch.allclose(model.score_all(users), model(users[:, None].expand_as(every), every), atol=1e-5)
    users, items, ratings = _toy_pairs()
    model = RATING_MODELS[kind](5, 4, factors=3)
    before = evaluation.rating_metrics(model, users, items, ratings, 64, contextlib.nullcontext)["mse"]
    assert _fit(model, users, items, ratings, 30, 0.05) < before


def test_y_range_bounds_every_prediction():
    for model in (DotBias(5, 4, factors=3, y_range=(1.0, 5.0)), EmbNN(5, 4, factors=3, y_range=(1.0, 5.0))):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(std=50.0)  # far beyond any rating: the sigmoid saturates
        every_user, every_item = torch.arange(5).repeat_interleave(4), torch.arange(4).repeat(5)
        predicted = model(every_user, every_item)
        assert (predicted >= 1.0).all() and (predicted <= 5.0).all()
        assert predicted.max() > 4.9 and predicted.min() < 1.1  # and reaches both ends
    with pytest.raises(ValueError, match="y_range"):
        DotBias(5, 4, y_range=(5.0, 1.0))


def test_frozen_embeddings_stay_bit_identical_and_loaded_ones_are_exact():
    torch.manual_seed(0)
    users, items, ratings = _toy_pairs()
    given = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    model = BiasMF(5, 4, factors=3).load_embeddings(users=given).freeze(users=True)
    assert np.array_equal(model.user_embedding.weight.detach().numpy(), given)
    items_before = model.item_embedding.weight.detach().clone()
    _fit(model, users, items, ratings, 20, 0.05)
    assert np.array_equal(model.user_embedding.weight.detach().numpy(), given)  # to the bit
    assert not torch.equal(model.item_embedding.weight, items_before)  # the rest did train
    with pytest.raises(ValueError, match=r"user embeddings of shape \[5, 4\] do not fit the model's \[5, 3\]"):
        BiasMF(5, 4, factors=3).load_embeddings(users=np.zeros((5, 4)))


def test_the_l2_penalty_counts_the_rows_a_batch_looks_up():
    model = BiasMF(5, 4, factors=3)
    with torch.no_grad():
        model.user_embedding.weight.fill_(1.0)
        model.item_embedding.weight.fill_(2.0)
        model.user_bias.weight.fill_(0.5)
        model.item_bias.weight.zero_()
    inputs = (torch.tensor([0, 0, 1]), torch.tensor([2, 3, 3]), torch.tensor([1.0, 2.0, 3.0]), None)
    reported, minimised = squared_error_loss(l2=0.1)(model, inputs, contextlib.nullcontext)
    predictions = 3 * 1.0 * 2.0 + 0.5  # dot + user bias (item bias 0, mean 0)
    assert math.isclose(reported.item(), sum((predictions - r) ** 2 for r in (1.0, 2.0, 3.0)), rel_tol=1e-6)
    # Each looked-up row counts once per use: 3 user rows of 3 x 1^2, 3 item rows of 3 x 2^2, 3 user biases 0.25.
    assert math.isclose(minimised.item() - reported.item(), 0.1 * (3 * 3 + 3 * 12 + 3 * 0.25), rel_tol=1e-6)


def test_rating_metrics_known_answers():
    class Fixed(torch.nn.Module):
        def forward(self, users, items):
            return torch.tensor([3.0, 4.0, 1.0, 5.0])[items]

    users, items = torch.zeros(4, dtype=torch.long), torch.arange(4)
    ratings = torch.tensor([4.0, 4.0, 3.0, 5.0])  # errors -1, 0, -2, 0
    metrics = evaluation.rating_metrics(Fixed(), users, items, ratings, 3, contextlib.nullcontext)
    assert metrics["mse"] == pytest.approx(5 / 4) and metrics["rmse"] == pytest.approx(math.sqrt(5 / 4))
    assert metrics["mae"] == pytest.approx(3 / 4) and metrics["eval_samples"] == 4


def test_binary_dot_trains_on_zero_one_data():
    torch.manual_seed(0)
    users, items, ratings = _toy_pairs()
    labels = (ratings >= 4).float()
    model = Dot(5, 4, factors=3, binary=True)
    loss = model.training_loss()
    first, _ = loss(model, (users, items, labels, None), contextlib.nullcontext)
    assert math.isclose(first.item(), len(labels) * math.log(2), rel_tol=1e-3)  # logits near 0 at the start
    _fit(model, users, items, labels, 50, 0.1)
    with torch.no_grad():
        assert ((model(users, items) > 0).float() == labels).all()


# ------------------------------------------------------------------------------------------ through ncf.py


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    """Ratings from a planted rank-2 taste (1-5 stars, rounded, a little noise), split at random with a validation
    set: (dataset folder, the RMSE of predicting the training mean for every test rating)."""
    from conftest import run_convert

    folder = tmp_path_factory.mktemp("rated")
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(60, 2)), rng.normal(size=(40, 2))
    lines = ["user,item,rating,timestamp"]
    for user in range(60):
        for time, item in enumerate(rng.choice(40, 25, replace=False)):
            stars = np.clip(np.rint(3 + 1.2 * users[user] @ items[item] + rng.normal(scale=0.3)), 1, 5)
            lines.append(f"{user},{item},{stars:g},{time}")
    (folder / "log.csv").write_text("\n".join(lines) + "\n")
    assert run_convert(["--path", folder / "log.csv", "--split", "random", "--validation", "--output",
                        folder / "data"])[0] == 0
    dataset = __import__("dataloading").load_dataset(folder / "data")
    mean = float(np.mean(dataset.train_ratings))
    return folder / "data", math.sqrt(float(((dataset.test.ratings - mean) ** 2).mean()))


def _ncf(data, tmp_path, *flags):
    import json

    import ncf

    log = tmp_path / "log.json"
    code = ncf.main(["--data", str(data), "--checkpoint_dir", str(tmp_path / "ck"), "--log_path", str(log),
                     *map(str, flags)])
    return code, [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("kind, epochs", [("biasmf", 12), ("dotbias", 12), ("embnn", 30)])
def test_ncf_trains_rating_models_on_validation_and_beats_the_mean(rated, tmp_path, kind, epochs, capsys):
    data, mean_rmse = rated
    code, records = _ncf(data, tmp_path, "--model", kind, "-e", epochs, "-f", "4", "-l", "0.02", "--weight_decay",
                         "0.01", "--lr_schedule", "onecycle")
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    epochs = [record for record in records if record["type"] == "epoch"]
    summary = next(record for record in records if record["type"] == "summary")
    best = min(epochs, key=lambda record: record["valid_rmse"])
    assert summary["best_epoch"] == best["epoch"] and summary["selected_on"] == "validation"
    assert summary["best_metrics"]["rmse"] < 0.8 * mean_rmse  # the planted taste was learned
    assert "one-cycle learning rate" in out and "valid RMSE" in out
    if kind != "biasmf":
        assert "y range: 0 to 5.5 (from the ratings' range" in out
    assert ncf_test_mode(data, tmp_path)["rmse"] == pytest.approx(summary["best_metrics"]["rmse"], rel=1e-6)


def test_rating_models_have_their_own_defaults_and_implicit_models_keep_theirs(rated):
    import dataloading
    import ncf
    from ncflib import defaults

    ratings = dataloading.load_dataset(rated[0])
    for kind, decay in (("dotbias", 0.2), ("biasmf", 0.2), ("embnn", 0.1)):
        config, notes = ncf.resolve_config(ncf.parse_args(["--data", str(rated[0]), "--model", kind]), ratings)
        assert (config.epochs, config.lr_schedule, config.weight_decay, config.beta2) == (5, "onecycle", decay, 0.99)
        assert {"schedule", "weight decay", "Adam betas"} <= set(notes)
    given = ncf.parse_args(["--data", str(rated[0]), "--model", "mf", "-e", "9", "--lr_schedule", "constant",
                            "--weight_decay", "0", "-b2", "0.9"])
    config, notes = ncf.resolve_config(given, ratings)
    assert (config.epochs, config.lr_schedule, config.weight_decay, config.beta2) == (9, "constant", 0.0, 0.9)
    assert not {"schedule", "weight decay"} & set(notes)
    implicit, _, _ = defaults.choose_sizes(1_000_000, 3_000, demo=False)
    assert (implicit["lr_schedule"], implicit["weight_decay"], implicit["beta2"]) == ("constant", 0.1, 0.999)
    assert ncf.parse_args(["--data", "x"]).epochs == 20


def ncf_test_mode(data, tmp_path):
    code, records = _ncf(data, tmp_path, "--mode", "test", "--log_path", tmp_path / "test.json")
    assert code == 0
    import json

    return json.loads((tmp_path / "test.json").read_text().splitlines()[-1])


def test_frozen_users_from_a_file_survive_training_through_ncf(rated, tmp_path):
    data, _ = rated
    given = np.random.default_rng(1).normal(scale=0.1, size=(60, 4)).astype(np.float32)
    np.save(tmp_path / "users.npy", given)
    code, _ = _ncf(data, tmp_path, "--model", "mf", "-e", "3", "-f", "4", "--user_embeddings", tmp_path / "users.npy",
                   "--freeze_users")
    assert code == 0
    state = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)["state_dict"]
    assert np.array_equal(state["user_embedding.weight"].numpy(), given)
    np.save(tmp_path / "wrong.npy", given[:, :3])
    code, _ = _ncf(data, tmp_path, "--model", "mf", "-e", "1", "-f", "4", "--user_embeddings", tmp_path / "wrong.npy",
                   "--checkpoint_dir", tmp_path / "other")
    assert code == 1


def test_a_rating_model_needs_ratings_and_binary_needs_dot(rated, tmp_path, capsys):
    from conftest import run_convert

    data, _ = rated
    plain = tmp_path / "plain"
    log = tmp_path / "log.csv"
    log.write_text("user,item\n" + "".join(f"{user},{item}\n" for user in range(8) for item in range(user, user + 5)))
    assert run_convert(["--path", log, "--output", plain, "--valid_negative", "3"])[0] == 0
    for flags, message in ((["--data", plain, "--model", "dotbias"], "has no training or test ratings"),
                           (["--data", data, "--model", "dot", "--binary"], "are not all 0 or 1")):
        capsys.readouterr()
        import ncf

        assert ncf.main([*map(str, flags), "--checkpoint_dir", str(tmp_path / "ck")]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        ncf.parse_args(["--model", "dotbias", "--y_range", "5", "1"])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a flag of another model: refused at parsing
        ncf.parse_args(["--data", str(data), "--model", "gmf", "--binary"])
    assert capsys.readouterr().err.endswith("error: --binary is used by dot; --model gmf does not read it\n")


def test_one_cycle_rises_then_falls():
    rates = [train.one_cycle_rate(0.01, step / 100) for step in range(100)]
    peak = int(np.argmax(rates))
    assert 23 <= peak <= 26 and rates[0] == pytest.approx(0.01 / 25) and rates[-1] < 0.01 / 1000
    assert all(a <= b for a, b in zip(rates[:peak], rates[1:peak + 1]))
    assert all(a >= b for a, b in zip(rates[peak:-1], rates[peak + 1:]))


def test_recommend_predicts_a_rating_and_lists_the_biases(rated, tmp_path, capsys):
    import recommend
    from dataloading import load_dataset
    from ncflib.checkpoint import load_model

    data, _ = rated
    assert _ncf(data, tmp_path, "--model", "dotbias", "-e", "3", "-f", "4")[0] == 0
    checkpoint = tmp_path / "ck" / "best.pt"
    capsys.readouterr()
    assert recommend.main(["--checkpoint", str(checkpoint), "--predict", "3", "7"]) == 0
    out = capsys.readouterr().out
    model = load_model(checkpoint, load_dataset(data)).eval()
    users, items = serving.catalogues(load_dataset(data))
    with torch.no_grad():
        expected = model(torch.tensor([users.user("3")]), torch.tensor([items.item("7")])).item()
    assert out.strip() == f"user 3, item 7: predicted rating {expected:.3f}" and 0 < expected < 5.5
    assert recommend.main(["--checkpoint", str(checkpoint), "--biases", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "the 3 items with the lowest bias (dotbias)" and lines[5].startswith("the 3 items with the high")
    lowest, highest = [float(line.split()[2]) for line in lines[2:5]], [float(line.split()[2]) for line in lines[7:10]]
    bias = model.item_bias.weight.detach().squeeze(1)
    assert lowest == sorted(lowest) and highest == sorted(highest, reverse=True)
    assert lowest[0] == pytest.approx(bias.min().item(), abs=1e-4) and highest[0] == pytest.approx(bias.max().item(),
                                                                                                  abs=1e-4)
    assert recommend.main(["--checkpoint", str(checkpoint), "--history", "7"]) == 1
    assert "would need their ratings" in capsys.readouterr().err
    assert _ncf(data, tmp_path / "mf", "--model", "mf", "-e", "1", "-f", "4")[0] == 0
    assert recommend.main(["--checkpoint", str(tmp_path / "mf" / "ck" / "best.pt"), "--biases"]) == 1
    assert "has no item biases" in capsys.readouterr().err


def test_plot_items_writes_a_png(rated, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import recommend

    data, _ = rated
    assert _ncf(data, tmp_path, "--model", "biasmf", "-e", "1", "-f", "4")[0] == 0
    picture = tmp_path / "items.png"
    assert recommend.main(["--checkpoint", str(tmp_path / "ck" / "best.pt"), "--plot_items", str(picture)]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "of the variance" in capsys.readouterr().out
    assert not list(tmp_path.glob(".items.png.tmp-*"))


def test_the_demo_has_planted_ratings_and_the_interactions_of_earlier_versions():
    import dataloading
    from ncflib.data import splits

    split = splits.generated_split()
    # The ratings take the random draws the uniform stars took, so the interactions, times and the split (and every
    # implicit model's result on the demo) are those of earlier versions.
    assert dataloading.dataset_from_split(split, "demo").fingerprint == \
        "5d4d93643dfa50ed6c67f8df995694834ba5ae7bfcb7efc231d03443f76c385d"
    ratings, items = split.extra_arrays["train_ratings"], split.train[:, 1]
    assert set(np.unique(ratings)) <= {1, 2, 3, 4, 5} and 3.3 < ratings.mean() < 3.9
    counts = np.bincount(items)
    rated = counts >= 20
    mean_rating = np.bincount(items, weights=ratings)[rated] / counts[rated]
    assert np.corrcoef(mean_rating, np.log(counts[rated]))[0, 1] > 0.3  # popular items are rated higher, as planted


def test_the_folds_benchmark_trains_each_fold_and_reports_the_mean(tmp_path, capsys):
    from bench import rating_folds

    rng = np.random.default_rng(0)
    for part, rows in (("base", 400), ("test", 100)):
        (tmp_path / f"u1.{part}").write_text("".join(
            f"{rng.integers(1, 21)}\t{rng.integers(1, 31)}\t{rng.integers(1, 6)}\t{index}\n" for index in range(rows)))
    assert rating_folds.main(["--movielens", str(tmp_path), "--folds", "1", "--", "--model", "biasmf", "-e", "2",
                              "-f", "2"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| ncf.py")).split(" | ")
    assert row[0] == "| ncf.py --model biasmf -e 2 -f 2" and row[1] == row[2] and 0.5 < float(row[1]) < 3.0
    with pytest.raises(SystemExit):
        rating_folds.parse_args(["--movielens", str(tmp_path), "--folds", "2"])


def test_sgd_trains_a_rating_model(rated, tmp_path, capsys):
    data, mean_rmse = rated
    code, records = _ncf(data, tmp_path, "--model", "biasmf", "-e", "8", "-f", "4", "--optimizer", "sgd", "-l",
                         "0.002", "--weight_decay", "0")
    assert code == 0, capsys.readouterr().err
    epochs = [record for record in records if record["type"] == "epoch"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] and epochs[-1]["rmse"] < mean_rmse
    state = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)["optimizer"]
    assert "momentum_buffer" in next(iter(state["state"].values()))  # torch.optim.SGD's state


def test_weight_decay_leaves_the_rating_models_biases_alone_and_the_implicit_models_as_they_were():
    from ncflib import families
    from ncflib.checkpoint import build_model

    for kind, expected in (("dotbias", {"user_bias.weight", "item_bias.weight"}),
                           ("embnn", {"tower.0.bias", "tower.2.bias"}), ("neumf", set())):
        model = build_model(kind, 5, 4, factors=3, layers=[8], dropout=0.0, y_range=(0.0, 5.5))
        names = {id(parameter): name for name, parameter in model.named_parameters() if parameter.requires_grad}
        optimizer = train.make_optimizer(model, "adam", families.family_of(kind).undecayed(model), lr=0.01,
                                         betas=(0.9, 0.99),
                                         eps=1e-8, weight_decay=0.1)
        free = {names[id(p)] for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
        assert free == expected
        assert sum(len(group["params"]) for group in optimizer.param_groups) == len(names)


def test_a_rating_models_export_holds_its_biases_and_mean_and_reproduces_its_ratings(rated, tmp_path):
    import json

    import recommend

    data, _ = rated
    code, _ = _ncf(data, tmp_path, "--model", "biasmf", "-e", "2", "-f", "4")
    assert code == 0
    assert recommend.main(["--checkpoint", str(tmp_path / "ck" / "best.pt"), "--export", str(tmp_path / "out"),
                           "--no_onnx"]) == 0
    arrays = {name: np.load(tmp_path / "out" / f"{name}.npy") for name in (
        "user_embedding", "item_embedding", "user_bias", "item_bias", "mean")}
    from ncflib.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(tmp_path / "ck" / "best.pt"), "best.pt")
    users, items = np.array([0, 5, 59]), np.array([3, 0, 39])
    expected = model(torch.from_numpy(users), torch.from_numpy(items)).detach().numpy()
    rebuilt = ((arrays["user_embedding"][users] * arrays["item_embedding"][items]).sum(1)
               + arrays["user_bias"][users, 0] + arrays["item_bias"][items, 0] + arrays["mean"])
    np.testing.assert_allclose(rebuilt, expected, rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "out" / "export.json").read_text())["files"]["mean.npy"]["shape"] == []
