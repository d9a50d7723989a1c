"""Embedding tables larger than one device: TorchRec sharding plans for a model's tables (an optional extra).

TorchRec (``pip install -r requirements-scale.txt``; see docs/scale.md for the versions that pair with each
PyTorch) shards embedding tables across ranks: whole tables to ranks (``table_wise``), column blocks
(``column_wise``) or row blocks (``row_wise``), chosen by a cost model (``auto``) within each rank's memory. This
module plans it for any model of this tool, every ``nn.Embedding`` of the model being one table:

    tables = embedding_tables(NeuMF(100_000_000, 10_000_000, 64, [256, 256, 128, 64]))
    plan = plan_tables(tables, world_size=64, sharding="auto", memory_per_rank=80 * 2**30, device="cuda")
    print("\\n".join(describe_plan(plan, tables, 64)))

Planning needs no devices and no process group: the topology is declared (ranks, memory per rank), so a plan for
64 GPUs is made and checked on a laptop.
"""

import logging
import math
import warnings
from dataclasses import dataclass

from torch import nn

SHARDING_TYPES = ("auto", "table_wise", "column_wise", "row_wise")
BYTES_PER_WEIGHT = 4  # float32 tables


class ShardingError(Exception):
    """A plan that cannot be made (TorchRec missing, a budget too small): one line saying what to do."""


def require_torchrec():
    """Import TorchRec, or a ShardingError saying what to install."""
    try:
        import torchrec  # noqa: F401
        from torchrec.distributed import planner  # noqa: F401
    except ImportError as error:
        raise ShardingError(f"embedding sharding needs TorchRec and FBGEMM ({error.name or error} is missing): pip "
                            "install -r requirements-scale.txt (docs/scale.md lists the versions for each PyTorch "
                            "and for CUDA)") from None
    for name in ("torchrec", "fbgemm_gpu"):  # their planners log warnings about declared topologies at every plan
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass(frozen=True)
class Table:
    """One embedding table of a model: its parameter's name (``gmf.user_embedding``), rows and width."""

    name: str
    rows: int
    width: int

    @property
    def bytes(self):
        return self.rows * self.width * BYTES_PER_WEIGHT


def embedding_tables(model):
    """Every ``nn.Embedding`` of ``model`` as a Table, in module order."""
    tables = [Table(name, module.num_embeddings, module.embedding_dim) for name, module in model.named_modules()
              if isinstance(module, nn.Embedding)]
    if not tables:
        raise ShardingError(f"a {type(model).__name__} model has no embedding tables to shard")
    return tables


def _collection(tables, optimizer):
    """A TorchRec EmbeddingBagCollection of the tables on the meta device (shapes only, no memory), its tables
    marked as trained by ``optimizer`` (which the planner reads to budget the optimizer state)."""
    import torch
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec import optim as torchrec_optim

    configs = [EmbeddingBagConfig(name=_key(table), embedding_dim=table.width, num_embeddings=table.rows,
                                  feature_names=[_key(table)]) for table in tables]
    collection = EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
    state = {"adam": torch.optim.Adam, "rowwise_adagrad": torchrec_optim.RowWiseAdagrad, "sgd": torch.optim.SGD}
    for parameter in collection.parameters():
        parameter._optimizer_classes = [state[optimizer]]
    return collection


def _key(table):
    return table.name.replace(".", "__")


OPTIMIZERS = ("adam", "rowwise_adagrad", "sgd")  # optimizer state per weight: 2, 1 per row, 0


