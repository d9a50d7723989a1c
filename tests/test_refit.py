"""--refit: the epoch or setting chosen on validation, fitted again on the training and validation pairs, its test
set evaluated once; the joined dataset, the checkpoints, resuming and the refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dataloading
import ncf
import recommend
from ncflib import checkpoint
from ncflib.ease import EASE
from ncflib.errors import DatasetError

FULL = ["--eval_protocol", "full", "-k", "5", "--device", "cpu"]


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def listing(folder):
    return sorted(str(path.relative_to(folder)) for path in Path(folder).rglob("*"))


def test_the_joined_dataset_keeps_every_side_and_the_fingerprint():
    train = np.array([[0, 0], [0, 1], [1, 2], [2, 0]])
    validation = np.array([[0, 3], [2, 1], [2, 2]])
    test = np.array([[1, 3], [2, 3]])
    dataset = dataloading.Dataset.from_arrays(
        3, 4, train, test, None, "mem", train_timestamps=np.array([5, 6, 7, 8]),
        train_ratings=np.array([1.0, 2.0, 3.0, 4.0]), validation=validation,
        validation_ratings=np.array([5.0, 4.0, 3.0]), validation_timestamps=np.array([9, 10, 11]))
    joined = dataset.with_validation_trained()
    assert joined.validation is None and joined.fingerprint == dataset.fingerprint
    assert joined.train_users.tolist() == [0, 0, 1, 2, 0, 2, 2]
    assert joined.train_items.tolist() == [0, 1, 2, 0, 3, 1, 2]
    assert joined.train_ratings.tolist() == [1, 2, 3, 4, 5, 4, 3]
    assert joined.train_timestamps.tolist() == [5, 6, 7, 8, 9, 10, 11]
    assert torch.equal(joined.test.items, dataset.test.items)

    # Training pairs with times and validation pairs without: refused in one line, not joined without them.
    untimed = dataloading.Dataset.from_arrays(3, 4, train, test, None, "mem", train_timestamps=np.array([5, 6, 7, 8]),
                                              validation=validation)
    with pytest.raises(DatasetError, match="mem: the training pairs have timestamps and the validation pairs none"):
        untimed.with_validation_trained()


def test_a_closed_form_refit_is_one_solve_of_the_chosen_setting_on_both_sets(planted_ratio, tmp_path, capsys):
    folder = tmp_path / "run"
    assert ncf.main(["--data", str(planted_ratio), "--model", "ease", "--ease_l2", "1", "30", "3000", "--refit",
                     *FULL, "--checkpoint_dir", str(folder)]) == 0
    out = capsys.readouterr().out
    records = read_log(folder / "log.json")
    assert [record["type"] for record in records] == (["config"] + ["epoch"] * 3 + ["refit_config", "refit_epoch",
                                                                                     "summary"])
    chosen_epoch = max(range(3), key=lambda e: records[1 + e]["valid_recall@5"])  # (first of equals, as the loop)
    chosen_l2 = [1.0, 30.0, 3000.0][chosen_epoch]
    summary, refit_epoch = records[-1], records[-2]
    assert summary["refit"] and summary["selected_on"] == "validation" and summary["best_epoch"] == chosen_epoch
    assert summary["refit_choice"] == f"--ease_l2 {chosen_l2:g}"
    # The test set is evaluated once, by the refit: the choosing run's epochs evaluate the validation set alone.
    assert all("valid_recall@5" in record and "recall@5" not in record for record in records[1:4])
    assert all(key.startswith("valid_") for key in summary["chosen_metrics"])
    assert summary["best_metrics"]["recall@5"] == refit_epoch["recall@5"]
    assert f"--ease_l2 {chosen_l2:g} chosen on the validation set" in out and "best.pt is the refit model" in out

    # best.pt is one solve of the chosen weight on the training and validation pairs (a known answer).
    dataset = dataloading.load_dataset(planted_ratio)
    joined = dataset.with_validation_trained()
    assert records[-3]["num_train"] == joined.num_train > dataset.num_train
    expected = EASE(dataset.num_users, dataset.num_items, joined.num_train)
    expected.solve(joined.train_users, joined.train_items, chosen_l2)
    refit_model = checkpoint.load_model(folder / "best.pt", dataset)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(refit_model.state_dict()[name], value)
    chosen_model = checkpoint.load_model(folder / "chosen" / "best.pt", dataset)  # the choosing run's, kept
    assert not torch.equal(chosen_model.item_weights, refit_model.item_weights)

    # --mode test of the refit model ranks the validation items as training items, as the refit run did.
    assert ncf.main(["--data", str(planted_ratio), *FULL, "--mode", "test", "--checkpoint_dir", str(folder),
                     "--log_path", str(tmp_path / "test.json")]) == 0
    assert read_log(tmp_path / "test.json")[-1]["recall@5"] == summary["best_metrics"]["recall@5"]
    assert "refit on the training and validation pairs" in capsys.readouterr().out

    # recommend.py serves it on the dataset's own folder (the fingerprint is the dataset's).
    assert recommend.main(["--checkpoint", str(folder / "best.pt"), "--data", str(planted_ratio), "--user", "0"]) == 0


def test_a_gradient_refit_reruns_the_chosen_epochs_and_resumes_to_the_same_model(planted_ratio, tmp_path, monkeypatch,
                                                                                 capsys):
    common = ["--data", str(planted_ratio), "--model", "gmf", "-e", "4", "-f", "8", "-b", "64", *FULL, "--refit"]
    assert ncf.main([*common, "--checkpoint_dir", str(tmp_path / "whole")]) == 0
    records = read_log(tmp_path / "whole" / "log.json")
    epochs = [record for record in records if record["type"] == "epoch"]
    refit_epochs = [record for record in records if record["type"] == "refit_epoch"]
    chosen = records[-1]["best_epoch"]
    assert chosen == max(range(4), key=lambda e: epochs[e]["valid_recall@5"])
    assert [record["epoch"] for record in refit_epochs] == list(range(chosen + 1))
    assert [("recall@5" in record) for record in refit_epochs] == [False] * chosen + [True]  # evaluated once
    assert all(not key.startswith("valid_") for key in refit_epochs[-1])  # no validation set left to evaluate
    # Each rerun epoch has the learning rate of the choosing run's same epoch (the same schedule over -e).
    assert [record["learning_rate"] for record in refit_epochs] == [record["learning_rate"]
                                                                   for record in epochs[:chosen + 1]]
    whole = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)
    assert whole["epoch"] == chosen and whole["config"]["refit_of"]["epoch"] == chosen

    # A run killed in its refit (right after its first epoch's last.pt), resumed, ends with the same model and
    # does not choose again.
    assert chosen >= 1  # (so that the refit has an epoch after the one it is killed in)
    save = checkpoint.save_checkpoint

    def save_then_die(path, *args, **options):
        save(path, *args, **options)
        if Path(path).name == "last.pt" and Path(path).parent == tmp_path / "killed" and args[5] == 0:
            raise KeyboardInterrupt  # (args[5]: the epoch)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ncf.main([*common, "--checkpoint_dir", str(tmp_path / "killed")])
    monkeypatch.undo()
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["config"]["refit_of"]["epoch"] == chosen
    capsys.readouterr()
    assert ncf.main([*common, "--checkpoint_dir", str(tmp_path / "killed"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming the refit of" in out and not any(line.startswith("epoch ") for line in out.splitlines())
    assert [line.split()[2] for line in out.splitlines() if line.startswith("refit epoch")] == [
        str(epoch) for epoch in range(1, chosen + 1)]
    again = torch.load(tmp_path / "killed" / "best.pt", weights_only=True)
    for name, value in whole["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][name], value)
    assert read_log(tmp_path / "killed" / "log.json")[-1]["best_metrics"] == records[-1]["best_metrics"]

    # Resuming that folder without --refit would continue a model trained on the validation pairs: refused.
    plain = [arg for arg in common if arg != "--refit"]
    assert ncf.main([*plain, "--checkpoint_dir", str(tmp_path / "killed"), "--resume"]) == 1


def test_refit_is_refused_without_a_validation_set_or_in_test_mode(tmp_path, capsys, planted_ratio):
    data = tmp_path / "data"
    log = tmp_path / "log.csv"
    log.write_text("user,item\n" + "".join(f"{u},{i}\n" for u in range(6) for i in range(u % 3, u % 3 + 5)))
    from conftest import run_convert

    assert run_convert(["--path", log, "--output", data, "--split", "ratio"])[0] == 0
    before = listing(tmp_path)
    assert ncf.main(["--data", str(data), "--refit", *FULL, "--checkpoint_dir", str(tmp_path / "ck")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"ncf.py: error: --refit fits the epoch or setting chosen on a validation set again, and {data} has none; "
        "convert the data with --validation, or drop --refit")
    assert listing(tmp_path) == before
    with pytest.raises(SystemExit):
        ncf.main(["--data", str(planted_ratio), "--refit", "--mode", "test"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "ncf.py: error: --refit trains a model again; --mode test evaluates a checkpoint as it is: drop one of them")
