"""Training and evaluation throughput of ncf.py's training loop, per batch size, with peak memory.

    python bench/train_bench.py                                   # CPU-sized default: the demo shape
    python bench/train_bench.py --synthetic 138493 26744 20000000 --batch_sizes 1048576 65536 --amp   # ML-20M shape
    python bench/train_bench.py --data data/ml100k --batch_sizes 1024 --append

Builds the dataset in memory (``--synthetic U I N``, as ``convert.py --synthetic`` would) or loads ``--data``, then
times whole training epochs (NeuMF by default, NVIDIA's layer sizes) and one evaluation pass, exactly as ``ncf.py``
runs them: the first epoch is a warm-up and is not counted, the median of the rest is reported. Prints a Markdown
table; ``--append`` adds it, with the command, device and date, to BENCHMARKS.md.
"""

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script run from anywhere; the tool is not installed

import torch  # noqa: E402

import convert  # noqa: E402
import dataloading  # noqa: E402
import ncf  # noqa: E402
from bench.record import append_result  # noqa: E402


def add_run_arguments(parser):
    """The flags the training benchmarks share: the data, and how ncf.py trains on it."""
    parser.add_argument("--data", help="dataset directory; default: a synthetic set of --synthetic's shape")
    parser.add_argument("--synthetic", nargs=3, type=int, metavar=("USERS", "ITEMS", "INTERACTIONS"),
                        default=[2000, 1500, 120000], help="shape of the synthetic set (the demo's by default)")
    parser.add_argument("--amp", action="store_true", help="mixed precision, as ncf.py --amp")
    parser.add_argument("--optimizer", default="adam", choices=["adam", "row_sparse_adam"], help="as ncf.py")
    parser.add_argument("-n", "--negative_samples", type=int,
                        help="negatives per positive; default: as ncf.py chooses them for --data, else the demo's 4")
    parser.add_argument("--branch_loss", type=float, default=ncf.parse_args([]).branch_loss, metavar="WEIGHT",
                        help="NeuMF's branch-loss weight, as ncf.py (0: the paper's NeuMF, one output layer)")
    parser.add_argument("--compile", nargs="?", const="default", choices=ncf.COMPILE_MODES, metavar="MODE",
                        help="torch.compile in this mode, as ncf.py --compile (the warm-up absorbs compiling)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def run_flags(args):
    """The ncf.py flags for the ``add_run_arguments`` that shape a training run. ``--data`` goes along only so that
    ncf.py chooses its defaults for that data (without it, the demo's); the data itself is loaded here."""
    return (["--optimizer", args.optimizer, "--branch_loss", str(args.branch_loss)] + (["--amp"] if args.amp else [])
            + (["--compile", args.compile] if args.compile else [])
            + (["-n", str(args.negative_samples)] if args.negative_samples is not None else [])
            + (["--data", args.data] if args.data else []))


def run_label(amp, compile_mode, model="neumf", branch_loss=0.0):
    """", branch losses x W, AMP, compiled (MODE)" for the table headers, each part only when it applies."""
    branches = f", branch losses x {branch_loss:g}" if model == "neumf" and branch_loss else ""
    return f"{branches}{', AMP' if amp else ''}{f', compiled ({compile_mode})' if compile_mode else ''}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1024, 8192], help="-b values to time")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per batch size (the first is a warm-up)")
    parser.add_argument("--model", default="neumf", choices=["neumf", "gmf", "mlp"])
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    return parser.parse_args(argv)


def device_and_data(script, args):
    """(device, dataset on it, its name) for ``args.device``, ``args.data`` or ``args.synthetic``, as ncf.py would
    set them up; None after printing ``{script}: error: ...`` when either cannot be had."""
    try:
        device = ncf.setup_devices(args.device)[0]
        dataset, name = load(args)
    except (ncf.UsageError, convert.ConversionError, dataloading.DatasetError) as error:
        print(f"{script}: error: {error}", file=sys.stderr)
        return None
    return device, dataset.to(device), name


def load(args):
    if args.data:
        return dataloading.load_dataset(args.data), args.data
    users, items, interactions = args.synthetic
    options = convert.parse_args(["--synthetic", str(users), str(items), str(interactions), "--output", "-"])
    quiet = convert.Progress(quiet=True)
    split = convert.split_interactions(convert.load_interactions(options, quiet), 2, 100, 0, quiet)
    return dataloading.dataset_from_split(split, "synthetic"), f"synthetic {users:,} x {items:,}, {interactions:,}"


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def measure(dataset, device, batch_size, args):
    run = ncf.parse_args(["--model", args.model, "-b", str(batch_size), "--dropout", str(args.dropout),
                          "--checkpoint_dir", "", "--device", device.type, *run_flags(args)])
    ncf.resolve_sizes(run, dataset)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, _, optimizer = ncf.build(run, dataset, device)
    train_model = ncf.for_training(model, run.compile)  # the first (warm-up) epoch pays for compiling
    score = ncf.for_evaluation(model, run.compile)
    autocast, scaler = ncf.mixed_precision(run.amp, device)
    positives = dataloading.PositiveSet(dataset.train_users, dataset.train_items, dataset.num_users,
                                        dataset.num_items)
    mask = dataloading.candidate_mask(dataset.test_items, dataset.test_negatives)
    train_seconds, eval_seconds, hrs = [], [], []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        loss, samples = ncf.train_epoch(train_model, optimizer, scaler, autocast, dataset, run, epoch, positives, 0, 1,
                                        False)
        float(loss)  # waits for the device
        train_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        metrics = ncf.run_evaluation(model, dataset, run, autocast, mask, 0, 1, score)
        eval_seconds.append(time.perf_counter() - started)
        hrs.append(metrics["hr@10"])
    counted = slice(1, None) if args.epochs > 1 else slice(None)
    epoch_time, eval_time = statistics.median(train_seconds[counted]), statistics.median(eval_seconds[counted])
    return {"batch": batch_size, "negatives": run.negative_samples, "epoch": epoch_time, "train": samples / epoch_time,
            "eval": metrics["eval_samples"] / eval_time, "memory": peak_memory(device), "hr": max(hrs)}


def batch_label(batch_size):
    """2^k for powers of two, the number otherwise."""
    return f"2^{batch_size.bit_length() - 1}" if batch_size & (batch_size - 1) == 0 else str(batch_size)


def describe_device(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, PyTorch {torch.__version__}"
    processor = platform.processor() or platform.machine()
    return f"CPU {processor}, {torch.get_num_threads()} threads, PyTorch {torch.__version__}"


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
        append_result("train_bench.py", "Training throughput", argv, f"{header}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