def plan_tables(tables, world_size, sharding="auto", memory_per_rank=None, device="cpu", ranks_per_host=None,
                batch_size=None, optimizer="adam"):
    """TorchRec's ShardingPlan for ``tables`` over ``world_size`` ranks of ``memory_per_rank`` bytes each
    (default: TorchRec's for the device), ``batch_size`` samples per rank and step, by ``sharding`` (one of
    SHARDING_TYPES; 'auto' lets the planner's cost model choose per table), the tables' ``optimizer`` state
    (OPTIMIZERS) budgeted beside them. Tables live in device memory only (no host-memory caching), so a plan that
    comes back fits the budget; a ShardingError (one line) when none does."""
    require_torchrec()
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints, PlannerError

    if sharding not in SHARDING_TYPES:
        raise ShardingError(f"sharding must be one of {', '.join(SHARDING_TYPES)}, got {sharding!r}")
    if optimizer not in OPTIMIZERS:
        raise ShardingError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if world_size < 1:
        raise ShardingError(f"world_size must be at least 1, got {world_size}")
    if sharding == "row_wise" and device != "cuda":
        raise ShardingError("row_wise sharding needs CUDA devices in TorchRec; use table_wise or column_wise on CPU")
    kernel = "fused"  # in device memory: the budget is the budget (no caching in host memory)
    constraints = {_key(table): ParameterConstraints(
        sharding_types=None if sharding == "auto" else [sharding], compute_kernels=[kernel]) for table in tables}
    topology = Topology(world_size=world_size, compute_device=device, local_world_size=ranks_per_host,
                        **({} if memory_per_rank is None else {"hbm_cap": int(memory_per_rank),
                                                                "ddr_cap": int(memory_per_rank)}))
    try:
        with warnings.catch_warnings():  # TorchRec's own advice on its storage reservation, at every plan
            warnings.simplefilter("ignore", FutureWarning)
            planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints,
                                               **({} if batch_size is None else {"batch_size": batch_size}))
            return planner.plan(_collection(tables, optimizer), [EmbeddingBagCollectionSharder()])
    except PlannerError:
        total = sum(table.bytes for table in tables)
        budget = "" if memory_per_rank is None else f" of {_size(memory_per_rank)} each"
        other = "" if sharding == "auto" else ", or let the planner choose the sharding (auto)"
        raise ShardingError(f"no {sharding} plan fits the embedding tables ({_size(total)} of float32 weights, "
                            f"plus optimizer state) on {world_size} rank{'s' if world_size > 1 else ''}{budget}; "
                            f"add ranks or memory per rank{other}") from None


def shards(plan, tables):
    """[(table name, sharding type, rank, rows, columns)] of every shard in ``plan``."""
    by_key = {_key(table): table for table in tables}
    found = []
    for key, parameter in plan.plan[""].items():
        table = by_key[key]
        if parameter.sharding_spec is None:  # data_parallel: a whole copy on every rank
            found += [(table.name, parameter.sharding_type, rank, table.rows, table.width)
                      for rank in parameter.ranks]
            continue
        for shard in parameter.sharding_spec.shards:
            rows, columns = shard.shard_sizes
            found.append((table.name, parameter.sharding_type, shard.placement.rank(), rows, columns))
    return found


def bytes_per_rank(plan, tables, world_size):
    """[world_size] bytes of float32 table weights each rank holds under ``plan``."""
    totals = [0] * world_size
    for _, _, rank, rows, columns in shards(plan, tables):
        totals[rank] += rows * columns * BYTES_PER_WEIGHT
    return totals


def describe_plan(plan, tables, world_size):
    """Lines: each table's sharding type and ranks, then the weight bytes per rank."""
    lines = []
    for table in tables:
        placed = [shard for shard in shards(plan, tables) if shard[0] == table.name]
        ranks = sorted({shard[2] for shard in placed})
        lines.append(f"{table.name} ({table.rows:,} x {table.width}, {_size(table.bytes)}): {placed[0][1]} on "
                     f"rank{'s' if len(ranks) > 1 else ''} {_ranges(ranks)}")
    per_rank = bytes_per_rank(plan, tables, world_size)
    lines.append(f"weights per rank: {_size(max(per_rank))} at most, {_size(min(per_rank))} at least, "
                 f"{_size(sum(per_rank))} in all")
    return lines


def _ranges(ranks):
    """'0-7, 9' for [0, ..., 7, 9]."""
    parts, start = [], None
    for index, rank in enumerate(ranks):
        if start is None:
            start = rank
        if index + 1 == len(ranks) or ranks[index + 1] != rank + 1:
            parts.append(str(start) if start == rank else f"{start}-{rank}")
            start = None
    return ", ".join(parts)


def _size(count):
    """Bytes in the unit that suits them (binary: GiB, MiB, KiB)."""
    if count < 1024:
        return f"{count} B"
    exponent = min(int(math.log(count, 1024)), 4)
    return f"{count / 1024 ** exponent:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[exponent - 1]}"
