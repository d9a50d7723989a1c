"""ncf.py end to end, in-process: training each model, checkpoints, resume, NVIDIA directories, bad input."""

import contextlib
import json

import numpy as np
import pytest
import torch
import yaml

import dataloading
import ncf
from conftest import run_convert
from ncflib import checkpoint, defaults, evaluation
from ncflib.training import mixed_precision

GROUPS, ITEMS_PER_GROUP, USERS_PER_GROUP = 4, 8, 12


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Users interact with every item of their own group (one held out, the latest); test negatives come from the
    other groups, so a model that learned the groups ranks the held-out item first."""
    folder = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    lines = ["user,item,timestamp"]
    for user in range(GROUPS * USERS_PER_GROUP):
        group = user % GROUPS
        items = group * ITEMS_PER_GROUP + rng.permutation(ITEMS_PER_GROUP)
        lines += [f"{user},{item},{time}" for time, item in enumerate(items)]
    (folder / "log.csv").write_text("\n".join(lines) + "\n")
    # Every free item of a user is in another group: 24 of them, all used as negatives.
    assert run_convert(["--path", folder / "log.csv", "--output", folder / "data", "--valid_negative", "24"])[0] == 0
    return folder / "data"


def train(data, tmp_path, *extra):
    """Run ncf.main in-process with quick settings; returns (exit code, log records)."""
    log = tmp_path / "log.json"
    extra = list(map(str, extra))
    model = extra[extra.index("--model") + 1] if "--model" in extra else "neumf"
    tower = ["--dropout", "0", "--layers", "16", "16", "8"] if model != "gmf" else []  # (GMF reads neither)
    factors = ["-f", "8"] if model != "mlp" else []  # (the MLP's embeddings are half its first layer)
    args = ["--data", str(data), "-e", "25", "-b", "64", "-n", "4", "-l", "0.01", "--lr_schedule", "constant",
            *factors, *tower, "-k", "1", "--checkpoint_dir", str(tmp_path / "ck"), "--log_path", str(log), *extra]
    code = ncf.main(args)
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return code, records


def summary(records):
    return next(record for record in records if record["type"] == "summary")


@pytest.mark.parametrize("model", ["gmf", "mlp", "neumf"])
def test_each_model_ranks_held_out_items_first(planted, tmp_path, model):
    code, records = train(planted, tmp_path, "--model", model)
    assert code == 0
    assert records[0]["type"] == "config" and records[0]["model"] == model
    epochs = [record for record in records if record["type"] == "epoch"]
    assert len(epochs) == 25 and {"train_throughput", "eval_throughput", "hr@1", "ndcg@1", "train_loss",
                                  "test_loss"} <= set(epochs[0])
    assert summary(records)["best_accuracy"] >= 0.9  # chance is 1/25
    assert (tmp_path / "ck" / "best.pt").is_file() and (tmp_path / "ck" / "last.pt").is_file()


def test_checkpoint_round_trip_gives_identical_metrics(planted, tmp_path, capsys):
    assert train(planted, tmp_path, "--model", "gmf", "-e", "8")[0] == 0
    best = summary(json.loads(line) for line in (tmp_path / "log.json").read_text().splitlines())
    capsys.readouterr()
    assert ncf.main(["--data", str(planted), "--mode", "test", "-k", "1", "--checkpoint_dir", str(tmp_path / "ck"),
                     "--log_path", str(tmp_path / "test.json")]) == 0
    tested = json.loads((tmp_path / "test.json").read_text().splitlines()[-1])
    assert tested["hr@1"] == best["best_accuracy"] and tested["ndcg@1"] == best["best_ndcg"]
    assert f"HR@1 {best['best_accuracy']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("optimizer", ["adam", "row_sparse_adam"])
def test_resume_matches_an_uninterrupted_run(planted, tmp_path, optimizer):
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.mkdir(), part.mkdir()
    assert train(planted, whole, "-e", "6", "--optimizer", optimizer)[0] == 0
    assert train(planted, part, "-e", "3", "--optimizer", optimizer)[0] == 0  # "interrupted" after epoch 2
    code, records = train(planted, part, "-e", "6", "--resume", "--optimizer", optimizer)
    assert code == 0
    last_whole = [r for r in (json.loads(x) for x in (whole / "log.json").read_text().splitlines())
                  if r["type"] == "epoch"][-1]
    last_part = [r for r in records if r["type"] == "epoch"][-1]
    assert last_part["epoch"] == last_whole["epoch"] == 5
    for key in ("train_loss", "test_loss", "hr@1", "ndcg@1"):
        assert last_part[key] == last_whole[key]


def test_cosine_schedule_decays_and_a_resumed_run_follows_the_same_curve(planted, tmp_path, monkeypatch):
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.mkdir(), part.mkdir()
    flags = ("-e", "6", "--lr_schedule", "cosine")
    code, whole_records = train(planted, whole, *flags)
    assert code == 0
    rates = [record["learning_rate"] for record in whole_records if record["type"] == "epoch"]
    assert all(later < earlier for earlier, later in zip(rates, rates[1:])) and 0 < rates[-1] < 0.01 * 0.01
    evaluations, evaluate = 0, evaluation.sampled_metrics

    def interrupted_in_epoch_3(*args, **kwargs):
        nonlocal evaluations
        evaluations += 1
        if evaluations == 4:
            raise KeyboardInterrupt  # after epoch 2's checkpoint, as a killed 6-epoch run
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluation, "sampled_metrics", interrupted_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(planted, part, *flags)
    monkeypatch.setattr(evaluation, "sampled_metrics", evaluate)
    code, records = train(planted, part, *flags, "--resume")
    assert code == 0
    resumed = [record for record in records if record["type"] == "epoch"]  # the log holds both runs
    assert [record["epoch"] for record in resumed] == [0, 1, 2, 3, 4, 5]
    resumed, expected = resumed[3:], [record for record in whole_records if record["type"] == "epoch"][3:]
    for key in ("learning_rate", "train_loss", "test_loss", "hr@1"):
        assert [record[key] for record in resumed] == [record[key] for record in expected]


@pytest.mark.parametrize("model", ["gmf", "neumf"])
def test_row_sparse_adam_trains_each_model(planted, tmp_path, model):
    code, records = train(planted, tmp_path, "--model", model, "--optimizer", "row_sparse_adam", "-e", "15")
    assert code == 0 and records[0]["optimizer"] == "row_sparse_adam"
    assert summary(records)["best_accuracy"] >= 0.9  # chance is 1/25


@pytest.mark.slow  # torch.compile: 10-25 s on a cold cache; `python -m pytest -m slow` (and CI) runs it
@pytest.mark.parametrize("optimizer", ["adam", "row_sparse_adam"])
def test_compiled_training_learns_like_eager(planted, tmp_path, optimizer):
    code, records = train(planted, tmp_path, "--model", "neumf", "--compile", "--optimizer", optimizer, "-e", "15",
                          "--dropout", "0.2")  # the fused ReLU/dropout function compiled too
    assert code == 0 and records[0]["compile"] == "default"
    assert summary(records)["best_accuracy"] >= 0.9  # chance is 1/25


def test_resume_with_another_optimizer_is_refused(planted, tmp_path, capsys):
    assert train(planted, tmp_path, "-e", "1", "--optimizer", "row_sparse_adam")[0] == 0
    assert train(planted, tmp_path, "-e", "2", "--resume")[0] == 1
    assert "was trained with --optimizer row_sparse_adam; resume with the same" in capsys.readouterr().err


def test_resume_with_other_negatives_is_refused(planted, tmp_path, capsys):
    assert train(planted, tmp_path, "-e", "1")[0] == 0  # -n 4
    assert train(planted, tmp_path, "-e", "2", "--resume", "-n", "8")[0] == 1
    assert "was trained with -n 4; resume with the same" in capsys.readouterr().err


def test_resume_with_another_schedule_is_refused(planted, tmp_path, capsys):
    # (a checkpoint of a run begun at a constant rate, resumed under a default that has become cosine, is refused)
    assert train(planted, tmp_path, "-e", "1")[0] == 0  # --lr_schedule constant
    assert train(planted, tmp_path, "-e", "2", "--resume", "--lr_schedule", "cosine")[0] == 1
    assert "was trained with --lr_schedule constant; resume with the same" in capsys.readouterr().err
    code, records = train(planted, tmp_path, "-e", "2", "--resume")
    assert code == 0 and records[0]["lr_schedule"] == "constant"


def test_resume_with_another_branch_loss_is_refused(planted, tmp_path, capsys):
    assert train(planted, tmp_path, "-e", "1", "--branch_loss", "0")[0] == 0
    assert train(planted, tmp_path, "-e", "2", "--resume", "--branch_loss", "0.5")[0] == 1
    assert "was trained with --branch_loss 0; resume with the same" in capsys.readouterr().err


def test_resume_with_another_recency_weight_is_refused(planted, tmp_path, capsys):
    assert train(planted, tmp_path, "-e", "1", "--recency", "2")[0] == 0
    assert "recency: a user's latest pairs count 3 times, those 10 pairs earlier 1.74 times" in capsys.readouterr().out
    assert train(planted, tmp_path, "-e", "2", "--resume")[0] == 1
    assert "was trained with --recency 2; resume with the same" in capsys.readouterr().err
    assert train(planted, tmp_path, "-e", "2", "--resume", "--recency", "2", "--recency_window", "3")[0] == 1
    assert "was trained with --recency_window 10; resume with the same" in capsys.readouterr().err


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """Each user first takes 6 of the 8 items of one group, then 3 of another group, then (the test item) a 4th of
    that second group; the test candidates hold the first group's 2 items left and the second group's 4 left."""
    folder = tmp_path_factory.mktemp("drifting")
    rng = np.random.default_rng(1)
    lines, groups = ["user,item,timestamp"], {}
    for user in range(200):
        old, new = rng.choice(4, 2, replace=False)
        groups[user] = old, new
        items = [*(old * 8 + rng.permutation(8)[:6]), *(new * 8 + rng.permutation(8)[:4])]
        lines += [f"{user},{item},{time}" for time, item in enumerate(items)]
    (folder / "log.csv").write_text("\n".join(lines) + "\n")
    assert run_convert(["--path", folder / "log.csv", "--output", folder / "data", "--valid_negative", "20"])[0] == 0
    return folder / "data", groups


def test_recency_weighting_follows_each_users_latest_taste(drifting, tmp_path):
    """Without --recency a user's 6 older pairs outweigh their 3 recent ones, and the items left in their first
    group outscore those left in their second; weighted by recency, the second group wins, as the test item's does."""
    data, groups = drifting
    dataset = dataloading.load_dataset(data)
    user_ids = original_user_ids(data)
    # Items 0-31 all occur, and convert.py numbers them in order, so an item's index is its original id.
    assert [int(line.split(",")[1]) for line in (data / "items.csv").read_text().splitlines()[1:]] == list(range(32))
    seen = set(zip(dataset.train_users.tolist(), dataset.train_items.tolist()))
    preferred_recent = []
    for recency in ("0", "20"):
        run = tmp_path / recency
        # 4 factors: with many, a user's vector can score both groups high, and the weights decide little.
        code, _ = train(data, run, "--model", "gmf", "-e", "20", "-f", "4", "--recency", recency,
                        "--recency_window", "1")
        assert code == 0
        model = checkpoint.load_model(run / "ck" / "last.pt").eval()
        wins = 0
        for index, original in enumerate(user_ids):
            old, new = groups[original]
            margins = []
            for group in (old, new):
                free = [item for item in range(group * 8, group * 8 + 8) if (index, item) not in seen]
                with torch.no_grad():
                    margins.append(model(torch.full((len(free),), index), torch.tensor(free)).mean())
            wins += bool(margins[1] > margins[0])
        preferred_recent.append(wins / len(user_ids))
    assert preferred_recent[0] < 0.2 and preferred_recent[1] > 0.5, preferred_recent  # measured: 0.005, 0.665


