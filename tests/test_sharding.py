"""Embedding sharding plans (TorchRec, an optional extra): skipped cleanly without it."""

import builtins
import importlib.util

import pytest
import torch

import sharding
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
