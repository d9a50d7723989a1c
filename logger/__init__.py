"""JSON-lines run logs: the resolved configuration first, one record per epoch, then a summary.

    log = RunLogger("checkpoints/log.json", enabled=is_main)
    log.write("config", {...}); log.write("epoch", {"epoch": 0, "hr@10": 0.61}); log.write("summary", {...})

Key names follow NVIDIA's DeepLearningExamples NCF (``train_throughput``, ``hr@10``, ``best_accuracy``, ...).
Summarise or plot a log with ``python -m logger.summarize LOG``.
"""

import json
import os
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


    def forget_epochs_from(self, epoch):
        """Drop the latest run's epoch records numbered ``epoch`` or later: a resumed run repeats the epochs that a
        killed one logged after its last checkpoint, and the log keeps each epoch once. Rewritten atomically."""
        if self.path is None or not self.path.is_file() or epoch == 0:
            return
        lines = self.path.read_text().splitlines(keepends=True)
        records = [_parse(line) for line in lines]
        starts = [index for index, record in enumerate(records) if record and record.get("type") == "config"]
        latest = starts[-1] if starts else 0
        kept = [line for index, (line, record) in enumerate(zip(lines, records))
                if not (index > latest and record and record.get("type") == "epoch"
                        and record.get("epoch", -1) >= epoch)]
        if len(kept) < len(lines):
            temporary = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            temporary.write_text("".join(kept))
            os.replace(temporary, self.path)


def epoch_line(record, topk):
    """How an epoch of a ranking run is printed."""
    return (f"epoch {record['epoch']:3d}  loss {record['train_loss']:.4f}  val loss {record['validation_loss']:.4f}  "
            f"HR@{topk} {record[f'hr@{topk}']:.4f}  NDCG@{topk} {record[f'ndcg@{topk}']:.4f}  "
            f"{record['train_throughput'] / 1e6:.2f}M samples/s  "
            f"{record['train_epoch_time'] + record['validation_epoch_time']:.1f} s")


def summary(best, topk, threshold=None, selected_on="test"):
    """(summary record with NVIDIA's key names, printed line) of a ranking run's best epoch (``train.fit``'s
    ``best``); ``selected_on`` says which items chose that epoch."""
    hr, ndcg = best["metrics"].get(f"hr@{topk}", -1.0), best["metrics"].get(f"ndcg@{topk}", 0.0)
    reached = threshold is not None and hr >= threshold
    record = {"best_accuracy": hr, "best_ndcg": ndcg, "best_epoch": best["epoch"],
              "time_to_best_model": best["seconds"], "time_to_target": best["elapsed"] if reached else None,
              "total_time": best["elapsed"], "selected_on": selected_on}
    return record, (f"best HR@{topk} {hr:.4f}  NDCG@{topk} {ndcg:.4f}  at epoch {best['epoch']}"
                    f"  ({best['seconds']:.1f} s of training and evaluation)")


def _parse(line):
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_log(path):
    """The records of a log, as a list of dicts; lines that are not JSON objects are skipped."""
    return [record for record in map(_parse, Path(path).read_text().splitlines()) if record is not None]
