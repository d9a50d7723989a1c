"""Time of one full-ranking evaluation: every user's scores for every item, training items excluded, metrics at k.

    python -m bench.full_eval_bench --data data/ml1m-ncf                         # untrained NeuMF, ncf.py's sizes
    python -m bench.full_eval_bench --data data/ml1m-ncf --checkpoint runs/neumf/best.pt --amp
    python -m bench.full_eval_bench --synthetic 138493 26744 20000000 --device cuda --amp   # ML-20M's shape

Runs ``evaluation.full_metrics`` exactly as ``ncf.py --eval_protocol full`` does: a warm-up pass (it compiles, with
``--compile``), then ``--repeats`` timed passes, reporting the median wall time and the (user, item) pairs scored per
second. Prints a Markdown row; ``--append`` adds it, with the command, device and date, to the ``--append`` file.
"""

import argparse
import contextlib
import statistics
import sys
import time

import torch

from bench.common import ERRORS, add_data_arguments, describe_device, device_and_data, report
from ncflib import evaluation
from ncflib import training as train
from ncflib.checkpoint import build_model, load_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--checkpoint", help="a checkpoint from ncf.py; default: an untrained model")
    parser.add_argument("--model", default="neumf", choices=["neumf", "gmf", "mlp"],
                        help="the untrained model's kind (ncf.py's default sizes)")
    parser.add_argument("-k", "--topk", type=int, default=20, help="k of the metrics")
    parser.add_argument("--batch_samples", type=int, default=2**18, help="scores per chunk of users, as ncf.py's "
                                                                          "--valid_batch_size (capped at 2^18)")
    parser.add_argument("--amp", action="store_true", help="bf16 (or fp16) autocast, as ncf.py --amp")
    parser.add_argument("--compile", nargs="?", const="default", choices=train.COMPILE_MODES, metavar="MODE",
                        help="torch.compile the scoring, as ncf.py --compile")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the warm-up")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the row (command, device, date) to this Markdown file")
    return parser.parse_args(argv)


def timed_passes(evaluate, repeats, device):
    evaluate()  # warm-up (and compiling)
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        metrics = evaluate()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), metrics


def main(argv=None):
    args = parse_args(argv)
    setup = device_and_data("full_eval_bench.py", args)
    if setup is None:
        return 1
    device, dataset, name = setup
    try:
        model = load_model(args.checkpoint, dataset) if args.checkpoint else None
    except ERRORS as error:
        print(f"full_eval_bench.py: error: {error}", file=sys.stderr)
        return 1
    if model is None:
        torch.manual_seed(0)
        model = build_model(args.model, dataset.num_users, dataset.num_items, factors=64, layers=[256, 256, 128, 64],
                            dropout=0.5)
    model = model.to(device).eval()
    autocast = train.mixed_precision(args.amp, device)[0] if args.amp else contextlib.nullcontext
    evaluate = evaluation.evaluator(model, dataset, "full", args.topk, args.batch_samples, autocast,
                                    compile_mode=args.compile)
    seconds, metrics = timed_passes(evaluate, args.repeats, device)
    users = dataset.test.users.numel() + (0 if dataset.validation is None else dataset.validation.users.numel())
    label = (f"{args.checkpoint or 'untrained ' + args.model}{', AMP' if args.amp else ''}"
             f"{f', compiled ({args.compile})' if args.compile else ''}")
    header = (f"| data | model | users x items | seconds (median of {args.repeats}) | M pairs/s | HR@{args.topk} |\n"
              "|---|---|---|---|---|---|")
    row = (f"| {name} | {label} | {users:,} x {dataset.num_items:,} | {seconds:.2f} | "
           f"{metrics['eval_samples'] / seconds / 1e6:.1f} | {metrics[f'hr@{args.topk}']:.4f} |")
    report("full_eval_bench.py", "Full-ranking evaluation", argv, describe_device(device), [header, row], args.append,
           "full-ranking evaluation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
