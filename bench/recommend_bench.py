"""Time of ``recommend.py --users all --output FILE``: every user's top-k, scored and written to a file.

    python -m bench.recommend_bench --checkpoint runs/neumf-ml1m/best.pt --data data/ml1m-ncf --amp
    python -m bench.recommend_bench --checkpoint runs/gmf-ml100k/best.pt --output recs.csv --append

Runs recommend.py's own ``main`` in this process ``--repeats`` times after a warm-up and reports the median time
from reading the checkpoint to the file written (Python and the imports already loaded), then runs the whole
command once more as a fresh process and reports its wall time, start-up included. ``--append`` adds the table,
with the command, device and date, to the ``--append`` file.
"""

import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import recommend
from bench.common import describe_device, parser_for, report


def parse_args(argv=None):
    parser = parser_for(__doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint from ncf.py")
    parser.add_argument("--data", help="its dataset (default: the one its run named)")
    parser.add_argument("-k", "--topk", type=int, default=10, help="items per user")
    parser.add_argument("--output", default="recs.parquet", help="file name (its suffix picks the format), "
                                                                 "written in a temporary folder")
    parser.add_argument("--amp", action="store_true", help="score in bfloat16, as recommend.py --amp")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / Path(args.output).name
        flags = (["--checkpoint", args.checkpoint, "--users", "all", "-k", str(args.topk), "--output", str(output),
                  "--force"] + (["--data", args.data] if args.data else []) + (["--amp"] if args.amp else []))
        seconds = []
        for run in range(args.repeats + 1):
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = recommend.main(flags)
            if code != 0:
                return code
            if run:  # the first run warms up
                seconds.append(time.perf_counter() - started)
        rows = sum(1 for _ in output.open("rb")) if output.suffix != ".parquet" else None
        started = time.perf_counter()
        subprocess.run([sys.executable, str(Path(recommend.__file__)), *flags], check=True, capture_output=True)
        cold = time.perf_counter() - started
        size = output.stat().st_size
    device = describe_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    header = (f"| checkpoint | top-k | file | in-process seconds (median of {args.repeats}) | whole command, fresh "
              "process (s) | file size |\n|---|---|---|---|---|---|")
    row = (f"| {args.checkpoint}{', AMP' if args.amp else ''} | {args.topk} | {Path(args.output).suffix} | "
           f"{statistics.median(seconds):.2f} | {cold:.2f} | {size / 1e6:.1f} MB"
           f"{f' ({rows:,} lines)' if rows else ''} |")
    report("recommend_bench.py", "All-user recommendations to a file", argv, device, [header, row], args.append,
           "recommend.py --users all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
