"""Time to reach a given HR@10: the HR@10 curve of ncf.py runs, with the time at every epoch.

    python -m bench.time_to_hr                                         # CPU-sized default: the demo shape
    python -m bench.time_to_hr --synthetic 138493 26744 20000000 --target 0.839 -- -b 1048576 --amp -e 10
    python -m bench.time_to_hr --data data/ml1m-ncf --target 0.716 --runs 3 --also "" --als --plot ml1m.png \
        -- --model gmf -e 6 -b 4096 -l 0.004 -n 16 --lr_schedule cosine

Generates the synthetic set (``--synthetic U I N``, as ``convert.py --synthetic`` would) into a temporary
directory, or uses ``--data``, then runs ``ncf.py`` with the flags after ``--`` (defaults otherwise) and no
checkpoints. Prints a Markdown table of the curve and the time to the best HR@10 and to ``--target``; ``--append``
adds them, with the command, device and date, to the ``--append`` file.

Two clocks. By default ncf.py runs in this process once and the seconds are its own training and evaluation time
from the first epoch, as its ``time_to_best_model`` (start-up and compilation outside; the GPU figures).
``--runs N`` is what a user waits for: each command (the flags after ``--``, then each ``--also``, ``""`` being
the defaults) runs N times as its own ``python ncf.py`` process, and an epoch's seconds are the wall time from
launching the process to its epoch line, start-up, data loading and evaluation included; the run with the median
time to ``--target`` (else to its best) is tabled. ``--als`` adds the implicit library's ALS on the same split
(``bench.baselines``'s settings; an optional dependency): fitted for 1, 2, 4, 8 and 15 sweeps, each point's
seconds being its data loading, fit and evaluation in this process (the interpreter's start-up, about 1.5 s, not
counted). ``--plot FILE.png`` draws every curve, HR@10 against seconds. NVIDIA's code on an H100 reached its
best, 0.839, at epoch 6 after 19.3 s on the ML-20M-shaped set.
"""

import argparse
import contextlib
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import convert
import ncf
from bench.common import add_data_arguments, append_result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--demo", action="store_true",
                        help="(with --runs) time `python ncf.py` on its built-in demo, the README's first command")
    parser.add_argument("--target", type=float, help="HR@10 whose first reaching is timed")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the result (command, device, date) to this Markdown file")
    parser.add_argument("--runs", type=int, default=None,
                        help="run each command this many times as its own process, timed by the wall clock from "
                             "its launch (start-up included), and table the median run")
    parser.add_argument("--also", action="append", default=[], metavar="FLAGS",
                        help="(with --runs) another command's ncf.py flags, quoted; '' for the defaults")
    parser.add_argument("--als", action="store_true",
                        help="(with --runs) the implicit library's ALS on the same split, beside")
    parser.add_argument("--plot", type=Path, help="(with --runs) draw the curves, HR@10 against seconds, to this PNG")
    parser.add_argument("ncf_flags", nargs="*", help="ncf.py flags, after --")
    return parser.parse_args(argv)


def run(data, flags):
    """ncf.main on ``data`` with ``flags``; returns (exit code, its log records, its printed output)."""
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "log.json"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = ncf.main(["--data", str(data), *flags, "--checkpoint_dir", "", "--log_path", str(log_path)])
        records = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    return code, records, printed.getvalue()


def curve_table(records, target):
    """Markdown table of the epochs, and a line on the best and target times."""
    config = next(record for record in records if record["type"] == "config")
    epochs = [record for record in records if record["type"] == "epoch"]
    hr_key, ndcg_key = f"hr@{config['topk']}", f"ndcg@{config['topk']}"
    lines = [f"| epoch | HR@{config['topk']} | NDCG@{config['topk']} | seconds so far |", "|---|---|---|---|"]
    elapsed, best, reached = 0.0, None, None
    for record in epochs:
        elapsed += record["train_epoch_time"] + record["validation_epoch_time"]
        lines.append(f"| {record['epoch']} | {record[hr_key]:.4f} | {record[ndcg_key]:.4f} | {elapsed:.2f} |")
        if best is None or record[hr_key] > best[1]:
            best = (record["epoch"], record[hr_key], elapsed)
        if target is not None and reached is None and record[hr_key] >= target:
            reached = (record["epoch"], elapsed)
    verdict = f"best HR@{config['topk']} {best[1]:.4f} at epoch {best[0]}, after {best[2]:.1f} s"
    if target is not None:
        verdict += (f"; reached {target} at epoch {reached[0]}, after {reached[1]:.1f} s" if reached
                    else f"; did not reach {target}")
    return "\n".join(lines), verdict, config


