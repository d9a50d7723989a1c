"""The physical floor of a NeuMF training step: bytes moved and FLOPs, over this device's measured bandwidth and
matrix-product rate, set against the measured step time.

    python -m bench.floor                                                   # CPU-sized default: the demo shape
    python -m bench.floor --synthetic 138493 26744 20000000 --batch_size 1048576 --amp --append   # ML-20M shape

Counts, per step of ``--batch_size`` samples (ncf.py's default NeuMF, NVIDIA's sizes, the model train_bench times):

- embeddings: each sample reads a GMF and an MLP row for its user and its item, and its backward writes their
  gradients; fp32 tables.
- optimizer: dense AdamW reads weight, gradient and both moments and writes weight and moments (28 bytes per
  parameter) for every parameter, plus zeroing the gradient (4 bytes); row-sparse Adam does the same, plus its
  scratch sums, for the rows looked up only (about 48 bytes per looked-up value).
- tower: the joined embeddings and every layer's output written once in the forward pass and read once in the
  backward, and their gradients the same (bf16 with --amp, else fp32); the FLOPs are 6 x batch x the sum of in x
  out over the tower's layers and the output layer (with branch losses, ``--branch_loss`` above 0 as by default,
  also the two branches' own output layers, which add their parameters to the optimizer's bytes).

The floor is the larger of bytes / bandwidth and FLOPs / matrix rate, that is, with perfect overlap and no launch
cost; no real step reaches it. Bandwidth is timed with a large device copy, the matrix rate with a product of the
tower's first layer's shape. The step time is the median epoch of ``bench/train_bench.py``'s measurement divided
by the steps per epoch. ``--append`` adds the table, with the command, device and date, to the ``--append`` file.
"""

import argparse
import math
import sys
import time

import torch

import ncf
from bench import common, train_bench
from bench.common import append_result
from ncflib import defaults


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_run_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=8192, help="samples per step")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed (the first is a warm-up)")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
    return parser.parse_args(argv)


def step_costs(batch, num_users, num_items, factors, layers, activation_bytes, optimizer, branch_heads=False):
    """(bytes by component, FLOPs) of one NeuMF training step of ``batch`` samples; ``branch_heads``: the two
    branches' own output layers also score every sample (branch losses)."""
    row_values = 2 * factors + layers[0]  # GMF user + item rows, MLP user + item rows (each layers[0] / 2 wide)
    embeddings = batch * row_values * 4 * 2  # rows read forward, their gradients written backward
    table_values = (num_users + num_items) * (factors + layers[0] // 2)
    tower_values = sum(width_in * width_out + width_out for width_in, width_out in zip(layers[:-1], layers[1:]))
    outputs = 2 if branch_heads else 1  # NeuMF's output layer; with branch losses, the branches' own two as well
    tower_values += outputs * (factors + layers[-1]) + (3 if branch_heads else 1)
    if optimizer == "adam":
        optimizer_bytes = (table_values + tower_values) * (28 + 4)
    else:
        optimizer_bytes = batch * row_values * 48 + tower_values * (28 + 4)
    activations = batch * sum(layers) * activation_bytes * 4  # the joined input and each layer's output: value and
    # gradient, each written once and read once
    flops = 6 * batch * (sum(width_in * width_out for width_in, width_out in zip(layers[:-1], layers[1:]))
                         + outputs * (factors + layers[-1]))
    return {"embedding rows": embeddings, "optimizer": optimizer_bytes, "tower activations": activations}, flops


def timed(function, repeats, device):
    function()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / repeats


def measure_device(device, batch, layers, amp):
    """(bytes/s of a device copy, FLOP/s of a product shaped like the tower's first layer)."""
    values = 2**28 if device.type == "cuda" else 2**25  # 1 GiB on a GPU, 128 MiB on a CPU
    source, target = torch.empty(values, device=device), torch.empty(values, device=device)
    bandwidth = 2 * values * 4 / timed(lambda: target.copy_(source), 10, device)
    dtype = torch.bfloat16 if amp else torch.float32
    rows = min(batch, 2**20 if device.type == "cuda" else 2**14)
    left = torch.randn(rows, layers[0], device=device, dtype=dtype)
    right = torch.randn(layers[0], layers[1], device=device, dtype=dtype)
    rate = 2 * rows * layers[0] * layers[1] / timed(lambda: left @ right, 10, device)
    return bandwidth, rate


def main(argv=None):
    args = parse_args(argv)
    bench_args = train_bench.parse_args(
        ["--batch_sizes", str(args.batch_size), "--epochs", str(args.epochs), "--device", args.device,
         "--optimizer", args.optimizer, "--branch_loss", str(args.branch_loss),
         "--synthetic", *map(str, args.synthetic)]
        + (["-n", str(args.negative_samples)] if args.negative_samples is not None else [])
        + (["--data", args.data] if args.data else []) + (["--amp"] if args.amp else [])
        + (["--compile", args.compile] if args.compile else []))
    setup = common.device_and_data("floor.py", bench_args)
    if setup is None:
        return 1
    device, dataset, name = setup
    measured = train_bench.measure(dataset, device, args.batch_size, bench_args)
    negatives = measured["negatives"]  # as ncf.py chose them for this data
    steps = math.ceil(dataset.num_train / max(1, args.batch_size // (1 + negatives)))
    step_seconds = measured["epoch"] / steps
    batch = min(args.batch_size, dataset.num_train * (1 + negatives))
    sizes = ncf.parse_args([])  # train_bench times ncf.py's default NeuMF: count the bytes of that one
    layers = sizes.layers or defaults.choose_layers(dataset.num_train)
    components, flops = step_costs(batch, dataset.num_users, dataset.num_items, sizes.factors, layers,
                                   2 if args.amp else 4, args.optimizer, branch_heads=args.branch_loss > 0)
    bandwidth, rate = measure_device(device, batch, layers, args.amp)
    total = sum(components.values())
    memory_seconds, compute_seconds = total / bandwidth, flops / rate
    floor = max(memory_seconds, compute_seconds)
    lines = ["| per step | amount | at the measured rate (ms) |", "|---|---|---|"]
    lines += [f"| {part} | {amount / 1e6:,.1f} MB | {amount / bandwidth * 1e3:.3f} |"
              for part, amount in components.items()]
    lines += [f"| all bytes | {total / 1e6:,.1f} MB at {bandwidth / 1e9:,.0f} GB/s | {memory_seconds * 1e3:.3f} |",
              f"| FLOPs | {flops / 1e9:,.2f} GFLOP at {rate / 1e9:,.0f} GFLOP/s | {compute_seconds * 1e3:.3f} |",
              f"| floor (larger of the two) | {batch / floor / 1e6:,.2f}M samples/s | {floor * 1e3:.3f} |",
              f"| measured step | {measured['train'] / 1e6:,.2f}M samples/s | {step_seconds * 1e3:.3f} |",
              f"| measured / floor | | {step_seconds / floor:.1f}x |"]
    table = "\n".join(lines)
    label = common.run_label(args.amp, args.compile, "neumf", args.branch_loss)
    header = (f"NeuMF, batch {batch:,}{label}, optimizer {args.optimizer}, "
              f"data: {name}; device: {common.describe_device(device)}")
    print(header)
    print(table)
    if args.append:
        append_result("floor.py", "Physical floor of a training step", argv, f"{header}\n\n{table}", args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
