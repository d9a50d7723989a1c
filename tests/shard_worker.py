"""Checks of sharded embedding tables, run by tests/test_sharding.py under torchrun with two Gloo ranks:

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/shard_worker.py OUT.json table_wise neumf

Rank 0 writes OUT.json: the largest forward difference from the unsharded model given the same weights, before
and after one SGD step on each rank's own batch (the unsharded model stepped on the mean gradient of both
batches, as DDP averages), each rank's table bytes measured from its shards, whether the gathered state dict
reproduces the sharded model, and its thread count before the process group and after its teardown.
"""

import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncflib import sharding  # noqa: E402
from ncflib import training as train  # noqa: E402
from ncflib.checkpoint import build_model  # noqa: E402

LEARNING_RATE = 0.5


def batch(rank, size=16):
    generator = torch.Generator().manual_seed(100 + rank)
    return torch.randint(0, 40, (size,), generator=generator), torch.randint(0, 60, (size,), generator=generator)


def thread_count(at_most=None, wait=5.0):
    """This process's threads (Linux), or None where /proc does not list them; with ``at_most``, the count once it
    is at most that or after ``wait`` seconds, whichever comes first (a joined thread can stay listed for a moment
    while the kernel finishes its exit)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    deadline = time.monotonic() + wait
    count = len(list(tasks.iterdir()))
    while at_most is not None and count > at_most and time.monotonic() < deadline:
        time.sleep(0.01)
        count = len(list(tasks.iterdir()))
    return count


def main(out, kind, model_kind):
    before = thread_count()
    train.init_process_group("gloo")
    rank = dist.get_rank()
    # Every rank waits for the others before Gloo is torn down, as ncf.py does: a rank that left while the other was
    # still in its last collective (the sharded lookups are collectives) made that one abort at exit.
    with train.process_group_teardown():
        check(out, kind, model_kind)
    if rank == 0:  # Gloo's threads are gone before interpreter shutdown, where one that remained could abort it
        result = json.loads(Path(out).read_text())
        result["threads"] = {"before": before, "after": thread_count(at_most=before)}
        Path(out).write_text(json.dumps(result))


def check(out, kind, model_kind):
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = build_model(model_kind, 40, 60, factors=8, layers=[16, 8], dropout=0.0)
    reference = copy.deepcopy(model)
    distributed, _ = sharding.shard(model, kind, torch.device("cpu"), optimizer="sgd", learning_rate=LEARNING_RATE)
    users, items = batch(rank)
    difference = {"before": (distributed(users, items) - reference(users, items)).abs().max().item()}

    # One step: the tables by TorchRec's fused SGD, the rest by SGD on DDP's gradients; both average over the ranks'
    # batches, so the unsharded model steps on the mean of the two batches' gradients.
    dense = torch.optim.SGD(sharding.dense_parameters(distributed), lr=LEARNING_RATE)
    distributed(users, items).sum().backward()
    dense.step()
    for other in range(world):
        reference(*batch(other)).sum().backward()
    with torch.no_grad():
        for parameter in reference.parameters():
            if parameter.grad is not None:
                parameter -= LEARNING_RATE * parameter.grad / world
    difference["after"] = (distributed(users, items) - reference(users, items)).abs().max().item()

    local = sharding.local_table_bytes(distributed)
    per_rank = [None] * world
    dist.all_gather_object(per_rank, local)
    rebuilt = build_model(model_kind, 40, 60, factors=8, layers=[16, 8], dropout=0.0)
    rebuilt.load_state_dict(sharding.full_state_dict(distributed))
    gathered = (rebuilt(users, items) - distributed(users, items)).abs().max().item()
    if rank == 0:
        total = sum(module.weight.numel() * 4 for module in reference.modules()
                    if isinstance(module, torch.nn.Embedding))
        Path(out).write_text(json.dumps({"difference": difference, "bytes_per_rank": per_rank, "total": total,
                                         "gathered_difference": gathered}))


if __name__ == "__main__":
    main(*sys.argv[1:])