def main(argv=None):
    args = parse_args(argv)
    if args.runs is None and (args.also or args.als or args.plot or args.demo):
        print("time_to_hr.py: error: --demo, --also, --als and --plot go with wall-clock runs: add --runs N",
              file=sys.stderr)
        return 2
    if args.demo and (args.data or args.als):
        print("time_to_hr.py: error: --demo runs ncf.py on its built-in data: drop --data and --als", file=sys.stderr)
        return 2
    if args.demo:
        return wall_clock(args, None, argv)
    with tempfile.TemporaryDirectory() as folder:
        data = args.data
        if data is None:
            users, items, interactions = args.synthetic
            data = Path(folder) / "synthetic"
            with contextlib.redirect_stdout(io.StringIO()):  # its conversion summary is not what is measured
                if convert.main(["--synthetic", str(users), str(items), str(interactions), "--output", str(data),
                                 "--quiet"]) != 0:
                    return 1
        if args.runs is not None:
            return wall_clock(args, data, argv)
        code, records, printed = run(data, args.ncf_flags)
    if code != 0:
        print(printed, end="")
        return code
    table, verdict, config = curve_table(records, args.target)
    name = args.data or "synthetic {:,} x {:,}, {:,}".format(*args.synthetic)
    device = config["device"]
    if device.startswith("cuda"):
        device = f"{torch.cuda.get_device_name(torch.device(device))}"
    compiled = (f", compiled ({config['compile']}; epoch 0's seconds include compiling)"
                if config.get("compile") else "")
    header = (f"{config['model']}, batch {config['batch_size']:,}, lr {config['learning_rate']:g}"
              f"{', AMP' if config['amp'] else ''}{compiled}, optimizer {config.get('optimizer', 'adam')}; "
              f"data: {name}; "
              f"device: {device}, PyTorch {torch.__version__}")
    print(header, table, verdict, sep="\n")
    if args.append:
        append_result("time_to_hr.py", "Time to HR@10", argv, f"{header}\n\n{table}\n\n{verdict}", args.append)
    return 0


# ------------------------------------------------------------------------------------- wall clock, start-up included


ROOT = Path(__file__).resolve().parent.parent


def launch(data, flags):
    """``python ncf.py`` on ``data`` (None: its built-in demo) with ``flags`` as a process of its own; returns (exit
    code, its output, the epochs as (epoch, HR@k, NDCG@k, wall seconds from the launch to the epoch's line), the
    whole run's seconds)."""
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "log.json"
        command = [sys.executable, str(ROOT / "ncf.py"), *(["--data", str(data)] if data else []), *flags,
                   "--checkpoint_dir", "", "--log_path", str(log_path)]
        started = time.perf_counter()
        job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
        lines, stamps = [], []
        for line in job.stdout:
            lines.append(line)
            if line.startswith("epoch "):
                stamps.append(time.perf_counter() - started)
        code = job.wait()
        seconds = time.perf_counter() - started
        records = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    config = next((record for record in records if record["type"] == "config"), {"topk": 10})
    hr, ndcg = f"hr@{config['topk']}", f"ndcg@{config['topk']}"
    epochs = [(record["epoch"], record[hr], record[ndcg], stamp)
              for record, stamp in zip((record for record in records if record["type"] == "epoch"), stamps)]
    return code, "".join(lines), epochs, seconds


def reached(epochs, target):
    """(seconds to the first epoch at ``target`` or above (None if never), seconds to the best, the best HR)."""
    first = next((stamp for _, hr, _, stamp in epochs if target is not None and hr >= target), None)
    best = max(epochs, key=lambda epoch: epoch[1])
    return first, best[3], best[1]


