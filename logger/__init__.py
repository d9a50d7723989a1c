"""JSON-lines run logs: the resolved configuration first, one record per epoch, then a summary.

    log = RunLogger("checkpoints/log.json", enabled=is_main)
    log.write("config", {...}); log.write("epoch", {"epoch": 0, "hr@10": 0.61}); log.write("summary", {...})

Key names follow NVIDIA's DeepLearningExamples NCF (``train_throughput``, ``hr@10``, ``best_accuracy``, ...).
Summarise or plot a log with ``python -m logger.summarize LOG``.
"""

import json
import time
from pathlib import Path


class RunLogger:
    """Appends one JSON object per line; a no-op when ``enabled`` is false (non-zero ranks) or ``path`` is None."""

    def __init__(self, path, enabled=True):
        self.path = Path(path) if path and enabled else None

    def write(self, kind, data):
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)  # at the first record: a failed run leaves no folder
        record = {"type": kind, "time": round(time.time(), 3), **data}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_log(path):
    """The records of a log, as a list of dicts; lines that are not JSON objects are skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
