"""Training and evaluation throughput of ncf.py's training loop, per batch size, with peak memory.

    python -m bench.train_bench                                   # CPU-sized default: the demo shape
    python -m bench.train_bench --synthetic 138493 26744 20000000 --batch_sizes 1048576 65536 --amp   # ML-20M shape
    python -m bench.train_bench --data data/ml100k --batch_sizes 1024 --append

Builds the dataset in memory (``--synthetic U I N``, as ``convert.py --synthetic`` would) or loads ``--data``, then
times whole training epochs (NeuMF by default, NVIDIA's layer sizes) and one evaluation pass, exactly as ``ncf.py``
runs them: the first epoch is a warm-up and is not counted, the median of the rest is reported. Prints a Markdown
table; ``--append`` adds it, with the command, device and date, to the ``--append`` file.
"""

import statistics
import sys
import time

import torch

from bench.common import (
    add_run_arguments,
    append_result,
    batch_label,
    describe_device,
    device_and_data,
    parser_for,
    peak_memory,
    prepare_run,
    run_flags,
    run_label,
)
from ncflib import training as train


def parse_args(argv=None):
    parser = parser_for(__doc__)
    add_run_arguments(parser)
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1024, 8192], help="-b values to time")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per batch size (the first is a warm-up)")
    parser.add_argument("--model", default="neumf", choices=["neumf", "gmf", "mlp"])
    parser.add_argument("--dropout", type=float, help="dropout of the MLP tower, as ncf.py (default: ncf.py's)")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
    return parser.parse_args(argv)


def measure(dataset, device, batch_size, args):
    """Median epoch and evaluation times (the first epoch a warm-up), throughputs, peak memory, best HR@10."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dropout = ["--dropout", str(args.dropout)] if args.dropout is not None else []
    run = prepare_run(dataset, device, ["--model", args.model, "-b", str(batch_size), *dropout, *run_flags(args)])
    train_model = train.compiled(run.model, run.config.compile)  # the warm-up epoch pays for compiling
    evaluate = run.evaluator(dataset)
    train_seconds, eval_seconds, hrs = [], [], []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        _, samples = run.epoch(dataset, epoch, train_model, epochs=args.epochs)
        train_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        metrics = evaluate()
        eval_seconds.append(time.perf_counter() - started)
        hrs.append(metrics["hr@10"])
    counted = slice(1, None) if args.epochs > 1 else slice(None)
    epoch_time, eval_time = statistics.median(train_seconds[counted]), statistics.median(eval_seconds[counted])
    return {"batch": batch_size, "negatives": run.config.negative_samples, "epoch": epoch_time,
            "samples": samples, "train": samples / epoch_time, "eval": metrics["eval_samples"] / eval_time,
            "memory": peak_memory(device), "hr": max(hrs)}


def main(argv=None):
    args = parse_args(argv)
    setup = device_and_data("train_bench.py", args)
    if setup is None:
        return 1
    device, dataset, name = setup
    rows = [measure(dataset, device, batch_size, args) for batch_size in args.batch_sizes]
    memory = "peak GPU memory (GiB)" if device.type == "cuda" else "peak RSS (GiB)"
    lines = [f"| batch | median epoch (s) | training (M samples/s) | evaluation (M samples/s) | {memory} | "
             f"best HR@10 in {args.epochs} epochs |", "|---|---|---|---|---|---|"]
    lines += [f"| {batch_label(row['batch'])} | {row['epoch']:.2f} | {row['train'] / 1e6:.2f} | "
              f"{row['eval'] / 1e6:.1f} | {row['memory']:.2f} | "
              f"{row['hr']:.4f} |" for row in rows]
    table = "\n".join(lines)
    header = (f"{args.model}{run_label(args.amp, args.compile, args.model, args.branch_loss)}, "
              f"dropout {args.dropout}, optimizer {args.optimizer}, {rows[0]['negatives']} negatives per positive, "
              f"data: {name} "
              f"({dataset.num_train:,} training pairs); device: {describe_device(device)}")
    print(header)
    print(table)
    if args.append:
        append_result("train_bench.py", "Training throughput", argv, f"{header}\n\n{table}", args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