def als_curve(data, sweeps=(1, 2, 4, 8, 15)):
    """The implicit library's ALS fitted for each number of ``sweeps``: [(sweeps, HR@10, NDCG@10, seconds)], the
    seconds counting data loading, the fit and the evaluation."""
    import implicit.cpu.als  # noqa: F401  (imported once, outside the timed fits)

    import dataloading
    from bench import baselines

    defaults = baselines.parse_args(["--data", str(data)])
    curve = []
    for count in sweeps:
        started = time.perf_counter()
        dataset = dataloading.load_dataset(data)
        model = baselines.ALS(dataset, defaults.als_factors[0], defaults.als_regularization, defaults.als_alpha[0],
                              count)
        metrics = baselines.evaluate(model, dataset, "sampled", 10)
        curve.append((count, metrics["hr@10"], metrics["ndcg@10"], time.perf_counter() - started))
    return curve


def wall_clock(args, data, argv):
    commands = [shlex.join(args.ncf_flags)] + list(args.also)
    curves, lines = {}, ["| command | runs | seconds to target (each run) | median | best HR@10 (median run) | "
                         "median run's seconds to its best |", "|---|---|---|---|---|---|"]
    for command in commands:
        label = f"`{command}`" if command else "defaults"
        runs = []
        for _ in range(args.runs):
            code, output, epochs, _ = launch(data, shlex.split(command))
            if code != 0 or not epochs:
                print(output, end="")
                return code or 1
            runs.append((reached(epochs, args.target), epochs))
        key = [first if first is not None else float("inf") for (first, _, _), _ in runs]
        median_run = sorted(range(len(runs)), key=lambda index: (key[index], runs[index][0][1]))[len(runs) // 2]
        (first, to_best, best), epochs = runs[median_run]
        curves[label] = [(stamp, hr) for _, hr, _, stamp in epochs]
        shown = ", ".join("never" if value == float("inf") else f"{value:.1f}" for value in key)
        median = statistics.median(key)
        lines.append(f"| {label} | {args.runs} | {shown} | {'never' if median == float('inf') else f'{median:.1f}'} "
                     f"| {best:.4f} | {to_best:.1f} |")
        lines += [f"|   epoch {epoch} | | | | {hr:.4f} / {ndcg:.4f} | {stamp:.1f} |"
                  for epoch, hr, ndcg, stamp in epochs]
    if args.als:
        try:
            curve = als_curve(data)
        except ImportError:
            print("time_to_hr.py: error: --als needs the implicit library: pip install -r requirements-compare.txt",
                  file=sys.stderr)
            return 2
        first = next((seconds for _, hr, _, seconds in curve if args.target is not None and hr >= args.target), None)
        best = max(curve, key=lambda point: point[1])
        lines.append(f"| implicit ALS (bench.baselines settings) | 1 | {'never' if first is None else f'{first:.1f}'} "
                     f"| | {best[1]:.4f} | {best[3]:.1f} |")
        lines += [f"|   {count} sweeps | | | | {hr:.4f} / {ndcg:.4f} | {seconds:.1f} |"
                  for count, hr, ndcg, seconds in curve]
        curves["implicit ALS"] = [(seconds, hr) for _, hr, _, seconds in curve]
    threads = torch.get_num_threads()
    data_name = "the built-in demo" if args.demo else args.data or "synthetic"
    header = (f"data: {data_name}; target HR@10 {args.target}; wall seconds from launching "
              f"`python ncf.py` (start-up, loading and evaluation included); device: {os.cpu_count()} CPUs "
              f"({threads} torch threads), PyTorch {torch.__version__}")
    print(header, *lines, sep="\n")
    if args.plot:
        plot(curves, args.target, args.plot)
    if args.append:
        append_result("time_to_hr.py", "Time to HR@10, wall clock", argv,
                      header + "\n\n" + "\n".join(lines), args.append)
    return 0


def plot(curves, target, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        axes.plot([seconds for seconds, _ in points], [hr for _, hr in points], marker="o", markersize=3,
                  label=label.strip("`"))
    if target is not None:
        axes.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target}")
    axes.set_xlabel("wall seconds")
    axes.set_ylabel("HR@10")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