def original_user_ids(data):
    """Original user ids by contiguous index, from convert.py's users.csv."""
    return [int(line.split(",")[1]) for line in (data / "users.csv").read_text().splitlines()[1:]]


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_branch_losses_make_each_branch_a_model_of_its_own(planted, tmp_path, weight):
    code, records = train(planted, tmp_path, "--model", "neumf", "-e", "15", "--branch_loss", weight)
    assert code == 0 and records[0]["branch_loss"] == weight
    assert summary(records)["best_accuracy"] >= 0.9  # chance is 1/25
    saved = checkpoint.load_checkpoint(tmp_path / "ck" / "last.pt")
    neumf = checkpoint.model_from_checkpoint(saved)
    torch.manual_seed(0)  # the initial model of the run (seed 0)
    initial = checkpoint.build_model("neumf", **saved["model_args"])
    outputs_moved = [not torch.equal(getattr(neumf, branch).output.weight, getattr(initial, branch).output.weight)
                     for branch in ("gmf", "mlp")]
    assert outputs_moved == [weight > 0] * 2  # without branch losses the branches' own outputs stay as they began
    if weight:  # each branch alone, through its own output layer, ranks the held-out items first
        dataset = dataloading.load_dataset(planted)
        mask = evaluation.candidate_mask(dataset.test_items, dataset.test_negatives)
        for branch in (neumf.gmf, neumf.mlp):
            hits, *_, users = evaluation.sampled_sums(branch.eval(), dataset, 1, 64, contextlib.nullcontext,
                                                   mask=mask).tolist()
            assert hits / users >= 0.9


