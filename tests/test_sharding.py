"""Embedding sharding plans (TorchRec, an optional extra): skipped cleanly without it."""

import builtins
import importlib.util

import pytest
import torch

from ncflib import sharding
from neumf import NeuMF

MIB = 2**20


def test_without_torchrec_the_error_is_one_line_saying_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_torchrec(name, *args, **kwargs):
        if name.startswith("torchrec"):
            raise ImportError("No module named 'torchrec'", name="torchrec")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchrec)
    with pytest.raises(sharding.ShardingError) as error:
        sharding.require_torchrec()
    assert "requirements-scale.txt" in str(error.value) and "\n" not in str(error.value)


def test_every_embedding_of_a_model_is_a_table():
    tables = sharding.embedding_tables(NeuMF(10, 20, 8, [16, 8]))
    assert [(table.name, table.rows, table.width) for table in tables] == [
        ("gmf.user_embedding", 10, 8), ("gmf.item_embedding", 20, 8), ("mlp.user_embedding", 10, 8),
        ("mlp.item_embedding", 20, 8)]
    with pytest.raises(sharding.ShardingError, match="no embedding tables"):
        sharding.embedding_tables(torch.nn.Linear(2, 2))


needs_torchrec = pytest.mark.skipif(importlib.util.find_spec("torchrec") is None,
                                    reason="TorchRec is an optional extra (requirements-scale.txt)")


@needs_torchrec
def test_a_budget_smaller_than_a_table_forces_a_sharded_plan_that_fits():
    tables = [sharding.Table("big", 2**20, 128), sharding.Table("small", 2**20, 32)]  # 512 MiB and 128 MiB
    budget = 400 * MIB
    plan = sharding.plan_tables(tables, 2, "auto", budget, "cuda", optimizer="sgd")
    per_rank = sharding.bytes_per_rank(plan, tables, 2)
    assert max(per_rank) <= budget and sum(per_rank) == 640 * MIB
    assert len({rank for name, _, rank, _, _ in sharding.shards(plan, tables) if name == "big"}) == 2
    lines = sharding.describe_plan(plan, tables, 2)
    assert lines[0].startswith("big (1,048,576 x 128, 512.0 MiB)") and "weights per rank" in lines[-1]
    # The same budget cannot hold the big table on one rank: table_wise is refused, in one line.
    with pytest.raises(sharding.ShardingError) as error:
        sharding.plan_tables(tables, 2, "table_wise", budget, "cuda", optimizer="sgd")
    assert "no table_wise plan fits" in str(error.value) and "\n" not in str(error.value)


@needs_torchrec
def test_a_budget_smaller_than_the_model_over_all_ranks_is_a_one_line_error():
    tables = [sharding.Table("big", 2**20, 128), sharding.Table("small", 2**20, 32)]
    with pytest.raises(sharding.ShardingError) as error:
        sharding.plan_tables(tables, 2, "auto", 200 * MIB, "cuda", optimizer="sgd")
    message = str(error.value)
    assert "640.0 MiB" in message and "2 ranks of 200.0 MiB" in message and "\n" not in message
    # Adam's state (two floats per weight) is budgeted too: what fits with SGD does not with Adam.
    assert sharding.plan_tables(tables, 2, "auto", 400 * MIB, "cuda", optimizer="sgd")
    with pytest.raises(sharding.ShardingError):
        sharding.plan_tables(tables, 2, "auto", 400 * MIB, "cuda", optimizer="adam")


@needs_torchrec
def test_table_wise_puts_about_half_of_neumfs_embedding_bytes_on_each_of_two_ranks():
    tables = sharding.embedding_tables(NeuMF(1000, 1000, 64, [128, 64]))  # four tables of 1000 x 64
    plan = sharding.plan_tables(tables, 2, "table_wise", device="cpu")
    per_rank = sharding.bytes_per_rank(plan, tables, 2)
    assert per_rank == [2 * 1000 * 64 * 4] * 2
    with pytest.raises(sharding.ShardingError, match="row_wise sharding needs CUDA"):
        sharding.plan_tables(tables, 2, "row_wise", device="cpu")


@needs_torchrec
@pytest.mark.slow
@pytest.mark.parametrize("kind, model, halves", [("table_wise", "neumf", True), ("column_wise", "neumf", True),
                                                 ("table_wise", "gmf", False)])
