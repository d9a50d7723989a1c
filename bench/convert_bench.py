"""Benchmark convert.py on a synthetic MovieLens-20M-format ratings.csv: wall time and peak memory.

    python -m bench.convert_bench                          # 138,493 users, 26,744 items, 20M rows
    python -m bench.convert_bench --rows 1000000 --users 6040 --items 3706

Writes the CSV (pyarrow) and the dataset under --workdir (a temporary folder by default), runs convert.py in a
child process and reports its wall time and peak resident memory (ru_maxrss of the child).
"""

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv

ROOT = Path(__file__).resolve().parents[1]


def write_ratings_csv(path, users, items, rows, seed):
    """A MovieLens-20M-format ratings.csv (userId,movieId,rating,timestamp) from the synthetic generator."""
    from ncflib.data.synthetic import synthetic_interactions

    data = synthetic_interactions(users, items, rows, seed=seed)
    table = pa.table({"userId": data["user"], "movieId": data["item"], "rating": data["rating"],
                      "timestamp": data["timestamp"]})
    pa_csv.write_csv(table, path, write_options=pa_csv.WriteOptions(quoting_style="none"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=138_493)
    parser.add_argument("--items", type=int, default=26_744)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where to write the CSV and dataset (default: a temporary folder)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ncf-convert-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    csv_path = workdir / "ratings.csv"
    if not csv_path.exists():
        started = time.perf_counter()
        write_ratings_csv(csv_path, args.users, args.items, args.rows, args.seed)
        print(f"wrote {csv_path} ({csv_path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    command = [sys.executable, str(ROOT / "convert.py"), "--path", str(csv_path), "--output",
               str(workdir / "dataset"), "--force", "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print()
    print("| rows | users | items | wall time | peak RSS | CPU cores | machine |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.rows:,} | {args.users:,} | {args.items:,} | {seconds:.1f} s | {peak_gb:.2f} GB | "
          f"{os.cpu_count()} | {platform.processor() or platform.machine()}, Python {platform.python_version()} |")


if __name__ == "__main__":
    main()