def test_resume_without_checkpoint_starts_from_scratch(planted, tmp_path, capsys):
    assert train(planted, tmp_path, "-e", "1", "--resume")[0] == 0
    assert "starting from scratch" in capsys.readouterr().out


def test_pretrained_neumf_starts_from_the_two_models(planted, tmp_path):
    for model in ("gmf", "mlp"):
        folder = tmp_path / model
        folder.mkdir()
        assert train(planted, folder, "--model", model, "-e", "10")[0] == 0
    code, records = train(planted, tmp_path, "--pretrain_gmf", tmp_path / "gmf" / "ck" / "best.pt",
                          "--pretrain_mlp", tmp_path / "mlp" / "ck" / "best.pt", "-e", "1", "-l", "1e-6")
    assert code == 0
    # With a negligible learning rate, NeuMF's first evaluation reflects the pre-trained branches, far above chance.
    assert [r for r in records if r["type"] == "epoch"][0]["hr@1"] >= 0.5


def test_batch_larger_than_the_data_is_clamped(planted, tmp_path, capsys):
    code, records = train(planted, tmp_path, "-b", str(2**20), "-e", "2")
    assert code == 0 and "larger than an epoch" in capsys.readouterr().err
    assert len([r for r in records if r["type"] == "epoch"]) == 2


