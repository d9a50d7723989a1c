"""Where a model's tables live during training: the one seam between the run and TorchRec.

ncf.py asks ``placement_for`` once. The default ``Placement`` keeps the whole model on every rank (data-parallel
under torchrun) and does nothing at each hook; ``--embedding_sharding`` returns ``sharding.ShardedPlacement``,
which shards the tables across the ranks. The training loop and the checkpoint code only call the hooks, so
importing them never imports TorchRec.

    placement = placement_for("none", export_full=False, family=family, kind="neumf", ...)
    model = placement.place(model)             # sharded, or as it is
    with placement.state_to_save(model, path, write=True) as state: ...
"""

import contextlib

import torch

from ncflib.errors import ShardingError
from ncflib.families import trained_by_gradient
from ncflib.protocols import traits

SHARDING_TYPES = ("auto", "table_wise", "column_wise", "row_wise")


class Placement:
    """Every rank holds the whole model: nothing to shard, gather or save apart."""

    sharded = False  # a sharded placement has every rank take part in each checkpoint write

    def place(self, model):
        """The model as training runs it."""
        return model

    def dense_module(self, model):
        """What the dense optimizer trains."""
        return model

    def optimizer(self, model, optimizer):
        """The optimizer the loop steps: ``optimizer``, joined with the tables' own where they have one."""
        return optimizer

    def distributed(self, model, runtime):
        """``model`` wrapped for data-parallel training when there are several ranks, else itself."""
        if runtime.world_size == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device] if runtime.device.type == "cuda" else None)

    def evaluator(self, model, make, rebuild):
        """``make(module)`` (an evaluation function) for the module evaluation reads; ``rebuild()`` makes a fresh
        unsharded model of the same shape."""
        return make(model)

    @contextlib.contextmanager
    def state_to_save(self, model, path, write=True):
        """The state dict a single-file checkpoint at ``path`` holds (None where ``write`` is false)."""
        yield getattr(model, "module", model).state_dict() if write else None

    def save_shards(self, model, path, epoch):
        """Write what the single file does not hold (every rank's shards); nothing here."""

    def load(self, model, path, state):
        """Load a resumed checkpoint's ``state`` (read from ``path``) into ``model``."""
        model.load_state_dict(state["state_dict"])


LOCAL = Placement()


TABLE_OPTIMIZERS = ("adam", "adagrad", "rowwise_adagrad", "sgd")


def add_arguments(parser, flags):
    """ncf.py's flags for sharded tables (defined here, so that the command line never imports the sharding
    code), read by the models whose tables can be sharded (``families.Flags``)."""
    group = parser.add_argument_group("embedding tables sharded across ranks (TorchRec under torchrun; docs/scale.md)")
    flags.add(group, "--embedding_sharding", choices=("none",) + SHARDING_TYPES, default="none", readers=shardable,
              help="'none': every rank holds every table (DDP); else the tables are sharded across the "
                            "ranks by TorchRec, whole tables (table_wise), column blocks (column_wise), row blocks "
                            "(row_wise, CUDA only) or as its planner chooses (auto), the rest of the model DDP")
    flags.add(group, "--table_optimizer", choices=TABLE_OPTIMIZERS, default=None, readers=shardable,
                       help="the fused optimizer of sharded tables, stepped inside the backward pass; default adam "
                            "on CUDA (as the dense part, without weight decay), adagrad on CPU (FBGEMM's CPU kernels "
                            "have no Adam)")
    flags.add(group, "--table_lr", type=float, default=None, readers=shardable, rule="positive",
                       help="its learning rate; default -l for adam, 0.05 for adagrad and sgd")
    flags.add(group, "--export_full", action="store_true", readers=shardable,
                       help="for tables too large for one process: evaluate through the sharded tables (the sampled "
                            "protocol; no whole copy of the model on any rank) and write best.pt and last.pt in the "
                            "usual single-file format by gathering one table at a time onto rank 0, staged on disk "
                            "beside them; without it every rank keeps a whole copy for evaluation and checkpoints")


def shardable(model_class):
    """A reader rule: the models whose tables TorchRec can shard (user and item tables, trained by gradient)."""
    return traits(model_class).shards and trained_by_gradient(model_class)


def placement_for(sharding, export_full, eval_protocol, **options):
    """The placement of a run: ``LOCAL`` under --embedding_sharding none, else TorchRec's (``options``: the table
    optimizer, its rate, the learning rate, the device and a ``say`` for the plan). A ShardingError (one line) for
    flags that cannot be sharded (the models whose tables cannot be sharded do not read --embedding_sharding)."""
    if sharding == "none":
        if export_full:
            raise ShardingError("--export_full writes the checkpoints of sharded tables; add --embedding_sharding, "
                                "or drop --export_full")
        return LOCAL
    if export_full and eval_protocol == "full":
        raise ShardingError("--export_full evaluates through the sharded tables, which rank sampled candidates only: "
                            "use --eval_protocol sampled, or drop --export_full when the tables fit in one process")
    from ncflib.sharding import ShardedPlacement  # TorchRec only when asked for

    return ShardedPlacement(sharding, export_full=export_full, **options)
