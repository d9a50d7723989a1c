"""Closed forms at catalogue scale: a synthetic catalogue fitted and evaluated under full ranking, with the fit's and
the evaluation's seconds and the run's peak memory.

    python -m bench.closed_form_scale                      # rp3beta; 100,000 users, 1,000,000 items, 20M pairs
    python -m bench.closed_form_scale --users 20000 --items 100000 --interactions 2000000 --model gfcf \\
        --flags "--gfcf_grid 0.3,256"

The catalogue comes from ``convert.py --synthetic`` (Zipf-like popularity, taste groups) as an 80/20 ratio split,
written once under --workdir and reused. ``ncf.py`` then fits the one setting that --flags gives (default RP3beta's
0.8,0.3,200: the grid's middle) and ranks every item for every test user, in a child process whose peak resident
memory is read from the kernel (its rusage). One JSON line per run is appended to --output.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FLAGS = {"rp3beta": "--rp3_grid 0.8,0.3,200", "gfcf": "--gfcf_grid 0.3,256", "ease": "--ease_l2 500"}


def run_child(command, log_file):
    """(exit status, wall seconds, peak resident MiB) of ``command`` run to its end, its output to ``log_file``."""
    started = time.perf_counter()
    with open(log_file, "w") as sink:
        child = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.perf_counter() - started, usage.ru_maxrss / 1024  # (Linux: KiB)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=20_000_000)
    parser.add_argument("--model", default="rp3beta", choices=sorted(DEFAULT_FLAGS))
    parser.add_argument("--flags", default=None, help="ncf.py flags of the setting (default: per model, above)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/closed-form-scale")
    parser.add_argument("--output", default="experiments/results/closed-form-scale-cpu.jsonl")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shape = f"{args.users}-{args.items}-{args.interactions}-s{args.seed}"
    data = work / f"data-{shape}"
    if not (data / "metadata.json").is_file():
        status, seconds, peak = run_child(
            [sys.executable, "convert.py", "--synthetic", str(args.users), str(args.items), str(args.interactions),
             "--split", "ratio", "--seed", str(args.seed), "--output", str(data), "--force", "--quiet"],
            work / f"convert-{shape}.txt")
        if status:
            print(f"closed_form_scale: convert.py failed; see {work / f'convert-{shape}.txt'}", file=sys.stderr)
            return 1
        print(f"converted the synthetic catalogue in {seconds:.0f} s (peak {peak:,.0f} MiB)")
    flags = shlex.split(args.flags if args.flags is not None else DEFAULT_FLAGS[args.model])
    run = work / f"{args.model}-{shape}"
    shutil.rmtree(run, ignore_errors=True)  # (a fresh run: its log holds this run's epoch alone)
    command = [sys.executable, "ncf.py", "--data", str(data), "--model", args.model, "--eval_protocol", "full", "-k",
               "20", *flags, "--checkpoint_dir", str(run)]
    status, seconds, peak = run_child(command, work / f"{args.model}-{shape}.txt")
    if status:
        print(f"closed_form_scale: ncf.py failed; see {work / f'{args.model}-{shape}.txt'}", file=sys.stderr)
        return 1
    records = [json.loads(line) for line in (run / "log.json").read_text().splitlines()]
    epoch = next(record for record in records if record["type"] == "epoch")
    metadata = json.loads((data / "metadata.json").read_text())
    result = {"model": args.model, "flags": " ".join(flags), "users": metadata["num_users"],
              "items": metadata["num_items"], "training_pairs": metadata["num_train"],
              "fit_seconds": round(epoch["train_epoch_time"], 1),
              "evaluation_seconds": round(epoch["validation_epoch_time"], 1), "wall_seconds": round(seconds, 1),
              "peak_memory_mib": round(peak), "recall@20": epoch["recall@20"], "ndcg@20": epoch["ndcg@20"],
              "date": str(datetime.date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    with open(args.output, "a") as sink:
        sink.write(json.dumps(result) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
