"""The family registry: a family defined here (its own model, batches, loss and metric), registered in one line,
runs through the same code paths as the built-in ones: train, save, resume, --mode test, load, recommend."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import dataloading
import ncf
import recommend
from conftest import run_convert
from ncflib import checkpoint, families
from ncflib import training as train
from ncflib.errors import TaskError


class ItemPopularity(nn.Module):
    """Scores each item by a learned number, trained towards the item's share of the training pairs."""

    def __init__(self, num_users, num_items, scale=1.0):
        super().__init__()
        self.item_score = nn.Embedding(num_items, 1)
        nn.init.zeros_(self.item_score.weight)
        self.scale = scale

    def forward(self, users, items):
        return self.item_score(items).squeeze(-1)

    def score_all(self, users):
        return self.item_score.weight.T.repeat(users.numel(), 1)

    def training_loss(self):
        def loss(model, inputs, autocast):
            items, targets = inputs
            with autocast():
                total = ((model(items, items).float() - targets) ** 2).sum()
            return total, total

        return loss


def popularity(dataset, scale):
    """[num_items] each item's training pairs over the most popular item's, times ``scale``."""
    counts = torch.bincount(dataset.train_items, minlength=dataset.num_items).float()
    return scale * counts / counts.max()


class PopularityFamily(families.Family):
    name = "popularity"
    models = {"popularity": ItemPopularity}
    description = "popularity (a test family)"

    def add_arguments(self, parser):
        parser.add_argument_group("the test family").add_argument("--scale", type=float, default=1.0)

    def default_epochs(self, args):
        return 3

    def check(self, kind, dataset, config):
        if dataset.num_items < 2:
            raise TaskError(f"{dataset.path}: popularity needs two items")

    def batches(self, kind, config, dataset, runtime):
        targets = popularity(dataset, config.scale)
        items = torch.arange(dataset.num_items, device=targets.device)

        def epoch(number):
            order = torch.randperm(len(items), generator=torch.Generator().manual_seed(train.epoch_seed(0, number)))
            return [dataloading.Batch((items[part], targets[part]), len(part), len(part))
                    for part in order.split(config.batch_size)]

        return epoch

    def evaluator(self, kind, config, dataset, model, autocast, runtime):
        targets = popularity(dataset, config.scale)

        def evaluate():
            with torch.no_grad():
                scores = model.score_all(torch.zeros(1, dtype=torch.long))[0]
            return {"popularity_error": float((scores - targets).abs().mean().detach()), "eval_samples": len(targets)}

        return evaluate

    def selection(self, kind, dataset, config):
        return train.Selection("popularity_error", higher_is_better=False)


@pytest.fixture
def registered():
    family = families.register(PopularityFamily())
    yield family
    families.unregister(family)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("popular")
    rng = np.random.default_rng(0)
    lines = ["user,item,timestamp"] + [f"{user},{item},{time}" for user in range(30) for time, item in
                                       enumerate(rng.choice(12, size=6, replace=False, p=np.arange(12, 0, -1) / 78))]
    (folder / "log.csv").write_text("\n".join(lines) + "\n")
    assert run_convert(["--path", folder / "log.csv", "--output", folder / "data", "--valid_negative", "3"])[0] == 0
    return folder / "data"


def records(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def run(data, folder, *flags):
    return ncf.main(["--data", str(data), "--model", "popularity", "-b", "4", "-l", "0.2", "--lr_schedule",
                     "constant", "--checkpoint_dir", str(folder), *flags])


def test_a_family_defined_here_trains_resumes_tests_and_loads_like_the_built_in_ones(registered, data, tmp_path,
                                                                                     capsys):
    assert "popularity" in families.model_kinds() and families.family_of("popularity") is registered
    # Trained through ncf.py: its flag, its default epochs, its metric chosen in its direction.
    assert run(data, tmp_path / "whole", "--scale", "2") == 0
    epochs = [record for record in records(tmp_path / "whole" / "log.json") if record["type"] == "epoch"]
    assert [record["epoch"] for record in epochs] == [0, 1, 2]
    errors = [record["popularity_error"] for record in epochs]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.6 * errors[0]
    summary = records(tmp_path / "whole" / "log.json")[-1]
    assert summary["best_epoch"] == 2 and summary["best_metrics"]["popularity_error"] == errors[-1]
    # Stopped after two epochs and resumed: the same model as the uninterrupted run.
    assert run(data, tmp_path / "parts", "--scale", "2", "-e", "2") == 0
    assert run(data, tmp_path / "parts", "--scale", "2", "--resume") == 0
    whole, parts = (checkpoint.load_checkpoint(tmp_path / name / "last.pt") for name in ("whole", "parts"))
    assert torch.equal(whole["state_dict"]["item_score.weight"], parts["state_dict"]["item_score.weight"])
    # A resumed run is refused when its family's settings are not the same (here: the common ones).
    assert run(data, tmp_path / "parts", "--scale", "2", "-e", "4", "--resume", "--optimizer", "sgd") == 1
    assert "was trained with --optimizer adam" in capsys.readouterr().err
    # --mode test evaluates the saved model as its family does.
    capsys.readouterr()
    assert ncf.main(["--data", str(data), "--mode", "test", "--scale", "2", "--load_checkpoint_path",
                     str(tmp_path / "whole" / "best.pt"), "--log_path", str(tmp_path / "test.json")]) == 0
    assert records(tmp_path / "test.json")[-1]["popularity_error"] == pytest.approx(errors[-1])
    # Loaded as the registry builds it, and used by recommend.py (it ranks every item).
    model = checkpoint.load_model(tmp_path / "whole" / "best.pt")
    assert isinstance(model, ItemPopularity) and families.kind_of(model) == "popularity"
    capsys.readouterr()
    assert recommend.main(["--checkpoint", str(tmp_path / "whole" / "best.pt"), "--user", "0", "-k", "3"]) == 0
    top = [line.split()[1] for line in capsys.readouterr().out.splitlines()[2:5]]
    dataset = dataloading.load_dataset(data)
    user = dataset.original_ids("users")[0].index("0")
    seen = set(dataset.train_items[dataset.train_users == user].tolist()) | set(
        dataset.test.items[dataset.test.users == user].tolist())
    ranked = [item for item in model.item_score.weight.squeeze(1).argsort(descending=True).tolist() if item not in seen]
    assert top == [dataset.original_ids("items")[0][item] for item in ranked[:3]]


def test_kinds_are_unique_and_unknown_ones_are_one_line_errors(registered):
    with pytest.raises(ValueError, match="registered already"):
        families.register(PopularityFamily())
    with pytest.raises(TaskError, match="unknown model 'nosuch'"):
        families.family_of("nosuch")
    assert [families.family_of(kind).name for kind in ("neumf", "dotbias", "textmf", "popularity")] == [
        "implicit", "ratings", "reviews", "popularity"]


def test_the_command_lines_and_the_checkpoint_code_import_no_sharding_and_no_torchrec():
    code = ("import sys, ncf, recommend, convert, ncflib.checkpoint, ncflib.training; "
            "print(sorted(name for name in sys.modules if name.split('.')[0] in ('torchrec', 'fbgemm_gpu') "
            "or name == 'ncflib.sharding'))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"
