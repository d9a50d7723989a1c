"""JSON-lines run logs: the resolved configuration first, one record per epoch, then a summary.

    log = RunLogger("checkpoints/log.json", enabled=is_main)
    log.write("config", {...}); log.write("epoch", {"epoch": 0, "hr@10": 0.61}); log.write("summary", {...})

Key names follow NVIDIA's DeepLearningExamples NCF (``train_throughput``, ``hr@10``, ``best_accuracy``, ...).
Summarise or plot a log with ``python -m logger.summarize LOG``.
"""

import json
import re
import time
from pathlib import Path

from ncflib.files import atomic_file


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


    def forget_epochs_from(self, epoch, start="config", kind="epoch"):
        """Drop the latest run's epoch records (type ``kind``, after the last record of type ``start``) numbered
        ``epoch`` or later: a resumed run repeats the epochs that a killed one logged after its last checkpoint, and
        the log keeps each epoch once. Rewritten atomically."""
        if self.path is None or not self.path.is_file() or epoch == 0:
            return
        lines = self.path.read_text().splitlines(keepends=True)
        records = [_parse(line) for line in lines]
        starts = [index for index, record in enumerate(records) if record and record.get("type") == start]
        latest = starts[-1] if starts else 0
        kept = [line for index, (line, record) in enumerate(zip(lines, records))
                if not (index > latest and record and record.get("type") == kind
                        and record.get("epoch", -1) >= epoch)]
        if len(kept) < len(lines):
            with atomic_file(self.path, hint="pass another --log_path") as temporary:
                temporary.write_text("".join(kept))


METRIC = re.compile(r"(valid_)?(?:(hr|recall|ndcg|mrr)@(\d+)|(rmse|mae|mse|text_loss))")
LABELS = {"hr": "HR", "recall": "Recall", "ndcg": "NDCG", "mrr": "MRR", "rmse": "RMSE", "mae": "MAE", "mse": "MSE",
          "text_loss": "text loss"}


def metric_label(key):
    """How a metric key is printed: ``hr@10`` -> ``HR@10``, ``valid_ndcg@10`` -> ``valid NDCG@10``, ``rmse`` ->
    ``RMSE``."""
    match = METRIC.fullmatch(key)
    if not match:
        return key
    name = f"{LABELS[match[2]]}@{match[3]}" if match[2] else LABELS[match[4]]
    return f"{'valid ' if match[1] else ''}{name}"


# Keys of an epoch record that are not the evaluation's metrics.
BOOKKEEPING = ("epoch", "train_loss", "test_loss", "valid_loss", "learning_rate", "train_throughput",
               "train_epoch_time", "eval_throughput", "validation_epoch_time", "eval_samples")


def metric_line(metrics, prefix=""):
    """The metrics of a dict (those named like ``hr@10``, ``valid_recall@20``, ``rmse``), printed in its order;
    ``prefix`` keeps only the test set's ("") or the validation set's ("valid_"). A dict with none of those names
    (a family's own metrics) has its other numbers printed by their keys."""
    known = [f"{metric_label(key)} {value:.4f}" for key, value in metrics.items()
             if (match := METRIC.fullmatch(key)) and (match[1] or "") == prefix]
    if known or any(METRIC.fullmatch(key) for key in metrics):
        return "  ".join(known)
    return "  ".join(f"{key.removeprefix(prefix)} {value:.4f}" for key, value in metrics.items()
                     if key not in BOOKKEEPING and isinstance(value, float) and key.startswith(prefix)
                     and (prefix or not key.startswith("valid_")))


def describe_run(config, dataset, runtime, notes, model_note=""):
    """The data, the model (``model_note`` after its name: what its family says of it) and the chosen settings
    (``notes``: {what: (value, how chosen)}), as ncf.py prints them at start."""
    lines = [f"data: {dataset.description()}",
             f"model: {config.model}{model_note}"
             + (f", optimizer {config.optimizer}, weight decay {config.weight_decay:g}"
                if config.weight_decay is not None else "")  # (none for a model solved in closed form)
             + (f", L2 {config.l2:g} on the rows looked up" if config.l2 else "")
             + {"cosine": ", cosine learning-rate decay", "onecycle": ", one-cycle learning rate"}.get(
                 config.lr_schedule, "")
             + f", device: {runtime.device}" + (f" x {runtime.world_size} ranks" if runtime.world_size > 1 else "")
             + (", mixed precision" if config.amp else "")]
    if dataset.train_weights is not None:
        import dataloading  # only --recency's line needs it (and torch): the log tools stay light

        lines.append(dataloading.describe_recency(dataset.train_weights, config.recency, config.recency_window))
    for flag, (value, how) in notes.items():
        lines.append(f"{flag}: {value if isinstance(value, str) else format(value, 'g')} ({how})")
    return "\n".join(lines)


