"""Scale on paper: NeuMF's embedding tables at 1M to 1B users against a declared GPU cluster, per sharding type.

    python -m bench.shard_plan                                   # 64 GPUs of 80 GB, 8 per host
    python -m bench.shard_plan --users 1e6 1e8 --ranks 16 --memory_gib 40 --append

For each user count (items a tenth of the users, NeuMF's widths: 64 GMF and 128 MLP columns per user and per
item, float32), the table prints the weights, the optimizer state of Adam (two more floats per weight) and of
row-wise Adagrad (one float per row), TorchRec's plan for each sharding type on the declared ranks (needs the
``requirements-scale.txt`` extra; no GPU: the topology is declared), the weights the fullest rank holds under it,
and an estimate of the bytes the lookups move between ranks each step at ``--batch``:

- table_wise and column_wise: each sample's rows go from the rank holding them to the rank holding the sample,
  forward (embeddings) and backward (their gradients): 2 x batch x (sum of widths) x 4 bytes x (R - 1) / R;
- row_wise: pooled lookups are summed across the ranks holding the row blocks (a reduce-scatter per table), so
  every rank sends its partial sums for the whole batch: 2 x (R - 1) x batch x (sum of widths) x 4 bytes;
- data_parallel tables (every rank a whole copy) move no lookups but all-reduce every table's gradient each step.
"""

import argparse
import sys

import torch

from bench.common import report
from ncflib import sharding
from neumf import NeuMF

GMF_WIDTH, MLP_LAYERS = 64, [256, 256, 128, 64]
TYPES = ("table_wise", "column_wise", "row_wise", "auto")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--users", nargs="+", type=float, default=[1e6, 1e8, 1e9], help="user counts")
    parser.add_argument("--item_ratio", type=float, default=0.1, help="items per user")
    parser.add_argument("--ranks", type=int, default=64, help="GPUs in the declared cluster")
    parser.add_argument("--per_host", type=int, default=8, help="GPUs per host")
    parser.add_argument("--memory_gib", type=float, default=80.0, help="memory per GPU, GiB")
    parser.add_argument("--batch", type=int, default=2**20, help="samples per step over all GPUs")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
    return parser.parse_args(argv)


def traffic(sharding_type, batch, widths, ranks):
    """Bytes the lookups move between ranks per training step (forward and backward), as the docstring says."""
    per_sample = sum(widths) * sharding.BYTES_PER_WEIGHT
    if sharding_type == "row_wise":
        return 2 * (ranks - 1) * batch * per_sample
    return 2 * batch * per_sample * (ranks - 1) / ranks


def gib(count):
    return f"{count / 2**30:,.1f}"


def main(argv=None):
    args = parse_args(argv)
    sharding.require_torchrec()
    lines = ["| users | items | weights GiB | + Adam state GiB | + row-wise Adagrad GiB | sharding "
             "| plan (by TorchRec) | fullest rank's weights GiB | lookup traffic per step GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for users in map(int, args.users):
        items = max(1, int(users * args.item_ratio))
        with torch.device("meta"):
            tables = sharding.embedding_tables(NeuMF(users, items, GMF_WIDTH, MLP_LAYERS))
        weights = sum(table.bytes for table in tables)
        rows = sum(table.rows for table in tables)
        widths = [table.width for table in tables]
        for kind in TYPES:
            try:
                plan = sharding.plan_tables(tables, args.ranks, kind, args.memory_gib * 2**30, "cuda",
                                            args.per_host, max(1, args.batch // args.ranks))
                chosen = sorted({shard[1] for shard in sharding.shards(plan, tables)})
                fullest = gib(max(sharding.bytes_per_rank(plan, tables, args.ranks)))
                how = ", ".join(chosen)
                pure = chosen[0] if len(chosen) == 1 and chosen[0] in TYPES else None
                moved = gib(traffic(pure, args.batch, widths, args.ranks)) if pure else "see below"
            except sharding.ShardingError:
                how, fullest, moved = "does not fit", "-", "-"
            lines.append(f"| {users:,} | {items:,} | {gib(weights)} | {gib(3 * weights)} | "
                         f"{gib(weights + rows * sharding.BYTES_PER_WEIGHT)} | {kind} | {how} | {fullest} | {moved} |")
    note = (f"{args.ranks} GPUs of {args.memory_gib:g} GiB, {args.per_host} per host, batch {args.batch:,}; the "
            "planner budgets each GPU's memory for the tables and their Adam state (two floats per weight) in "
            "device memory (no host-memory caching). table_row_wise (row blocks within a host) moves between the "
            f"table_wise and the row_wise figures: its reduce-scatter stays within a host of {args.per_host}.")
    report("shard_plan.py", "Embedding sharding plans on paper", argv, "declared, no device needed",
           [*lines, "", note], args.append, "NeuMF's tables against a declared cluster")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except sharding.ShardingError as error:
        print(f"shard_plan.py: error: {error}", file=sys.stderr)
        sys.exit(1)
