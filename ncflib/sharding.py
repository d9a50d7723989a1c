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

Under torchrun, ``shard`` moves a model's tables into a sharded TorchRec collection (``ShardedTables``: the model's
own forward unchanged, the rest of it data-parallel), and ``ShardedPlacement`` is what ncf.py's
``--embedding_sharding`` trains with (``ncflib.placement`` is the seam: the run asks it once).
"""

import contextlib
import dataclasses
import logging
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ncflib.errors import ShardingError
from ncflib.placement import SHARDING_TYPES, Placement
from ncflib.protocols import traits
from ncflib.sparse_adam import CombinedOptimizer

BYTES_PER_WEIGHT = 4  # float32 tables


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


def _constraints(tables, sharding, device):
    """The planner's constraints for ``tables``: ``sharding`` (any type for 'auto'), each table in device memory
    (the fused kernel: the budget is the budget, no caching in host memory); a ShardingError for a sharding that
    is not one, or row_wise off CUDA."""
    from torchrec.distributed.planner.types import ParameterConstraints

    if sharding not in SHARDING_TYPES:
        raise ShardingError(f"sharding must be one of {', '.join(SHARDING_TYPES)}, got {sharding!r}")
    if sharding == "row_wise" and device != "cuda":
        raise ShardingError("row_wise sharding needs CUDA devices in TorchRec; use table_wise or column_wise on CPU")
    return {_key(table): ParameterConstraints(sharding_types=None if sharding == "auto" else [sharding],
                                              compute_kernels=["fused"]) for table in tables}


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
    from torchrec.distributed.planner.types import PlannerError

    if optimizer not in OPTIMIZERS:
        raise ShardingError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if world_size < 1:
        raise ShardingError(f"world_size must be at least 1, got {world_size}")
    constraints = _constraints(tables, sharding, device)
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
    tables_plan = plan.plan.get("tables") or plan.plan[""]  # a ShardedTables' collection, or a bare one
    for key, parameter in tables_plan.items():
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


# ------------------------------------------------------------------------------------------------ sharded tables


class LookedUp(nn.Module):
    """Stands in for one ``nn.Embedding`` of a model whose tables are sharded: returns the rows that the sharded
    collection looked up for the batch (``ShardedTables.forward`` sets them before calling the model)."""

    def __init__(self, rows, width):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rows = rows, width, None

    def forward(self, indices):
        if self.rows is None or self.rows.shape[0] != indices.numel():
            raise RuntimeError("a sharded table was read outside ShardedTables.forward, or with other indices")
        return self.rows.view(*indices.shape, self.embedding_dim)


class ShardedTables(nn.Module):
    """``model`` with its embedding tables moved into one TorchRec EmbeddingBagCollection (a table per
    ``nn.Embedding`` whose width is a multiple of 4, one id per sample: a lookup), ready for
    ``DistributedModelParallel`` to shard them; the rest of the model (``self.model``) stays as it is and is
    replicated. ``forward(users, items, ...)`` looks every table up in one collective call, then runs the model's
    own forward, so it equals the unsharded model's."""

    def __init__(self, model, device):
        super().__init__()
        require_torchrec()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

        # FBGEMM's kernels take tables of a width divisible by 4: the others (biases, one column) stay in the model,
        # replicated and trained as the rest of it.
        self.layout = [table for table in embedding_tables(model) if table.width % 4 == 0]
        if not self.layout:
            raise ShardingError(f"a {type(model).__name__} model has no table of a width divisible by 4 to shard")
        configs = [EmbeddingBagConfig(name=_key(table), embedding_dim=table.width, num_embeddings=table.rows,
                                      feature_names=[_key(table)]) for table in self.layout]
        self.tables = EmbeddingBagCollection(tables=configs, device=device)
        self.initial = {}  # the model's starting tables, which ``shard`` copies into the shards
        for table in self.layout:
            parent, _, attribute = table.name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            self.initial[table.name] = getattr(owner, attribute).weight.detach().to(device)
            setattr(owner, attribute, LookedUp(table.rows, table.width))
        self.model = model

    def forward(self, users, items, *args, **kwargs):
        from torchrec import KeyedJaggedTensor

        ids = [users.reshape(-1) if "user" in table.name.rsplit(".", 1)[-1] else items.reshape(-1)
               for table in self.layout]
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=[_key(table) for table in self.layout], values=torch.cat(ids),
            lengths=torch.ones(len(ids) * users.numel(), dtype=torch.int64, device=users.device))
        pooled = self.tables(features)
        pooled = (pooled.wait() if hasattr(pooled, "wait") else pooled).to_dict()
        for table in self.layout:
            self.model.get_submodule(table.name).rows = pooled[_key(table)]
        return self.model(users, items, *args, **kwargs)


