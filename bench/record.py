"""Append a benchmark's result to BENCHMARKS.md under a dated heading, with the command that produced it."""

import datetime
import shlex
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def append_result(script, title, argv, body):
    """Add ``### {title}, {date}``, the command (``argv`` as given, or the process's own) and ``body``."""
    command = f"python bench/{script} " + shlex.join(sys.argv[1:] if argv is None else argv)
    with open(BENCHMARKS, "a") as handle:
        handle.write(f"\n### {title}, {datetime.date.today()}\n\nCommand: `{command}`  \n{body}\n")