def test_defaults_are_chosen_from_the_data_and_printed(planted, tmp_path, capsys):
    assert ncf.main(["--data", str(planted), "-e", "1", "--checkpoint_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "negatives per positive: 16 (chosen for 336 training pairs" in out
    assert "batch size: 1024 (chosen" in out and "learning rate:" in out
    assert "Adam betas: 0.9, 0.999 (chosen" in out
    assert defaults.choose_batch_size(20_000_000, 4) == 2**18 and defaults.choose_batch_size(994_169, 4) == 2**13
    assert defaults.choose_batch_size(99_057, 16) == 2**12 and defaults.choose_betas(2**20) == (0.25, 0.5)
    # Negatives: NVIDIA's 4 from ML-1M's size up, 16 at ML-100k's, in between for sizes in between.
    assert [defaults.choose_negatives(n) for n in (20_000_000, 994_169, 400_000, 200_000, 99_057, 336)] == \
        [4, 4, 4, 8, 16, 16]
    # The built-in demo (no --data) keeps 4 so that it stays quick; flags given are used as given.
    dataset = dataloading.load_dataset(planted)
    demo = ncf.parse_args([])
    demo_config, notes = ncf.resolve_config(demo, dataset)
    assert "negatives per positive" in notes and demo_config.negative_samples == 4
    given = ncf.parse_args(["--data", str(planted), "-n", "2"])
    given_config, notes = ncf.resolve_config(given, dataset)
    assert "negatives per positive" not in notes and given_config.negative_samples == 2
    # Epochs: 20, the demo 10 (its best epoch comes by the 9th); a given -e is used for either.
    assert (demo.epochs, given.epochs) == (10, 20)
    # The MLP tower: NVIDIA's from ML-1M's size up, halved below 500,000 pairs; --layers as given, and only the
    # models with a tower get one chosen.
    assert "MLP layers: 128 128 64 32 (chosen for 336 training pairs" in out
    assert demo_config.layers == [128, 128, 64, 32]
    for flags, layers in ((["--layers", "64", "32"], [64, 32]), (["--model", "gmf"], [256, 256, 128, 64])):
        config, notes = ncf.resolve_config(ncf.parse_args(["--data", str(planted), *flags]), dataset)
        assert "MLP layers" not in notes and config.layers == layers
    assert [defaults.choose_layers(n) for n in (20_000_000, 994_169, 500_000, 499_999, 99_057)] == \
        [[256, 256, 128, 64]] * 3 + [[128, 128, 64, 32]] * 2
    # The schedule: cosine from 0.002 on small, dense data (below 500,000 pairs, at least 25 of them per item), the
    # demo aside; elsewhere, or with another schedule given, the constant rate of the batch-size rule; a given -l
    # starts the cosine where it says.
    ml100k, lastfm = (99_057, 1_682), (89_058, 17_626)
    sizes = [(994_169, 3_706), (500_000, 1_000), (499_999, 1_000), ml100k, lastfm, (250, 10), (249, 10)]
    assert [defaults.choose_schedule(*size) for size in sizes] == \
        ["constant", "constant", "cosine", "cosine", "constant", "cosine", "constant"]
    assert defaults.choose_schedule(*ml100k, demo=True) == "constant"
    for given, expected in (({}, ("cosine", 0.002)), ({"lr_schedule": "constant"}, ("constant", 0.001)),
                            ({"lr_schedule": "onecycle"}, ("onecycle", 0.001)),
                            ({"learning_rate": 0.003}, ("cosine", 0.003))):
        values, notes, _ = defaults.choose_sizes(*ml100k, False, **given)
        assert (values["lr_schedule"], values["learning_rate"]) == expected
        assert ("schedule" in notes) == ("lr_schedule" not in given)
    assert notes["schedule"][1].startswith("chosen for 99,057 training pairs, 59 per item")
    # The planted data (336 pairs over 32 items) is sparse: there, and for the demo, the constant rate of the rule.
    assert (demo_config.lr_schedule, demo_config.learning_rate) == ("constant", 0.001)
    assert (given_config.lr_schedule, given_config.learning_rate) == ("constant", 0.001)
    for flags, expected in ((["--lr_schedule", "cosine"], ("cosine", 0.001)), (["-l", "0.003"], ("constant", 0.003))):
        config, notes = ncf.resolve_config(ncf.parse_args(["--data", str(planted), *flags]), dataset)
        assert (config.lr_schedule, config.learning_rate) == expected and "schedule" not in notes
    assert ncf.parse_args(["-e", "3"]).epochs == 3 and ncf.parse_args(["--data", "x", "-e", "30"]).epochs == 30


def test_threshold_stops_early(planted, tmp_path):
    code, records = train(planted, tmp_path, "-t", "0.5", "-e", "50")
    assert code == 0
    epochs = [r for r in records if r["type"] == "epoch"]
    assert epochs[-1]["hr@1"] >= 0.5 and len(epochs) < 50 and summary(records)["time_to_target"] is not None


def write_nvidia_layout(folder, data):
    """The planted set in NVIDIA's feature-spec layout: [rows, features] tensors; test series = negatives, then the
    positive, labelled by a separate label tensor."""
    train = np.load(data / "train.npy").astype(np.int64)
    test = np.load(data / "test.npy").astype(np.int64)
    negatives = np.load(data / "test_negatives.npy").astype(np.int64)
    per_user = negatives.shape[1] + 1
    items = np.concatenate([negatives, test[:, 1:]], axis=1)
    users = np.repeat(test[:, :1], per_user, axis=1)
    labels = np.zeros_like(items, dtype=np.float32)
    labels[:, -1] = 1
    torch.save(torch.from_numpy(train), folder / "train_data_0.pt")
    torch.save(torch.ones(len(train), 1), folder / "train_data_1.pt")
    torch.save(torch.from_numpy(np.stack([users.ravel(), items.ravel()], 1)), folder / "test_data_0.pt")
    torch.save(torch.from_numpy(labels.reshape(-1, 1)), folder / "test_data_1.pt")
    meta = json.loads((data / "metadata.json").read_text())
    spec = {
        "feature_spec": {"user": {"dtype": "torch.int64", "cardinality": meta["num_users"]},
                         "item": {"dtype": "torch.int64", "cardinality": meta["num_items"]},
                         "label": {"dtype": "torch.float32"}},
        "metadata": {"test_samples_per_series": per_user},
        "source_spec": {
            "train": [{"type": "torch_tensor", "features": ["user", "item"], "files": ["train_data_0.pt"]},
                      {"type": "torch_tensor", "features": ["label"], "files": ["train_data_1.pt"]}],
            "test": [{"type": "torch_tensor", "features": ["user", "item"], "files": ["test_data_0.pt"]},
                     {"type": "torch_tensor", "features": ["label"], "files": ["test_data_1.pt"]}]},
        "channel_spec": {"user_ch": ["user"], "item_ch": ["item"], "label_ch": ["label"]},
    }
    (folder / "feature_spec.yaml").write_text(yaml.safe_dump(spec))


def test_nvidia_directory_trains_like_ours(planted, tmp_path):
    import dataloading

    nvidia = tmp_path / "nvidia"
    nvidia.mkdir()
    write_nvidia_layout(nvidia, planted)
    ours, theirs = dataloading.load_dataset(planted), dataloading.load_dataset(nvidia)
    assert theirs.fingerprint == ours.fingerprint  # the same split, read from either layout
    code, records = train(nvidia, tmp_path)
    assert code == 0 and summary(records)["best_accuracy"] >= 0.9


def test_recency_without_timestamps_is_refused(planted, tmp_path, capsys):
    nvidia = tmp_path / "nvidia"
    nvidia.mkdir()
    write_nvidia_layout(nvidia, planted)
    assert train(nvidia, tmp_path, "--recency", "1")[0] == 1
    assert "--recency needs the training pairs' timestamps" in one_line_error(capsys)


# --------------------------------------------------------------------------------------------------- bad input


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_data_that_is_not_a_dataset(tmp_path, capsys):
    assert ncf.main(["--data", str(tmp_path), "--checkpoint_dir", ""]) == 1
    assert "no metadata.json" in one_line_error(capsys)
    assert ncf.main(["--data", str(tmp_path / "missing"), "--checkpoint_dir", ""]) == 1
    assert "not a directory" in one_line_error(capsys)


def test_corrupted_array(planted, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in planted.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "train.npy").write_bytes(b"\x93NUMPY garbage")
    assert ncf.main(["--data", str(broken), "--checkpoint_dir", ""]) == 1
    assert "train.npy: corrupted" in one_line_error(capsys)
    (broken / "train.npy").write_bytes((planted / "train.npy").read_bytes())
    np.save(broken / "train_timestamps.npy", np.zeros(3, dtype=np.int64))  # not one per training pair
    assert ncf.main(["--data", str(broken), "--checkpoint_dir", ""]) == 1
    assert "train_timestamps has shape (3,)" in one_line_error(capsys)
    np.save(broken / "train_timestamps.npy", np.zeros(len(np.load(planted / "train.npy")), dtype=np.int64))
    assert ncf.main(["--data", str(broken), "--checkpoint_dir", "", "--recency", "1"]) == 1
    assert "has the same timestamp (0), so none is more recent" in one_line_error(capsys)


@pytest.mark.parametrize("flags", [["-b", "0"], ["-f", "-3"], ["-e", "0"], ["--layers", "15", "8"],
                                   ["-l", "-1"], ["--dropout", "1"], ["--pretrain_gmf", "x.pt"],
                                   ["-b1", "1.5"], ["--branch_loss", "-1"], ["--recency", "-1"],
                                   ["--recency_window", "0"], ["--eps", "-1"], ["--eps", "nan"],
                                   ["--weight_decay", "nan"], ["--weight_decay", "-0.1"], ["--recency", "inf"],
                                   ["--alpha", "1.5"], ["-l", "nan"]])
def test_bad_flags_are_refused(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ncf.parse_args(flags)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_missing_checkpoint_in_test_mode(planted, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default --checkpoint_dir would go
    assert ncf.main(["--data", str(planted), "--mode", "test", "--load_checkpoint_path", str(tmp_path / "x.pt")]) == 1
    assert "no such checkpoint" in one_line_error(capsys)
    assert not (tmp_path / "checkpoints").exists()  # a failed run leaves no empty log folder behind


def test_nan_loss_stops_and_keeps_the_best_checkpoint(planted, tmp_path, capsys):
    assert train(planted, tmp_path, "-e", "3")[0] == 0
    best = (tmp_path / "ck" / "best.pt").read_bytes()
    capsys.readouterr()
    code, _ = train(planted, tmp_path, "-e", "3", "-l", "1e38", "--model", "neumf")
    assert code == 1
    message = one_line_error(capsys)
    assert "training loss became nan in epoch 0" in message or "training loss became inf in epoch 0" in message
    assert (tmp_path / "ck" / "best.pt").read_bytes() == best


def test_a_worse_run_never_overwrites_the_best_checkpoint(planted, tmp_path):
    assert train(planted, tmp_path, "-e", "15")[0] == 0
    best = (tmp_path / "ck" / "best.pt").read_bytes()
    assert train(planted, tmp_path, "-e", "1", "-l", "1e-7")[0] == 0
    assert (tmp_path / "ck" / "best.pt").read_bytes() == best


def test_checkpoint_for_another_dataset_is_refused(planted, tmp_path, capsys):
    assert train(planted, tmp_path, "-e", "1")[0] == 0
    assert run_convert(["--dataset", "demo", "--output", tmp_path / "demo"])[0] == 0
    capsys.readouterr()
    assert ncf.main(["--data", str(tmp_path / "demo"), "--mode", "test",
                     "--load_checkpoint_path", str(tmp_path / "ck" / "best.pt")]) == 1
    assert "trained on another dataset" in one_line_error(capsys)


def copy_dataset(source, folder):
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_occupied_or_unwritable_outputs_are_found_before_training(planted, tmp_path, capsys):
    occupied = tmp_path / "a file"
    occupied.write_text("x")
    cases = [(["--checkpoint_dir", str(occupied)], "--checkpoint_dir"),
             (["--checkpoint_dir", str(occupied / "sub")], "is a file, so nothing can be written there"),
             (["--checkpoint_dir", "", "--log_path", str(tmp_path)], "--log_path"),
             (["--checkpoint_dir", "", "--log_path", str(occupied / "log.json")], "is a file")]
    for flags, expected in cases:
        assert ncf.main(["--data", str(planted), "-e", "1", *flags]) == 1
        captured = capsys.readouterr()
        assert "epoch" not in captured.out and expected in one_line_error_of(captured.err)
    assert occupied.read_text() == "x" and sorted(path.name for path in tmp_path.iterdir()) == ["a file"]


def one_line_error_of(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncf.py: error: "), lines
    return lines[0]


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_temporary_file(planted, tmp_path, capsys, monkeypatch):
    def full_disk(_, path):
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    assert train(planted, tmp_path, "-e", "1")[0] == 1
    assert "cannot write the checkpoint (no space left on device)" in one_line_error(capsys)
    assert list((tmp_path / "ck").iterdir()) == []


def test_stale_temporary_checkpoints_are_removed_and_an_empty_best_is_replaced(planted, tmp_path, capsys):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / ".last.pt.tmp-4206942").write_bytes(b"half")  # a dead process's (above Linux's default pid_max)
    (folder / "best.pt").write_bytes(b"")  # a write cut short before writes were atomic
    assert train(planted, tmp_path, "-e", "1")[0] == 0
    assert "best.pt: empty; it will be replaced" in capsys.readouterr().err
    assert sorted(path.name for path in folder.iterdir()) == ["best.pt", "last.pt"]
    assert checkpoint.load_checkpoint(folder / "best.pt")["epoch"] == 0


def broken_checkpoints(source):
    """(name, checkpoint dict) of damaged checkpoints, from a good one."""
    good = checkpoint.load_checkpoint(source)
    state = dict(good["state_dict"])
    state.pop("output.bias")
    wrong_shape = dict(good["state_dict"], **{"output.weight": torch.zeros(1, 3)})
    return {"missing key": {key: value for key, value in good.items() if key != "state_dict"},
            "missing weights": good | {"state_dict": state},
            "wrong shape": good | {"state_dict": wrong_shape},
            "bad model arguments": good | {"model_args": good["model_args"] | {"factors": -2}},
            "unknown model": good | {"model": "transformer"}}


@pytest.mark.parametrize("case", ["missing key", "missing weights", "wrong shape", "bad model arguments",
                                  "unknown model", "pickle", "empty"])
def test_damaged_checkpoints_are_refused_in_one_line(planted, tmp_path, capsys, case):
    assert train(planted, tmp_path, "--model", "gmf", "-e", "1")[0] == 0
    path, ran = tmp_path / "damaged.pt", tmp_path / "ran"
    if case == "pickle":
        torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "model": Planted(str(ran))}, path)
    elif case == "empty":
        path.write_bytes(b"")
    else:
        torch.save(broken_checkpoints(tmp_path / "ck" / "best.pt")[case], path)
    capsys.readouterr()
    assert ncf.main(["--data", str(planted), "--mode", "test", "--load_checkpoint_path", str(path), "-k", "1",
                     "--checkpoint_dir", ""]) == 1
    assert str(path) in one_line_error(capsys)
    assert not ran.exists()  # loading never runs code from the file


class Planted:
    """Pickled, it would create a file when unpickled: a stand-in for code hidden in a .pt file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_nvidia_tensors_holding_a_pickle_are_refused_without_running_it(planted, tmp_path, capsys):
    nvidia = tmp_path / "nvidia"
    nvidia.mkdir()
    write_nvidia_layout(nvidia, planted)
    torch.save({"tensor": Planted(str(tmp_path / "ran"))}, nvidia / "train_data_0.pt")
    assert ncf.main(["--data", str(nvidia), "--checkpoint_dir", ""]) == 1
    assert "train_data_0.pt: cannot load as tensors" in one_line_error(capsys)
    assert not (tmp_path / "ran").exists()


def edit(planted, folder, name, change):
    copy_dataset(planted, folder)
    if name.endswith(".npy"):
        np.save(folder / name, change(np.load(folder / name)))
    else:
        (folder / name).write_text(json.dumps(change(json.loads((folder / name).read_text()))))
    return folder


@pytest.mark.parametrize("case, expected", [
    ("float train", "the train array holds float64 values"),
    ("counts", "records num_train"),
    ("test order", "test rows must hold one user each, in increasing user order"),
    ("repeated test user", "test rows must hold one user each"),
    ("no negatives", "test_negatives has shape (48, 0)"),
    ("edited arrays", "records fingerprint"),
])
def test_datasets_that_do_not_add_up_are_refused(planted, tmp_path, capsys, case, expected):
    edits = {"float train": ("train.npy", lambda array: array.astype(np.float64) + 0.25),
             "counts": ("metadata.json", lambda meta: meta | {"num_train": meta["num_train"] + 1}),
             "test order": ("test.npy", lambda array: array[::-1]),
             "repeated test user": ("test.npy", lambda array: np.concatenate([array[:1], array[:-1]])),
             "no negatives": ("test_negatives.npy", lambda array: array[:, :0]),
             "edited arrays": ("train.npy", lambda array: np.concatenate([array[:, :1], array[::-1, 1:]], axis=1))}
    data = edit(planted, tmp_path / "data", *edits[case])
    assert ncf.main(["--data", str(data), "--checkpoint_dir", ""]) == 1
    assert expected in one_line_error(capsys)


def test_topk_at_or_above_the_candidates_is_refused(planted, capsys):
    assert ncf.main(["--data", str(planted), "-k", "25", "--checkpoint_dir", ""]) == 1  # 1 + 24 negatives
    assert "-k/--topk 25 is not below the 25 candidates" in one_line_error(capsys)


def test_a_kill_between_the_log_and_the_checkpoint_leaves_each_epoch_logged_once(planted, tmp_path, monkeypatch):
    save = checkpoint.save_checkpoint

    def killed_saving_epoch_2(path, *args, **kwargs):
        if args[5] == 2 and path.name == "last.pt":  # the epoch's record is logged, its checkpoint not yet written
            raise KeyboardInterrupt
        return save(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", killed_saving_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(planted, tmp_path, "-e", "4")
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    code, records = train(planted, tmp_path, "-e", "4", "--resume")
    assert code == 0
    assert [record["epoch"] for record in records if record["type"] == "epoch"] == [0, 1, 2, 3]


def test_mixed_precision_on_cpu_trains_and_evaluates_like_float32(planted, tmp_path):
    runs = {}
    for name, flags in (("fp32", []), ("bf16", ["--amp"])):
        folder = tmp_path / name
        folder.mkdir()
        code, records = train(planted, folder, "--model", "neumf", "-e", "15", *flags)
        assert code == 0 and records[0]["amp"] == bool(flags)
        runs[name] = records
    assert summary(runs["bf16"])["best_accuracy"] >= 0.9  # chance is 1/25
    # The same model evaluated in bfloat16 and in float32 ranks (almost) alike.
    model = checkpoint.load_model(tmp_path / "bf16" / "ck" / "best.pt")
    dataset = dataloading.load_dataset(planted)
    autocast, _ = mixed_precision(True, torch.device("cpu"))
    low = evaluation.sampled_metrics(model, dataset, 1, 64, autocast)
    full = evaluation.sampled_metrics(model, dataset, 1, 64, contextlib.nullcontext)
    assert abs(low["hr@1"] - full["hr@1"]) <= 2 / 48 and abs(low["test_loss"] - full["test_loss"]) < 0.02


def test_uniform_negatives_train_too(planted, tmp_path):
    code, records = train(planted, tmp_path, "--model", "gmf", "--negative_sampling", "uniform")
    assert code == 0 and records[0]["negative_sampling"] == "uniform"
    assert summary(records)["best_accuracy"] >= 0.9  # chance is 1/25


def test_evaluation_batches_that_do_not_divide_the_users_give_the_same_figures(planted, tmp_path):
    assert train(planted, tmp_path, "--model", "gmf", "-e", "3")[0] == 0
    model, dataset = checkpoint.load_model(tmp_path / "ck" / "best.pt"), dataloading.load_dataset(planted)
    whole = evaluation.sampled_metrics(model, dataset, 1, 48, contextlib.nullcontext)  # 48 users in one batch
    for users_per_batch in (5, 7, 47):
        parts = evaluation.sampled_metrics(model, dataset, 1, users_per_batch, contextlib.nullcontext)
        assert parts["hr@1"] == whole["hr@1"] and parts["eval_samples"] == whole["eval_samples"]
        assert parts["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-6)  # float32 sums
    # Through ncf.py: --valid_batch_size 175 is 7 users of 25 candidates, leaving a last batch of 6.
    assert ncf.main(["--data", str(planted), "--mode", "test", "-k", "1", "--valid_batch_size", "175",
                     "--checkpoint_dir", str(tmp_path / "ck"), "--log_path", str(tmp_path / "t.json")]) == 0
    tested = json.loads((tmp_path / "t.json").read_text().splitlines()[-1])
    assert tested["hr@1"] == whole["hr@1"]


# ------------------------------------------------------------------------------------ validation, full ranking


@pytest.fixture(scope="module")
def planted_with_validation(planted, tmp_path_factory):
    """The planted log converted with a validation item per user (the second latest), with its own negatives."""
    folder = tmp_path_factory.mktemp("planted_validation")
    assert run_convert(["--path", planted.parent / "log.csv", "--output", folder / "data", "--valid_negative", "24",
                        "--validation"])[0] == 0
    return folder / "data"


def test_the_best_epoch_is_chosen_on_validation_and_its_test_figures_reported(planted_with_validation, tmp_path,
                                                                             capsys):
    code, records = train(planted_with_validation, tmp_path, "--model", "gmf", "-e", "12", "-l", "0.003")
    assert code == 0
    epochs = [record for record in records if record["type"] == "epoch"]
    chosen = max(range(len(epochs)), key=lambda epoch: (epochs[epoch]["valid_hr@1"], -epoch))  # the first best
    result = summary(records)
    assert result["selected_on"] == "validation" and result["best_epoch"] == chosen
    assert result["best_accuracy"] == epochs[chosen]["hr@1"] and result["best_ndcg"] == epochs[chosen]["ndcg@1"]
    assert checkpoint.load_checkpoint(tmp_path / "ck" / "best.pt")["epoch"] == chosen
    out = capsys.readouterr().out
    assert "valid HR@1" in out and "the best epoch was chosen on the validation set" in out
    from logger import summarize

    assert summarize.main([str(tmp_path / "log.json")]) == 0
    table = capsys.readouterr().out
    assert "valid_hr@1" in table.splitlines()[0] and table.rstrip().endswith("chosen on the validation set")


def test_without_validation_the_summary_says_the_test_items_chose(planted, tmp_path, capsys):
    code, records = train(planted, tmp_path, "--model", "gmf", "-e", "2")
    assert code == 0 and summary(records)["selected_on"] == "test"
    assert "the best epoch was chosen on the test items" in capsys.readouterr().out
    from logger import summarize

    assert summarize.main([str(tmp_path / "log.json")]) == 0
    assert "chosen on the test items (no validation set" in capsys.readouterr().out


def test_early_stopping_stops_where_the_validation_curve_says(planted_with_validation, tmp_path):
    code, records = train(planted_with_validation, tmp_path, "--model", "gmf", "-e", "40", "--early_stop", "3")
    assert code == 0
    curve = [record["valid_hr@1"] for record in records if record["type"] == "epoch"]
    best = curve.index(max(curve))
    assert len(curve) == best + 4 < 40  # three epochs without a better one after the best, then it stops
    assert max(curve[best + 1:]) <= curve[best]


@pytest.mark.parametrize("model", ["gmf", "neumf"])
def test_full_ranking_puts_the_held_out_item_first(planted, tmp_path, model):
    code, records = train(planted, tmp_path, "--model", model, "--eval_protocol", "full")
    assert code == 0
    best = summary(records)["best_metrics"]
    assert best["hr@1"] >= 0.9 and best["recall@1"] == best["hr@1"] and best["mrr@1"] == best["hr@1"]
    epochs = [record for record in records if record["type"] == "epoch"]
    assert "test_loss" not in epochs[0]
    # every test user's row of the catalogue is scored once per evaluation
    dataset = dataloading.load_dataset(planted)
    assert epochs[0]["eval_throughput"] * epochs[0]["validation_epoch_time"] == pytest.approx(
        dataset.test.users.numel() * dataset.num_items, rel=1e-3)


def test_full_ranking_checks_k_against_the_catalogue_and_sampled_needs_negatives(planted, tmp_path, capsys):
    assert ncf.main(["--data", str(planted), "--eval_protocol", "full", "-k", "32", "--checkpoint_dir", ""]) == 1
    assert "-k/--topk 32 is not below the 32 candidates" in one_line_error(capsys)
    ratio = tmp_path / "ratio"
    assert run_convert(["--path", planted.parent / "log.csv", "--output", ratio, "--split", "ratio"])[0] == 0
    capsys.readouterr()
    assert ncf.main(["--data", str(ratio), "--checkpoint_dir", ""]) == 1
    assert "no sampled negatives, which sampled evaluation needs" in one_line_error(capsys)


def test_throughput_is_printed_with_a_unit_that_suits_it():
    from logger import epoch_line, rate

    assert [rate(value) for value in (2.5e9, 107e6, 1.234e6, 87_400, 999.6, 12)] == [
        "2.50G samples/s", "107.00M samples/s", "1.23M samples/s", "87.4k samples/s", "1000 samples/s",
        "12 samples/s"]
    record = {"epoch": 3, "train_loss": 0.5, "hr@10": 0.7, "train_throughput": 150_000, "train_epoch_time": 2.0,
              "validation_epoch_time": 0.5}
    assert epoch_line(record) == "epoch   3  loss 0.5000  HR@10 0.7000  150.0k samples/s  2.5 s"