def shard(model, sharding, device, optimizer="sgd", learning_rate=0.01, process_group=None):
    """``model`` with its tables sharded over the process group's ranks (``sharding``: SHARDING_TYPES), the rest
    replicated (DDP), as ``torchrec.distributed.DistributedModelParallel``; the tables start from the model's own
    weights (the same on every rank when built from the same seed) and train with TorchRec's fused ``optimizer``
    ('sgd', 'adagrad' or 'rowwise_adagrad' on CPU; 'adam' needs CUDA) inside the backward pass. Returns (the
    distributed model, its plan); ``dense_parameters`` gives what a dense optimizer should train."""
    require_torchrec()
    import torch.distributed as dist
    from torchrec import optim as torchrec_optim
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    constraints = _constraints(embedding_tables(model), sharding, device.type)
    if optimizer == "adam" and device.type != "cuda":
        raise ShardingError("TorchRec's fused Adam for the tables needs CUDA; on CPU use sgd or adagrad")
    classes = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam,
               "rowwise_adagrad": torchrec_optim.RowWiseAdagrad}
    wrapped = ShardedTables(model, device)
    apply_optimizer_in_backward(classes[optimizer], wrapped.tables.parameters(), {"lr": learning_rate})
    sharded = {_key(table) for table in wrapped.layout}  # (the tables of a width FBGEMM takes)
    constraints = {key: value for key, value in constraints.items() if key in sharded}
    group = process_group or dist.GroupMember.WORLD
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchRec's advice on declared topologies and storage reservations
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=dist.get_world_size(group),
                                                             compute_device=device.type), constraints=constraints)
        plan = planner.collective_plan(wrapped, [EmbeddingBagCollectionSharder()], group)
        distributed = DistributedModelParallel(wrapped, device=device, plan=plan)
    load_tables(distributed, {table.name: wrapped.initial.pop(table.name) for table in wrapped.layout})
    return distributed, plan


def _table_key(name):
    return f"tables.embedding_bags.{name.replace('.', '__')}.weight"


def load_tables(distributed, weights):
    """Copy full tables ({table name: [rows, width]}) into this rank's shards of them."""
    state = distributed.module.state_dict() if hasattr(distributed, "module") else distributed.state_dict()
    with torch.no_grad():
        for name, full in weights.items():
            for piece in state[_table_key(name)].local_shards():
                (row, column), (rows, columns) = piece.metadata.shard_offsets, piece.metadata.shard_sizes
                piece.tensor.copy_(full[row:row + rows, column:column + columns])


def local_table_bytes(distributed):
    """Bytes of table weights this rank holds (its local shards), measured from the sharded modules."""
    state = distributed.module.state_dict() if hasattr(distributed, "module") else distributed.state_dict()
    return sum(piece.tensor.numel() * piece.tensor.element_size() for key, value in state.items()
               if key.startswith("tables.") and hasattr(value, "local_shards") for piece in value.local_shards())


def dense_parameters(distributed):
    """The parameters outside the sharded tables: what the dense optimizer trains."""
    return [parameter for name, parameter in distributed.named_parameters()
            if ".tables." not in f".{name}" and parameter.requires_grad]


def full_state_dict(distributed):
    """The unsharded model's state dict (its own keys) with every table gathered whole, on every rank (all must
    call it): what today's single-file checkpoints, recommend.py and --mode test read. For tables that fit in one
    process's memory."""
    import torch.distributed as dist

    wrapped = distributed.module if hasattr(distributed, "module") else distributed
    state = wrapped.state_dict()
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {table.name: _local_pieces(state, table) for table in wrapped.layout})
    return _dense_state(state) | {
        f"{table.name}.weight": _assemble(torch.empty(table.rows, table.width), [mine[table.name] for mine in everyone])
        for table in wrapped.layout}


