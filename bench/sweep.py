"""Run a grid of ncf.py configurations over several seeds, in parallel worker processes, and rank them.

    python -m bench.sweep --data data/ml100k --grid grid.txt --seeds 0 1 2 --workers 4 --output sweep.jsonl
    python -m bench.sweep --output experiments/results/ml100k-focus-cpu.jsonl      # only rank the results of a sweep

Each non-empty line of the grid file holds the ncf.py flags of one configuration (``#`` starts a comment), for
example ``--model gmf -b 2048 -l 0.002 -e 20``. Every (configuration, seed) pair runs ``ncf.main`` in a worker
process with no checkpoints; one JSON line per run is appended to --output as it finishes, so an interrupted sweep
keeps its results and a re-run skips the pairs already there. At the end a table ranks the configurations by mean
best HR@k over the seeds. Small datasets leave a GPU mostly idle, so several workers share it well.
"""

import argparse
import contextlib
import io
import json
import multiprocessing
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="dataset directory passed to ncf.py --data")
    parser.add_argument("--grid", help="file with one configuration (ncf.py flags) per line; without it, only the "
                                       "results already in --output are ranked")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds run for every configuration")
    parser.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    parser.add_argument("--output", required=True, help="JSON-lines results file (appended to)")
    parser.add_argument("--top", type=int, default=15, help="configurations shown in the final table")
    return parser.parse_args(argv)


def read_grid(path):
    configs = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            configs.append(" ".join(shlex.split(line)))
    return configs


def run_one(job):
    """Train one configuration with one seed; returns the result record (or the error)."""
    import ncf
    from bench.common import result_of_log

    data, config, seed = job
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "log.json"
        argv = ["--data", data, *shlex.split(config), "--seed", str(seed), "--checkpoint_dir", "",
                "--log_path", str(log_path)]
        captured = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            try:
                status = ncf.main(argv)
            except SystemExit as exit_:
                status = exit_.code
        seconds = time.perf_counter() - started
        record = {"config": config, "seed": seed, "status": status, "seconds": round(seconds, 2)}
        if status == 0:
            record.update(result_of_log(log_path))
        else:
            record["error"] = captured.getvalue().strip().splitlines()[-1:]
        return record


def rank(records, top):
    """The configurations by their mean over seeds: of the validation metric when the runs were chosen on a
    validation set (the test figures beside it, never used to rank), else of the test HR (chosen on test)."""
    by_config = {}
    for record in records:
        if record.get("status") == 0:
            by_config.setdefault(record["config"], []).append(record)
    on_validation = all("valid" in run for runs in by_config.values() for run in runs) and bool(by_config)
    rows = []
    for config, runs in by_config.items():
        hrs, ndcgs = [run["hr"] for run in runs], [run["ndcg"] for run in runs]
        key = statistics.mean(run["valid"] for run in runs) if on_validation else statistics.mean(hrs)
        rows.append((key, statistics.mean(hrs), statistics.mean(ndcgs), min(hrs), len(runs),
                     statistics.mean(run["seconds"] for run in runs), config))
    rows.sort(reverse=True)
    lines = [("ranked on the validation set's mean; the test figures beside it" if on_validation else
              "ranked on the test HR: these runs had no validation set, so the ranking reads the test items")]
    lines.append((f"{'valid':>8} " if on_validation else "")
                 + f"{'mean HR':>8} {'mean NDCG':>9} {'min HR':>7} {'runs':>4} {'s/run':>6}  configuration")
    lines += [(f"{key:8.4f} " if on_validation else "") + f"{hr:8.4f} {ndcg:9.4f} {low:7.4f} {count:4d} "
              f"{seconds:6.1f}  {config}" for key, hr, ndcg, low, count, seconds, config in rows[:top]]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    output = Path(args.output)
    done = []
    if output.is_file():
        done = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    if args.grid is None or args.data is None:
        print(rank(done, args.top))
        return 0
    finished = {(record["config"], record["seed"]) for record in done}
    jobs = [(args.data, config, seed) for config in read_grid(args.grid) for seed in args.seeds
            if (config, seed) not in finished]
    print(f"{len(jobs)} runs to do ({len(finished)} already in {output}), {args.workers} workers", flush=True)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with context.Pool(args.workers, maxtasksperchild=8) as pool, output.open("a") as sink:
        for record in pool.imap_unordered(run_one, jobs):
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            done.append(record)
            shown = f"HR {record['hr']:.4f} NDCG {record['ndcg']:.4f}" if record["status"] == 0 else record["error"]
            print(f"[{len(done) - len(finished)}/{len(jobs)}] {record['config']} seed {record['seed']}: {shown} "
                  f"({record['seconds']} s)", flush=True)
    print(rank(done, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
