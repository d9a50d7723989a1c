"""Summarise a JSON-lines run log as a table, and optionally draw its metric curves to a PNG.

    python -m logger.summarize checkpoints/log.json
    python -m logger.summarize checkpoints/log.json --plot curves.png     # needs matplotlib
"""

import argparse
import sys

from logger import METRIC, read_log

# validation_loss: what logs of earlier versions called test_loss (NVIDIA's name for it)
COLUMNS = ("epoch", "train_loss", "test_loss", "validation_loss", "valid_loss", "train_throughput", "train_epoch_time")


def summary_table(records):
    """A plain-text table of the epoch records, then the summary record's key figures."""
    epochs = [record for record in records if record.get("type") == "epoch"]
    if not epochs:
        return "no epoch records in this log"
    metric_keys = [key for key in epochs[0] if METRIC.fullmatch(key)]
    columns = [column for column in COLUMNS if column in epochs[0]] + metric_keys
    rows = [[_format(record.get(column)) for column in columns] for record in epochs]
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.rjust(width) for column, width in zip(columns, widths))]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    for record in records:
        if record.get("type") == "summary":
            lines.append("summary: " + ", ".join(f"{key} {_format(value)}" for key, value in record.items()
                                                 if key not in ("type", "time", "best_metrics", "selected_on",
                                                                "chosen_metrics", "refit", "refit_choice")))
            if record.get("refit"):
                lines.append(f"{record['refit_choice']} was chosen on the validation set; the test figures are "
                             "those of the model refit on the training and validation pairs")
            elif "best_epoch" in record:
                lines.append("the best epoch was chosen on " + (
                    "the validation set" if record.get("selected_on") == "validation" else
                    "the test items (no validation set: its figures are optimistic)"))
    return "\n".join(lines)


def _format(value):
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    return "" if value is None else str(value)


def plot(records, output):
    """Draw HR@k, NDCG@k and the losses against epochs into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [record for record in records if record.get("type") == "epoch"]
    x = [record["epoch"] for record in epochs]
    figure, (metrics, losses) = plt.subplots(1, 2, figsize=(10, 4))
    for key in (key for key in epochs[0] if METRIC.fullmatch(key)):
        metrics.plot(x, [record[key] for record in epochs], marker="o", label=key)
    for key in ("train_loss", "test_loss", "validation_loss", "valid_loss"):
        if key in epochs[0]:
            losses.plot(x, [record[key] for record in epochs], marker="o", label=key)
    for axes, title in ((metrics, "ranking metrics"), (losses, "loss")):
        axes.set_xlabel("epoch")
        axes.set_title(title)
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Summarise an ncf JSON-lines log.")
    parser.add_argument("log", help="log file written by ncf.py --log_path")
    parser.add_argument("--plot", metavar="PNG", help="also draw the metric and loss curves into this PNG file")
    args = parser.parse_args(argv)
    try:
        records = read_log(args.log)
    except OSError as error:
        print(f"summarize: error: {args.log}: cannot read ({error.strerror})", file=sys.stderr)
        return 1
    print(summary_table(records))
    if args.plot:
        if not any(record.get("type") == "epoch" for record in records):
            print(f"summarize: error: {args.log}: no epoch records to plot", file=sys.stderr)
            return 1
        plot(records, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