def _local_pieces(state, table):
    """This rank's pieces of ``table`` in a sharded state dict: [((first row, first column), tensor)]."""
    return [(tuple(piece.metadata.shard_offsets), piece.tensor.detach().cpu().clone())
            for piece in state[_table_key(table.name)].local_shards()]


def _assemble(weight, pieces_by_rank):
    """Write every rank's pieces (``_local_pieces``) of a table into ``weight`` [rows, width]; returns it."""
    for pieces in pieces_by_rank:
        for (row, column), piece in pieces:
            weight[row:row + piece.shape[0], column:column + piece.shape[1]] = piece
    return weight


def _dense_state(state):
    """The entries of a sharded state dict outside the tables, under the unsharded model's own keys."""
    return {key.removeprefix("model."): value.detach().cpu().clone() for key, value in state.items()
            if key.startswith("model.")}


# ------------------------------------------------------------------------------------------------ ncf.py's runs


class TablesAndDense(CombinedOptimizer):
    """The dense optimizer and the tables' fused one, stepped as one. The fused optimizer updates the tables in the
    backward pass; ``step`` hands it its rate scaled as the schedule scales the dense rate (used from the next
    step). The training loop sees the dense optimizer's parameter groups; the tables' state is held in the shards
    and is not part of ``state_dict`` (single-file checkpoints hold the dense state only)."""

    def __init__(self, dense, tables, table_rate):
        super().__init__(dense=dense, tables=tables)
        self.table_rate, self.dense_rate = table_rate, dense.param_groups[0]["lr"]

    @property
    def param_groups(self):
        return self.optimizers["dense"].param_groups

    def step(self, closure=None):
        scale = self.optimizers["dense"].param_groups[0]["lr"] / self.dense_rate
        for group in self.optimizers["tables"].param_groups:
            group["lr"] = self.table_rate * scale
        super().step()

    def state_dict(self):
        return {"dense": self.optimizers["dense"].state_dict()}

    def load_state_dict(self, state):
        self.optimizers["dense"].load_state_dict(state["dense"])


class ShardedView:
    """A sharded model as evaluation sees an unsharded one: ``view(users, items)`` predicts pairs and
    ``score(users [B], items [B, C])`` gives each user's candidates' logits, both through the sharded lookup (a
    collective: every rank calls it as often as the others, hence its traits' ``lockstep``, which the sampled
    evaluation honours; its output is the sharded model's). ``score_all`` would need the whole item table on one
    rank, and is refused."""

    def __init__(self, distributed):
        self.distributed = distributed
        self.traits = dataclasses.replace(traits(distributed.module.model), lockstep=True)

    @torch.no_grad()
    def __call__(self, users, items, *args):
        return self.distributed(users, items, *args)

    @torch.no_grad()
    def score(self, users, items):
        return self.distributed(users[:, None].expand_as(items).reshape(-1), items.reshape(-1)).view(items.shape)

    def score_all(self, users):
        raise ShardingError("ranking every item needs the whole item table on one rank: use --eval_protocol sampled "
                            "with --export_full")

    def eval(self):
        self.distributed.eval()
        return self


