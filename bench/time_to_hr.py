"""Time to reach a given HR@10: the HR@10 curve of one ncf.py run, with the wall time at every epoch.

    python -m bench.time_to_hr                                         # CPU-sized default: the demo shape
    python -m bench.time_to_hr --synthetic 138493 26744 20000000 --target 0.839 -- -b 1048576 --amp -e 10
    python -m bench.time_to_hr --data data/ml1m-ncf --target 0.70 --append -- --model gmf

Generates the synthetic set (``--synthetic U I N``, as ``convert.py --synthetic`` would) into a temporary
directory, or uses ``--data``, then runs ``ncf.py`` in this process with the flags after ``--`` (defaults
otherwise) and no checkpoints. Seconds count training and evaluation from the first epoch, as ncf.py's
``time_to_best_model`` does; preprocessing and start-up are not counted. Prints a Markdown table of the curve and
the time to the best HR@10 and to ``--target``; ``--append`` adds them, with the command, device and date, to
docs/experiments.md. NVIDIA's code on an H100 reached its best, 0.839, at epoch 6 after 19.3 s on the ML-20M-shaped set.
"""

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import torch

import convert
import ncf
from bench.common import add_data_arguments, append_result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--target", type=float, help="HR@10 whose first reaching is timed")
    parser.add_argument("--append", action="store_true", help="append the result to docs/experiments.md")
    parser.add_argument("ncf_flags", nargs="*", help="ncf.py flags, after --")
    return parser.parse_args(argv)


def run(data, flags):
    """ncf.main on ``data`` with ``flags``; returns (exit code, its log records, its printed output)."""
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "log.json"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = ncf.main(["--data", str(data), *flags, "--checkpoint_dir", "", "--log_path", str(log_path)])
        records = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    return code, records, printed.getvalue()


def curve_table(records, target):
    """Markdown table of the epochs, and a line on the best and target times."""
    config = next(record for record in records if record["type"] == "config")
    epochs = [record for record in records if record["type"] == "epoch"]
    hr_key, ndcg_key = f"hr@{config['topk']}", f"ndcg@{config['topk']}"
    lines = [f"| epoch | HR@{config['topk']} | NDCG@{config['topk']} | seconds so far |", "|---|---|---|---|"]
    elapsed, best, reached = 0.0, None, None
    for record in epochs:
        elapsed += record["train_epoch_time"] + record["validation_epoch_time"]
        lines.append(f"| {record['epoch']} | {record[hr_key]:.4f} | {record[ndcg_key]:.4f} | {elapsed:.2f} |")
        if best is None or record[hr_key] > best[1]:
            best = (record["epoch"], record[hr_key], elapsed)
        if target is not None and reached is None and record[hr_key] >= target:
            reached = (record["epoch"], elapsed)
    verdict = f"best HR@{config['topk']} {best[1]:.4f} at epoch {best[0]}, after {best[2]:.1f} s"
    if target is not None:
        verdict += (f"; reached {target} at epoch {reached[0]}, after {reached[1]:.1f} s" if reached
                    else f"; did not reach {target}")
    return "\n".join(lines), verdict, config


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        data = args.data
        if data is None:
            users, items, interactions = args.synthetic
            data = Path(folder) / "synthetic"
            with contextlib.redirect_stdout(io.StringIO()):  # its conversion summary is not what is measured
                if convert.main(["--synthetic", str(users), str(items), str(interactions), "--output", str(data),
                                 "--quiet"]) != 0:
                    return 1
        code, records, printed = run(data, args.ncf_flags)
    if code != 0:
        print(printed, end="")
        return code
    table, verdict, config = curve_table(records, args.target)
    name = args.data or "synthetic {:,} x {:,}, {:,}".format(*args.synthetic)
    device = config["device"]
    if device.startswith("cuda"):
        device = f"{torch.cuda.get_device_name(torch.device(device))}"
    compiled = (f", compiled ({config['compile']}; epoch 0's seconds include compiling)"
                if config.get("compile") else "")
    header = (f"{config['model']}, batch {config['batch_size']:,}, lr {config['learning_rate']:g}"
              f"{', AMP' if config['amp'] else ''}{compiled}, optimizer {config.get('optimizer', 'adam')}; "
              f"data: {name}; "
              f"device: {device}, PyTorch {torch.__version__}")
    print(header, table, verdict, sep="\n")
    if args.append:
        append_result("time_to_hr.py", "Time to HR@10", argv, f"{header}\n\n{table}\n\n{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
