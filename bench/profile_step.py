"""Where a training step's time goes: the device kernels (or CPU operators) of ncf.py's training loop, ranked.

    python -m bench.profile_step                                              # CPU-sized default: the demo shape
    python -m bench.profile_step --synthetic 138493 26744 20000000 --batch_size 1048576 --amp   # ML-20M shape

Runs ``ncf.train_epoch`` exactly as ncf.py does, on the first ``--steps`` batches' worth of training pairs: once to
warm up (and compile, with ``--compile``), ``--repeats`` times timed, once under ``torch.profiler``. Prints the
wall time per step (the fastest pass, and the median), the time
per step of drawing the batches alone (order, negatives, labels: no model), and the ``--top`` operators or kernels
by their own time (kernels on a GPU, operators on a CPU), per step.
"""

import argparse
import dataclasses
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import dataloading
import logger
from bench import common, train_bench
from ncflib import training as train


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_run_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=8192, help="samples per step")
    parser.add_argument("--steps", type=int, default=20, help="steps profiled")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed passes over the steps: the fastest is reported (a shared machine's neighbours "
                             "only ever slow a pass down), with the median beside it")
    parser.add_argument("--model", default="neumf", choices=["neumf", "gmf", "mlp"])
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    return parser.parse_args(argv)


def first_pairs(dataset, count):
    """The dataset with only its first ``count`` training pairs (users, items and test set unchanged)."""
    return dataclasses.replace(dataset, train_users=dataset.train_users[:count],
                               train_items=dataset.train_items[:count], train_weights=None)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    args = parse_args(argv)
    setup = common.device_and_data("profile_step.py", train_bench.parse_args(
        ["--synthetic", *map(str, args.synthetic), "--device", args.device]
        + (["--data", args.data] if args.data else [])))
    if setup is None:
        return 1
    device, dataset, name = setup
    run = common.prepare_run(dataset, device, ["--model", args.model, "-b", str(args.batch_size),
                                               *common.run_flags(args)])
    positives_per_batch = max(1, run.config.batch_size // (1 + run.config.negative_samples))
    dataset = first_pairs(dataset, positives_per_batch * args.steps)
    steps = -(-dataset.num_train // positives_per_batch)
    train_model = train.compiled(run.model, run.config.compile)

    def epoch(number):
        run.epoch(dataset, number, train_model)

    epoch(0)  # warm-up, and compilation
    passes = []
    for repeat in range(args.repeats):
        synchronize(device)
        started = time.perf_counter()
        epoch(1 + repeat)
        synchronize(device)
        passes.append((time.perf_counter() - started) / steps * 1e3)
    step_ms, median_ms = min(passes), statistics.median(passes)
    generator = torch.Generator(device).manual_seed(1)
    started = time.perf_counter()
    for _batch in dataloading.epoch_batches(dataset, run.config.batch_size, run.config.negative_samples, generator,
                                            run.positives):
        pass
    synchronize(device)
    batches_ms = (time.perf_counter() - started) / steps * 1e3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        epoch(1 + args.repeats)
        synchronize(device)
    averages = profiler.key_averages()
    sort = "self_cpu_time_total"
    if device.type == "cuda":  # the kernels alone (an operator's device time repeats its kernels')
        averages = [event for event in averages if event.device_type == torch.autograd.DeviceType.CUDA]
        # named self_cuda_time_total before PyTorch 2.4
        sort = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") else "self_cuda_time_total"
    total_us = sum(getattr(event, sort) for event in averages)
    label = common.run_label(run.config.amp, run.config.compile, run.config.model, run.config.branch_loss)
    print(f"{args.model}, batch {run.config.batch_size:,}{label}, "
          f"optimizer {run.config.optimizer}, data: {name}; device: {common.describe_device(device)}")
    print(f"{steps} steps: {step_ms:.3f} ms a step at the fastest of {args.repeats} passes (median {median_ms:.3f}; "
          f"{logger.rate(run.config.batch_size / step_ms * 1e3)}); "
          f"drawing the batches alone {batches_ms:.3f} ms a step; "
          f"{'device' if device.type == 'cuda' else 'CPU'} self time {total_us / steps / 1e3:.3f} ms a step")
    print("| operator or kernel | calls a step | ms a step | share |")
    print("|---|---|---|---|")
    for event in sorted(averages, key=lambda event: -getattr(event, sort))[:args.top]:
        own = getattr(event, sort)
        print(f"| {event.key[:90]} | {event.count / steps:.1f} | {own / steps / 1e3:.3f} | {own / total_us:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