class ShardedPlacement(Placement):
    """--embedding_sharding: the model's tables sharded across torchrun's ranks by TorchRec (``shard``; the plan
    printed), the rest data-parallel; the tables' fused optimizer stepped beside the dense one (``TablesAndDense``);
    evaluation on an unsharded copy refreshed with the gathered tables (``shadow``, which checkpoints save), or under
    --export_full, for tables no process can hold whole, on the sharded model itself (``ShardedView``), checkpoints
    gathered one table at a time; every rank's shards in ``last.dcp`` for --resume."""

    sharded = True

    def __init__(self, sharding, export_full=False, table_optimizer=None, table_lr=None, learning_rate=None,
                 device=None, say=print):
        require_torchrec()
        import torch.distributed as dist

        if not dist.is_initialized():
            raise ShardingError("--embedding_sharding shards tables across the ranks of a torchrun job; launch with "
                                "torchrun --nproc_per_node=N ncf.py ...")
        self.sharding, self.export_full, self.device, self.say = sharding, export_full, device, say
        self.table_optimizer = table_optimizer or ("adam" if device.type == "cuda" else "adagrad")
        self.table_rate = table_lr or (learning_rate if self.table_optimizer == "adam" else 0.05)
        self.shadow = None

    def place(self, model):
        import torch.distributed as dist

        distributed, plan = shard(model, self.sharding, self.device, self.table_optimizer, self.table_rate)
        if dist.get_rank() == 0:
            self.say(f"embedding tables ({self.table_optimizer}, rate {self.table_rate:g}): " + "; ".join(
                describe_plan(plan, distributed.module.layout, dist.get_world_size())))
        return distributed

    def dense_module(self, model):
        return model.module.model

    def optimizer(self, model, optimizer):
        return TablesAndDense(optimizer, model.fused_optimizer, self.table_rate)

    def distributed(self, model, runtime):
        return model  # DistributedModelParallel holds DDP for the dense part already

    def evaluator(self, model, make, rebuild):
        if self.export_full:
            return make(ShardedView(model))
        self.shadow = rebuild()
        evaluate = make(self.shadow)

        def refreshed():
            self.shadow.load_state_dict(full_state_dict(model))
            return evaluate()

        return refreshed

    @contextlib.contextmanager
    def state_to_save(self, model, path, write=True):
        """The state dict a single-file checkpoint at ``path`` holds (None where ``write`` is false): the unsharded
        copy that evaluation refreshes, or under --export_full its tables gathered onto the writing rank (rank 0) one
        table at a time, each staged in a file beside ``path`` (memory-mapped, removed on leaving the block), so that no
        process holds more than one table's pieces at once. Every rank of a sharded run enters it together."""
        if not self.export_full:
            yield self.shadow.state_dict() if write else None
            return
        import torch.distributed as dist

        wrapped = model.module
        state = wrapped.state_dict()
        staged, full = [], {}
        try:
            for number, table in enumerate(wrapped.layout):
                everyone = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
                dist.gather_object(_local_pieces(state, table), everyone, dst=0)
                if not write:
                    continue
                staged.append(path.with_name(f".{path.name}.table{number}.tmp-{os.getpid()}"))
                weight = np.memmap(staged[-1], dtype=np.float32, mode="w+", shape=(table.rows, table.width))
                full[f"{table.name}.weight"] = _assemble(torch.from_numpy(weight), everyone)
                del everyone  # (this table's pieces, before the next one's arrive)
            yield (_dense_state(state) | full) if write else None
        finally:
            full.clear()
            for file in staged:
                file.unlink(missing_ok=True)

    def save_shards(self, model, path, epoch):
        """For a sharded model's ``last.pt``: every rank writes its shards of the model and of the tables' optimizer
        state with torch.distributed.checkpoint to ``last.dcp`` beside it (all ranks must call it; a new folder renamed
        into place, so a crash leaves the previous one). Nothing for other files."""
        import shutil

        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        if path.name != "last.pt":
            return
        final, fresh = path.with_suffix(".dcp"), path.with_suffix(".dcp.new")
        if dist.get_rank() == 0:
            shutil.rmtree(fresh, ignore_errors=True)
        dist.barrier()
        dcp.save({"model": model.state_dict(), "tables_optimizer": model.fused_optimizer.state_dict(),
                  "epoch": torch.tensor(epoch)}, checkpoint_id=str(fresh))
        if dist.get_rank() == 0:
            old = path.with_suffix(".dcp.old")
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            fresh.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def load(self, model, path, state):
        """Load ``last.dcp`` beside ``path`` (``save_shards``) into a sharded model and its tables' optimizer, checking
        it was written for the same epoch as ``path``'s ``state``."""
        import torch.distributed.checkpoint as dcp

        epoch = state["epoch"]
        folder = path.with_suffix(".dcp")
        if not folder.is_dir():
            raise ShardingError(f"{path}: was written without the per-rank shards of a sharded run ({folder.name}); "
                                "start the run afresh, or resume it without --embedding_sharding")
        state = {"model": model.state_dict(), "tables_optimizer": model.fused_optimizer.state_dict(),
                 "epoch": torch.tensor(-1)}
        dcp.load(state, checkpoint_id=str(folder))
        if int(state["epoch"]) != epoch:
            raise ShardingError(f"{folder}: holds epoch {int(state['epoch'])}, but {path.name} epoch {epoch} (a run "
                                "stopped while saving); start the run afresh")
        model.load_state_dict(state["model"])
        model.fused_optimizer.load_state_dict(state["tables_optimizer"])
