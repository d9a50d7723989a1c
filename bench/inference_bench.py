"""Inference latency and throughput of a model's forward pass per batch size, like NVIDIA's inference.py.

    python -m bench.inference_bench                                        # CPU-sized default: 2^0 ... 2^16
    python -m bench.inference_bench --batch_sizes 1 1024 65536 1048576 --amp --iterations 200
    python -m bench.inference_bench --checkpoint runs/ml1m/neumf/best.pt --append

Scores random (user, item) pairs with NeuMF (NVIDIA's sizes, ML-20M's table sizes by default, or the model in
--checkpoint) in eval mode under ``torch.inference_mode``. Each batch size gets warm-up passes, then --iterations
timed passes, each synchronised with the device; the table gives mean, p90 and p99 latency and the throughput at
the mean. ``--append`` adds the table, with the command, device and date, to the ``--append`` file.
"""

import argparse
import statistics
import sys
import time

import torch

from bench import common
from bench.common import append_result
from ncflib import training as train
from ncflib.checkpoint import CheckpointError, build_model, load_checkpoint, model_from_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", help="a checkpoint from ncf.py; default: an untrained NeuMF")
    parser.add_argument("--users", type=int, default=138_493, help="user table size of the untrained model")
    parser.add_argument("--items", type=int, default=26_744, help="item table size of the untrained model")
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[2**k for k in range(0, 17, 2)],
                        help="pairs scored per forward pass")
    parser.add_argument("--iterations", type=int, default=50, help="timed passes per batch size")
    parser.add_argument("--warmup", type=int, default=5, help="untimed passes per batch size")
    parser.add_argument("--amp", action="store_true", help="bf16 (or fp16) autocast, as ncf.py --amp")
    parser.add_argument("--compile", nargs="?", const="default", choices=train.COMPILE_MODES, metavar="MODE",
                        help="torch.compile the model in this mode ('reduce-overhead': CUDA graphs, for small "
                             "batches on a GPU); the warm-up passes absorb compiling")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.iterations < 1 or args.warmup < 0:
        parser.error("batch sizes and --iterations must be positive, --warmup 0 or more")
    return args


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def time_batch(model, num_users, num_items, batch_size, args, device, autocast):
    generator = torch.Generator(device).manual_seed(batch_size)
    users = torch.randint(0, num_users, (batch_size,), generator=generator, device=device)
    items = torch.randint(0, num_items, (batch_size,), generator=generator, device=device)
    seconds = []
    with torch.inference_mode(), autocast():
        for step in range(args.warmup + args.iterations):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            model(users, items)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= args.warmup:
                seconds.append(time.perf_counter() - started)
    mean = statistics.mean(seconds)
    return {"batch": batch_size, "mean": mean * 1e3, "p90": percentile(seconds, 0.9) * 1e3,
            "p99": percentile(seconds, 0.99) * 1e3, "throughput": batch_size / mean}


def main(argv=None):
    args = parse_args(argv)
    try:
        device = train.setup_devices(args.device).device  # the device ncf.py would train on, set up the same way
    except train.DeviceError as error:
        print(f"inference_bench.py: error: {error}", file=sys.stderr)
        return 1
    if args.checkpoint:
        try:
            checkpoint = load_checkpoint(args.checkpoint)
            model = model_from_checkpoint(checkpoint, args.checkpoint)
        except CheckpointError as error:
            print(f"inference_bench.py: error: {error}", file=sys.stderr)
            return 1
        name = f"{checkpoint['model']} from {args.checkpoint}"
        num_users, num_items = checkpoint["model_args"]["num_users"], checkpoint["model_args"]["num_items"]
    else:
        torch.manual_seed(0)
        model = build_model("neumf", args.users, args.items)
        name, num_users, num_items = f"untrained neumf, {args.users:,} users x {args.items:,} items", args.users, \
            args.items
    model = model.to(device).eval()
    forward = torch.compile(model, mode=args.compile) if args.compile else model
    autocast, _ = train.mixed_precision(args.amp, device)
    rows = [time_batch(forward, num_users, num_items, size, args, device, autocast) for size in args.batch_sizes]
    lines = ["| batch | mean latency (ms) | p90 (ms) | p99 (ms) | throughput (samples/s) |", "|---|---|---|---|---|"]
    lines += [f"| {row['batch']:,} | {row['mean']:.3f} | {row['p90']:.3f} | {row['p99']:.3f} | "
              f"{row['throughput']:,.0f} |" for row in rows]
    table = "\n".join(lines)
    header = f"{name}{common.run_label(args.amp, args.compile)}; device: {common.describe_device(device)}"
    print(header)
    print(table)
    if args.append:
        append_result("inference_bench.py", "Inference", argv, f"{header}\n\n{table}", args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