def rate(samples_per_second):
    """A throughput with a unit that suits it: ``1.23M samples/s`` on a GPU, ``87.4k samples/s`` on a CPU."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if samples_per_second >= scale:
            return f"{samples_per_second / scale:.{2 if scale > 1e3 else 1}f}{unit} samples/s"
    return f"{samples_per_second:.0f} samples/s"


def epoch_line(record):
    """How an epoch is printed: losses ("solved" for a model solved in closed form, which has no training loss),
    the test set's metrics, the validation set's, throughput (of a gradient epoch) and time."""
    trained = f"loss {record['train_loss']:.4f}" if "train_loss" in record else "solved"
    losses = trained + "".join(
        f"  {label} {record[key]:.4f}" for key, label in (("test_loss", "test loss"), ("valid_loss", "valid loss"))
        if key in record)
    metrics = "  ".join(part for part in (metric_line(record), metric_line(record, "valid_")) if part)
    speed = f"{rate(record['train_throughput'])}  " if "train_throughput" in record else ""
    return (f"epoch {record['epoch']:3d}  {losses}  {metrics}  {speed}"
            f"{record['train_epoch_time'] + record['validation_epoch_time']:.1f} s")


def summary(best, topk, reached=False, validated=False, refit=None):
    """(summary record with NVIDIA's key names, printed lines) of a run's best epoch (``training.fit``'s ``best``; the
    run stopped at its --threshold when ``reached``): its test metrics, and which items chose it (``selected_on``:
    the validation set's, when ``validated``, else the test set's own). With ``refit`` (--refit: the choice, with
    its ``epoch``, validation ``metrics``, words ``chosen`` and ``seconds``), ``best`` is the refit model's one
    evaluation: the test metrics are its, the epoch and validation metrics the choice's, the times both runs'."""
    metrics = best["metrics"]
    hr, ndcg = metrics.get(f"hr@{topk}", -1.0), metrics.get(f"ndcg@{topk}", 0.0)
    epoch, seconds = (refit["epoch"], refit["seconds"] + best["seconds"]) if refit else (best["epoch"], best["seconds"])
    elapsed = best["elapsed"] + (refit["seconds"] if refit else 0.0)
    record = {"best_accuracy": hr, "best_ndcg": ndcg, "best_epoch": epoch,
              "time_to_best_model": seconds, "time_to_target": elapsed if reached else None,
              "total_time": elapsed, "selected_on": "validation" if validated else "test",
              "best_metrics": metrics}
    found = metric_line(metrics) or f"HR@{topk} {hr:.4f}  NDCG@{topk} {ndcg:.4f}"
    if refit:
        record |= {"refit": True, "refit_choice": refit["chosen"], "chosen_metrics": refit["metrics"]}
        return record, (f"test {found}  of the model refit on the training and validation pairs  ({seconds:.1f} s "
                        f"of training and evaluation, both runs)\n{refit['chosen']} chosen on the validation set "
                        f"({metric_line(refit['metrics'], 'valid_')}; epoch {epoch}); best.pt is the refit model")
    line = f"best {found}  at epoch {epoch}  ({seconds:.1f} s of training and evaluation)"
    chosen = (f"the best epoch was chosen on the validation set ({metric_line(metrics, 'valid_')})" if validated
              else "the best epoch was chosen on the test items (the dataset has no validation set)")
    return record, f"{line}\n{chosen}"


def _parse(line):
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_log(path):
    """The records of a log, as a list of dicts; lines that are not JSON objects are skipped."""
    return [record for record in map(_parse, Path(path).read_text().splitlines()) if record is not None]
