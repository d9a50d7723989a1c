"""Append a finished ncf.py run to a JSON-lines results file, read from its own log (no figure copied by hand).

    python -m bench.record_run runs/gmf/log.json --config "--model gmf -e 30" --seed 0 \
        --output experiments/results/ml1m-pipeline-cpu.jsonl

Each line has the fields of ``bench.sweep``'s results (``config``, ``seed``, ``hr``, ``ndcg``, ``best_epoch``,
``selected_on``, ``curve``), with ``seconds`` the run's training and evaluation time, the date and the machine,
so ``python -m bench.sweep --output FILE`` ranks them.
"""

import argparse
import datetime
import json
import platform
import sys

from bench.common import result_of_log


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="the run's JSON-lines log (ncf.py --log_path, default CHECKPOINT_DIR/log.json)")
    parser.add_argument("--config", required=True, help="the run's flags, as a sweep grid line names them")
    parser.add_argument("--seed", type=int, required=True, help="the run's -s")
    parser.add_argument("--output", required=True, help="JSON-lines file to append to")
    parser.add_argument("--peak_memory", type=float, metavar="MIB",
                        help="the run's peak resident memory in MiB, as measured (e.g. /usr/bin/time -f %%M, in KiB, "
                             "divided by 1024)")
    args = parser.parse_args(argv)
    try:
        result = result_of_log(args.log)
    except (OSError, ValueError, StopIteration, KeyError) as error:
        print(f"record_run: error: {args.log}: not a finished ncf.py log ({error!r:.80})", file=sys.stderr)
        return 1
    record = {"config": args.config, "seed": args.seed, "status": 0, "seconds": result["total_time"], **result,
              **({"peak_memory_mib": round(args.peak_memory)} if args.peak_memory is not None else {}),
              "date": str(datetime.date.today()), "machine": f"{platform.machine()}, {platform.node()}"}
    with open(args.output, "a") as sink:
        sink.write(json.dumps(record) + "\n")
    print(f"{args.output}: {args.config} seed {args.seed}: HR {record['hr']:.4f} NDCG {record['ndcg']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