def test_sharded_tables_on_two_gloo_ranks_equal_the_unsharded_model(tmp_path, kind, model, halves):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(root / "tests" / "shard_worker.py"), str(out), kind, model]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for _ in range(3):  # Gloo sometimes fails to connect two fresh ranks on a loaded machine: then try again
        job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=root)
        if "connectFullMesh failed" not in job.stderr + job.stdout:
            break
    assert job.returncode == 0, job.stderr[-2000:]
    result = json.loads(out.read_text())
    # Given the same weights, the sharded forward is the unsharded one; one SGD step later (tables by TorchRec's
    # fused SGD, the rest by DDP) it still is, to float32 rounding.
    assert result["difference"]["before"] <= 1e-6 and result["difference"]["after"] <= 1e-6
    # The tables gathered into today's state dict reproduce the sharded model.
    assert result["gathered_difference"] <= 1e-6
    # Each rank holds its share of the table bytes, measured from its shards: NeuMF's four tables two and two.
    assert sum(result["bytes_per_rank"]) == result["total"]
    if halves:  # NeuMF's four equal tables, two and two
        assert result["bytes_per_rank"] == [result["total"] // 2] * 2
    # The teardown freed the group and joined Gloo's threads; one left running into interpreter shutdown could abort
    # the process while releasing a finished collective's tensors.
    if result["threads"]["before"] is not None:
        assert result["threads"]["after"] == result["threads"]["before"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Users interact with every item of their own taste group (the latest held out), ranked among the items of
    the other groups: a model that learned the groups ranks the held-out item first."""
    from conftest import run_convert

    folder = tmp_path_factory.mktemp("planted")
    lines = ["user,item,timestamp"]
    for user in range(48):
        group = user % 4
        lines += [f"{user},{group * 8 + item},{time}" for time, item in enumerate((user * 3 + k) % 8 for k in range(8))]
    (folder / "log.csv").write_text("\n".join(lines) + "\n")
    assert run_convert(["--path", folder / "log.csv", "--output", folder / "data", "--valid_negative", "24"])[0] == 0
    return folder / "data"


def _epochs(folder):
    import json

    return {record["epoch"]: record for record in map(json.loads, (folder / "log.json").read_text().splitlines())
            if record["type"] == "epoch"}


def _summary(log):
    import json

    return [json.loads(line) for line in log.read_text().splitlines()][-1]


@needs_torchrec
@pytest.mark.slow
def test_ncf_trains_with_sharded_tables_as_well_as_with_ddp_and_its_best_checkpoint_is_todays(planted, tmp_path):
    from test_distributed import launch

    runs, results = {}, {}
    # (--valid_batch_size 250: 10 users a batch, so that the ranks' 24 users each make batches of 10, 10 and 4)
    for name, flags in (("ddp", []), ("sharded", ["--embedding_sharding", "table_wise"]),
                        ("streamed", ["--embedding_sharding", "table_wise", "--export_full"])):
        result = launch("--data", planted, "-e", "12", "-b", "256", "-l", "0.01", "--checkpoint_dir", tmp_path / name,
                        "--valid_batch_size", "250", *flags)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name], results[name] = _summary(tmp_path / name / "log.json"), result
    assert "table_wise on rank 0" in results["sharded"].stdout  # the plan is printed
    assert runs["ddp"]["best_accuracy"] >= 0.9
    assert abs(runs["sharded"]["best_accuracy"] - runs["ddp"]["best_accuracy"]) <= 0.02
    # --export_full evaluates through the sharded tables, not a gathered copy: the same numbers, epoch by epoch.
    for epoch, record in _epochs(tmp_path / "streamed").items():
        for key in ("train_loss", "hr@10", "ndcg@10", "test_loss"):
            assert record[key] == pytest.approx(_epochs(tmp_path / "sharded")[epoch][key], rel=1e-5), (epoch, key)
    # best.pt of a sharded run is today's single-file checkpoint, written whole or table by table (nothing left
    # staged beside it): --mode test in one process reproduces the run.
    import ncf

    assert not list((tmp_path / "streamed").glob(".*"))
    for name in ("sharded", "streamed"):
        assert ncf.main(["--data", str(planted), "--mode", "test", "--load_checkpoint_path",
                         str(tmp_path / name / "best.pt"), "--log_path", str(tmp_path / f"{name}.json")]) == 0
        assert _summary(tmp_path / f"{name}.json")["hr@10"] == pytest.approx(runs[name]["best_accuracy"], abs=1e-9)
    assert (torch.load(tmp_path / "streamed" / "best.pt", weights_only=True)["state_dict"].keys()
            == torch.load(tmp_path / "sharded" / "best.pt", weights_only=True)["state_dict"].keys())


def test_export_full_without_sharded_tables_is_a_one_line_error(planted, capsys):
    import ncf

    assert ncf.main(["--data", str(planted), "--export_full", "--checkpoint_dir", ""]) == 1
    error = capsys.readouterr().err.strip()
    assert "--embedding_sharding" in error and len(error.splitlines()) == 1


@needs_torchrec
@pytest.mark.slow
def test_sharding_refuses_what_it_cannot_do_in_one_line(planted, tmp_path, capsys):
    from test_distributed import launch

    import ncf

    assert ncf.main(["--data", str(planted), "--embedding_sharding", "table_wise", "--checkpoint_dir", ""]) == 1
    error = capsys.readouterr().err.strip()
    assert "torchrun" in error and len(error.splitlines()) == 1
    # A sharded run's checkpoint folder needs the shards to resume from: a last.pt of an unsharded run does not do.
    assert launch("--data", planted, "-e", "1", "--checkpoint_dir", tmp_path).returncode == 0
    result = launch("--data", planted, "-e", "2", "--checkpoint_dir", tmp_path, "--embedding_sharding", "table_wise",
                    "--resume")
    assert result.returncode != 0 and "--embedding_sharding" in result.stderr


@needs_torchrec
@pytest.mark.slow
def test_a_rating_model_trains_with_sharded_tables(tmp_path):
    from test_distributed import launch

    from conftest import run_convert

    lines = ["user,item,rating"] + [f"{user},{item},{1 + (user + item) % 5}" for user in range(30)
                                    for item in range(0, 40, 3)]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    assert run_convert(["--path", tmp_path / "r.csv", "--split", "random", "--output", tmp_path / "data"])[0] == 0
    # (--export_full: evaluated through the sharded lookup, every rank predicting every held-out pair in step)
    result = launch("--data", tmp_path / "data", "--model", "biasmf", "-e", "2", "--checkpoint_dir", tmp_path / "run",
                    "--embedding_sharding", "table_wise", "--export_full")
    assert result.returncode == 0, result.stderr[-2000:]
    # The factor tables are sharded; the one-column bias tables (FBGEMM needs widths divisible by 4) stay replicated.
    assert "user_embedding" in result.stdout and "user_bias" not in result.stdout
    assert _summary(tmp_path / "run" / "log.json")["best_metrics"]["rmse"] < 2
    import ncf

    assert ncf.main(["--data", str(tmp_path / "data"), "--mode", "test", "--load_checkpoint_path",
                     str(tmp_path / "run" / "best.pt"), "--log_path", str(tmp_path / "test.json")]) == 0
    assert _summary(tmp_path / "test.json")["rmse"] == pytest.approx(
        _summary(tmp_path / "run" / "log.json")["best_metrics"]["rmse"], rel=1e-5)


@needs_torchrec
@pytest.mark.slow
def test_a_sharded_run_stopped_and_resumed_equals_an_uninterrupted_one(planted, tmp_path):
    from test_distributed import launch

    flags = ["--data", planted, "-b", "128", "-l", "0.01", "--lr_schedule", "constant",  # (-e 2 stands for a stop)
             "--embedding_sharding", "table_wise"]
    assert launch(*flags, "-e", "4", "--checkpoint_dir", tmp_path / "whole").returncode == 0
    assert launch(*flags, "-e", "2", "--checkpoint_dir", tmp_path / "parts").returncode == 0
    assert (tmp_path / "parts" / "last.dcp").is_dir()  # every rank's shards of the tables and their optimizer
    resumed = launch(*flags, "-e", "4", "--checkpoint_dir", tmp_path / "parts", "--resume")
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-2000:]

    whole, parts = _epochs(tmp_path / "whole"), _epochs(tmp_path / "parts")
    assert sorted(parts) == [0, 1, 2, 3]
    for epoch in (2, 3):
        for key in ("train_loss", "hr@10", "ndcg@10"):
            assert parts[epoch][key] == pytest.approx(whole[epoch][key], rel=1e-6, abs=1e-9), (epoch, key)
