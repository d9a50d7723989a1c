"""The family registry and the model contract: a family defined here (its own model, batches, loss and metric),
registered in one line, runs through the same code paths as the built-in ones (train, save, resume, --mode test,
load, recommend.py's tasks); a second, closed-form family supplies only its model's solve; flags belong to the
models that read them; the import graph runs one way."""

import ast
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

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
    """Scores each item by a learned number, trained towards the item's share of the training pairs. Besides what
    the loop needs (``training_loss``), it offers every item's score (``score_all``), item vectors and the scores of
    a new user from their items (the same for everyone)."""

    def __init__(self, num_users, num_items, scale=1.0):
        super().__init__()
        self.item_score = nn.Embedding(num_items, 1)
        nn.init.zeros_(self.item_score.weight)
        self.scale = scale

    def forward(self, users, items):
        return self.item_score(items).squeeze(-1)

    def score_all(self, users):
        return self.item_score.weight.T.repeat(users.numel(), 1)

    def item_vectors(self):
        return {"item score and one": torch.cat([self.item_score.weight, torch.ones_like(self.item_score.weight)], 1)}

    def score_history(self, items):
        return self.item_score.weight.squeeze(1)

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

    def add_arguments(self, parser, flags):
        flags.add(parser.add_argument_group("the test family"), "--scale", type=float, default=1.0,
                  readers=tuple(self.models), rule="positive")

    def default_epochs(self, args):
        return 3

    def check(self, dataset, config):
        if dataset.num_items < 2:
            raise TaskError(f"{dataset.path}: popularity needs two items")

    def batches(self, config, dataset, runtime):
        targets = popularity(dataset, config.scale)
        items = torch.arange(dataset.num_items, device=targets.device)

        def epoch(number):
            order = torch.randperm(len(items), generator=torch.Generator().manual_seed(train.epoch_seed(0, number)))
            return [dataloading.Batch((items[part], targets[part]), len(part), len(part))
                    for part in order.split(config.batch_size)]

        return epoch

    def evaluator(self, config, dataset, model, autocast, runtime):
        targets = popularity(dataset, config.scale)

        def evaluate():
            with torch.no_grad():
                scores = model.score_all(torch.zeros(1, dtype=torch.long))[0]
            return {"popularity_error": float((scores - targets).abs().mean().detach()), "eval_samples": len(targets)}

        return evaluate

    def selection(self, dataset, config):
        return train.Selection("popularity_error", higher_is_better=False)


class ItemCount(nn.Module):
    """Solved in closed form: each item scores its count of training pairs. Besides the solve, only what it offers
    users: its scores, item vectors and a new user's scores."""

    def __init__(self, num_users, num_items):
        super().__init__()
        self.register_buffer("counts", torch.zeros(num_items))

    def solve(self, users, items, setting):
        self.counts.copy_(torch.bincount(items, minlength=self.counts.numel()).float())
        return {}

    def forward(self, users, items):
        return self.counts[items]

    def score_all(self, users):
        return self.counts.expand(users.numel(), -1)

    def item_vectors(self):
        return {"count and one": torch.stack([self.counts, torch.ones_like(self.counts)], 1)}

    def score_history(self, items):
        return self.counts


class CountFamily(families.Family):
    """A closed-form family: its model and its name, nothing else (its evaluation is the ranking default's)."""

    name = "count"
    models = {"itemcount": ItemCount}
    description = "itemcount (a closed-form test family)"


@pytest.fixture
def registered():
    family = families.register(PopularityFamily())
    yield family
    families.unregister(family)


@pytest.fixture
def counted():
    family = families.register(CountFamily())
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
    bound = families.family_of("popularity")
    assert "popularity" in families.model_kinds() and bound.name == "popularity"
    assert bound.kind == "popularity" and bound.model_class is ItemPopularity
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
    assert ncf.main(["--data", str(data), "--mode", "test", "--model", "popularity", "--scale", "2",
                     "--load_checkpoint_path",
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
    served = tmp_path / "whole" / "best.pt"
    assert_served_like_any_model(served, model, dataset, tmp_path, capsys, item_score="item_score")


def assert_served_like_any_model(checkpoint_path, model, dataset, tmp_path, capsys, item_score):
    """recommend.py's --similar_to, --history and --export on a model of a family defined in this file: what each
    prints or writes is what the model's own methods give."""
    ids = dataset.original_ids("items")[0]
    scores = model.score_all(torch.zeros(1, dtype=torch.long))[0].detach()
    capsys.readouterr()
    # --similar_to: nearest by the cosine of the model's item vectors, the query left out.
    assert recommend.main(["--checkpoint", str(checkpoint_path), "--similar_to", ids[0], "-k", "2"]) == 0
    nearest = [line.split()[1] for line in capsys.readouterr().out.splitlines()[2:4]]
    vectors = torch.nn.functional.normalize(torch.cat(list(model.item_vectors().values()), 1).detach(), dim=1)
    similarity = vectors @ vectors[0]
    similarity[0] = -math.inf
    assert nearest == [ids[item] for item in similarity.topk(2).indices.tolist()]
    # --history: a new user's scores from their items alone, what they had left out.
    assert recommend.main(["--checkpoint", str(checkpoint_path), "--history", ids[1], "-k", "2"]) == 0
    listed = [line.split()[1] for line in capsys.readouterr().out.splitlines()[2:4]]
    order = [item for item in scores.argsort(descending=True, stable=True).tolist() if item != 1]
    assert set(listed) == {ids[item] for item in order[:2]}
    # --export: the model's tables, id maps and export.json (no ONNX: the test may run without onnx).
    folder = tmp_path / f"export-{checkpoint_path.parent.name}"
    assert recommend.main(["--checkpoint", str(checkpoint_path), "--export", str(folder), "--no_onnx"]) == 0
    table = np.load(folder / f"{item_score}.npy")
    assert np.allclose(table.reshape(-1), scores.numpy())
    assert json.loads((folder / "export.json").read_text())["files"][f"{item_score}.npy"]["shape"][0] == len(ids)
    if importlib.util.find_spec("onnxscript") and importlib.util.find_spec("onnxruntime"):  # and as ONNX
        assert recommend.main(["--checkpoint", str(checkpoint_path), "--export", str(folder.with_suffix(".onnx"))]) == 0
        assert float(capsys.readouterr().out.split("largest difference ")[1]) < 1e-5


def test_a_closed_form_family_supplies_only_a_solve_and_goes_through_every_path(counted, data, tmp_path, capsys):
    # Trained by the one epoch loop: one solve (no grid), evaluated by the ranking default, kept as best.pt.
    folder = tmp_path / "count"
    assert ncf.main(["--data", str(data), "--model", "itemcount", "-k", "3", "--checkpoint_dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "epoch   0  solved" in out and "optimizer" not in out.splitlines()[1]
    epochs = [record for record in records(folder / "log.json") if record["type"] == "epoch"]
    assert len(epochs) == 1 and "train_loss" not in epochs[0] and "hr@3" in epochs[0]
    state = checkpoint.load_checkpoint(folder / "best.pt")
    assert state["optimizer"] == {}
    dataset = dataloading.load_dataset(data)
    counts = torch.bincount(dataset.train_items, minlength=dataset.num_items).float()
    assert torch.equal(state["state_dict"]["counts"], counts)
    # --mode test gives the run's figure; a resume of the finished run solves nothing more.
    assert ncf.main(["--data", str(data), "--mode", "test", "-k", "3", "--load_checkpoint_path",
                     str(folder / "best.pt"), "--log_path", str(tmp_path / "test.json")]) == 0
    assert records(tmp_path / "test.json")[-1]["hr@3"] == pytest.approx(epochs[0]["hr@3"])
    assert ncf.main(["--data", str(data), "--model", "itemcount", "-k", "3", "--checkpoint_dir", str(folder),
                     "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    # recommend.py: its top-k are the most counted items the user has not seen.
    model = checkpoint.load_model(folder / "best.pt")
    assert recommend.main(["--checkpoint", str(folder / "best.pt"), "--user", "0", "-k", "2"]) == 0
    top = [line.split()[1] for line in capsys.readouterr().out.splitlines()[2:4]]
    user = dataset.original_ids("users")[0].index("0")
    seen = set(dataset.train_items[dataset.train_users == user].tolist()) | set(
        dataset.test.items[dataset.test.users == user].tolist())
    ranked = [item for item in counts.argsort(descending=True, stable=True).tolist() if item not in seen]
    assert set(top) <= {dataset.original_ids("items")[0][item] for item in ranked[:4]}
    # --similar_to, --history and --export as for any model; what it does not offer is refused in one line.
    assert_served_like_any_model(folder / "best.pt", model, dataset, tmp_path, capsys, item_score="counts")
    assert recommend.main(["--checkpoint", str(folder / "best.pt"), "--biases"]) == 1
    assert capsys.readouterr().err.strip() == ("recommend.py: error: --biases: a itemcount model has no item biases; "
                                               "train --model biasmf or dotbias")
    # The gradient flags and sharding are not its: refused at parsing, before any data is read.
    for flags, message in ((["-e", "3"], "--epochs is used by"), (["-l", "0.1"], "--learning_rate is used by"),
                           (["--embedding_sharding", "table_wise"], "--embedding_sharding is used by")):
        with pytest.raises(SystemExit):
            ncf.parse_args(["--model", "itemcount", *flags])
        assert f"error: {message}" in capsys.readouterr().err


def test_flags_belong_to_the_models_that_read_them(registered, capsys):
    cases = [(["--model", "dotbias", "--loss", "softmax"], "--loss is used by neumf, gmf, mlp; --model dotbias does "
                                                           "not read it"),
             (["--model", "dotbias", "--shared_negatives", "1024"], "--shared_negatives is used by gmf; --model "
                                                                     "dotbias does not read it"),
             (["--model", "neumf", "--l2", "0.1"], "--l2 is used by mf, biasmf, dotbias, embnn, dot, textrating, "
                                                   "textprofile, textmf; --model neumf does not read it"),
             (["--model", "ease", "-e", "2"], "--epochs is used by"),
             (["--model", "ease", "--eval_every", "2"], "--eval_every is used by"),
             (["--model", "ease", "--loss", "softmax"], "--loss is used by neumf, gmf, mlp; --model ease does not"),
             (["--model", "gmf", "--loss", "bce", "--logq"], "--logq corrects a sampled softmax over shared "
                                                             "negatives"),
             (["--model", "gmf", "--loss", "bpr", "--temperature", "0.1"], "--temperature is used by --loss softmax; "
                                                                           "--loss bpr does not read it"),
             (["--model", "dotbias", "--recency", "1"], "--recency is used by neumf, gmf, mlp; --model dotbias"),
             (["--model", "gmf", "--text_weight", "1"], "--text_weight is used by textmf; --model gmf does not"),
             (["--model", "neumf", "--y_range", "0", "5"], "--y_range is used by dotbias, embnn; --model neumf"),
             (["--model", "textrating", "--embedding_sharding", "table_wise"], "--embedding_sharding is used by"),
             (["--model", "gmf", "--scale", "2"], "--scale is used by popularity; --model gmf does not read it"),
             (["--model", "popularity", "--loss", "bpr"], "--loss is used by neumf, gmf, mlp; --model popularity"),
             (["--model", "popularity", "--scale", "0"], "--scale must be positive, got 0")]
    for flags, message in cases:
        with pytest.raises(SystemExit) as stopped:
            ncf.parse_args(flags)
        assert stopped.value.code == 2
        assert f"ncf.py: error: {message}" in capsys.readouterr().err.replace("__main__.py", "ncf.py"), flags
    # Given to the models that read them, or at their defaults, the same flags pass; the popularity model (user and
    # item tables of its own) accepts --embedding_sharding.
    for flags in (["--model", "gmf", "--loss", "softmax", "--shared_negatives", "64", "--logq"],
                  ["--model", "dotbias", "--l2", "0.1", "--y_range", "0", "5"],
                  ["--model", "ease", "--early_stop", "2"],
                  ["--model", "popularity", "--embedding_sharding", "table_wise"], ["--model", "gmf", "--l2", "0"]):
        ncf.parse_args(flags)


LAYERS = {  # the tiers, lowest first: a module imports from its own tier and those below it, never above
    "data": ["ncflib.errors", "ncflib.files", "ncflib.flags", "ncflib.textdata", "ncflib.defaults", "ncflib.data"],
    "models and batches": ["ncflib.protocols", "neumf", "dataloading", "ncflib.losses", "ncflib.evaluation",
                           "ncflib.sparse_adam", "ncflib.optimizers"],
    "families": ["ncflib.families", "ncflib.implicit", "ncflib.ratings", "ncflib.reviews", "ncflib.ease",
                 "ncflib.rp3beta", "ncflib.gfcf"],
    "loop, evaluation, checkpoints": ["ncflib.training", "ncflib.checkpoint", "ncflib.placement", "ncflib.sharding",
                                      "ncflib.serving", "ncflib.warm", "logger"],
    "command lines": ["ncf", "convert", "recommend", "ncflib.tune"],
}
ROOT = Path(__file__).resolve().parents[1]


def tier_of(module):
    matches = [(len(prefix), index) for index, prefixes in enumerate(LAYERS.values()) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def product_modules():
    """{module name: its file} of every installed module (pyproject's py-modules and packages)."""
    found = {name: ROOT / f"{name}.py" for name in ("ncf", "convert", "recommend", "neumf", "dataloading")}
    for package in ("logger", "ncflib"):
        for file in (ROOT / package).rglob("*.py"):
            parts = file.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    del found["ncflib"]  # (an empty package file)
    return found


def imports_of(file):
    """(module imported, names imported from it) of every import statement in ``file``, lazy ones included."""
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module, [alias.name for alias in node.names]


def test_every_module_has_a_tier_and_no_import_runs_upward_or_takes_a_private_name():
    modules = product_modules()
    assert [name for name in modules if tier_of(name) is None] == []
    upward, private = [], []
    for name, file in modules.items():
        for imported, names in imports_of(file):
            if imported == "logger.summarize" or name == "logger.summarize":  # (a command line inside logger)
                continue
            targets = [imported] + [f"{imported}.{each}" for each in names if f"{imported}.{each}" in modules]
            for target in targets:
                if target in modules and tier_of(target) > tier_of(name):
                    upward.append(f"{name} -> {target}")
            private += [f"{name}: {imported}.{each}" for each in names if each.startswith("_")]
    assert upward == [] and private == []


def test_the_import_graph_test_fails_on_an_upward_import(tmp_path):
    file = tmp_path / "probe.py"
    file.write_text("import ncf\nfrom ncflib.training import _private\n")
    imported = list(imports_of(file))
    assert tier_of("ncflib.families") < tier_of("ncf") and ("ncflib.training", ["_private"]) in imported


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
