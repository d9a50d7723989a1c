"""What the benchmark scripts share: the flags that shape a training run, the data, a run set up exactly as
ncf.py sets it up, device descriptions and table labels, and appending results to a Markdown file (``--append``)."""

import argparse
import datetime
import itertools
import json
import platform
import resource
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import dataloading
import ncf
from ncflib import evaluation, families
from ncflib import training as train
from ncflib.data import splits
from ncflib.errors import UsageError
from ncflib.placement import LOCAL

ERRORS = (UsageError,)


def add_data_arguments(parser):
    """--data, or --synthetic's shape: the data a benchmark runs on."""
    parser.add_argument("--data", help="dataset directory; default: a synthetic set of --synthetic's shape")
    parser.add_argument("--synthetic", nargs=3, type=int, metavar=("USERS", "ITEMS", "INTERACTIONS"),
                        default=[2000, 1500, 120000], help="shape of the synthetic set (the demo's by default)")


def add_run_arguments(parser):
    """The flags the training benchmarks share: the data, and how ncf.py trains on it."""
    add_data_arguments(parser)
    parser.add_argument("--amp", action="store_true", help="mixed precision, as ncf.py --amp")
    parser.add_argument("--optimizer", default="adam", choices=["adam", "row_sparse_adam"], help="as ncf.py")
    parser.add_argument("-n", "--negative_samples", type=int,
                        help="negatives per positive; default: as ncf.py chooses them for --data, else the demo's 4")
    parser.add_argument("--branch_loss", type=float, default=ncf.parse_args([]).branch_loss, metavar="WEIGHT",
                        help="NeuMF's branch-loss weight, as ncf.py (0: the paper's NeuMF, one output layer)")
    parser.add_argument("--compile", nargs="?", const="default", choices=train.COMPILE_MODES, metavar="MODE",
                        help="torch.compile in this mode, as ncf.py --compile (the warm-up absorbs compiling)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("-f", "--factors", type=int, help="GMF embedding size, as ncf.py (default: ncf.py's)")
    parser.add_argument("--layers", nargs="+", type=int, help="MLP layer sizes, as ncf.py (default: ncf.py's)")


def run_flags(args):
    """The ncf.py flags for the ``add_run_arguments`` that shape a training run. ``--data`` goes along only so that
    ncf.py chooses its defaults for that data (without it, the demo's); the data itself is loaded here."""
    return (["--optimizer", args.optimizer, "--branch_loss", str(args.branch_loss)] + (["--amp"] if args.amp else [])
            + (["--compile", args.compile] if args.compile else [])
            + (["-n", str(args.negative_samples)] if args.negative_samples is not None else [])
            + (["-f", str(args.factors)] if args.factors else [])
            + (["--layers", *map(str, args.layers)] if args.layers else [])
            + (["--data", args.data] if args.data else []))


def run_label(amp, compile_mode, model="neumf", branch_loss=0.0):
    """", branch losses x W, AMP, compiled (MODE)" for the table headers, each part only when it applies (the
    branch losses as the model's family describes them)."""
    config = argparse.Namespace(branch_loss=branch_loss)
    branches = families.family_of(model).describe(config, None).replace(" (", ", ").rstrip(")")
    return f"{branches}{', AMP' if amp else ''}{f', compiled ({compile_mode})' if compile_mode else ''}"


def device_and_data(script, args):
    """(device, dataset on it, its name) for ``args.device``, ``args.data`` or ``args.synthetic``, as ncf.py would
    set them up; None after printing ``{script}: error: ...`` when either cannot be had."""
    try:
        device = train.setup_devices(args.device).device
        dataset, name = load(args)
    except ERRORS as error:
        print(f"{script}: error: {error}", file=sys.stderr)
        return None
    return device, dataset.to(device), name


def load(args):
    """(dataset, its name) from ``args.data``, or a synthetic set of shape ``args.synthetic`` split in memory."""
    if args.data:
        return dataloading.load_dataset(args.data), args.data
    users, items, interactions = args.synthetic
    split = splits.generated_split((users, items, interactions), seed=0)
    return dataloading.dataset_from_split(split, "synthetic"), f"synthetic {users:,} x {items:,}, {interactions:,}"


@dataclass
class Run:
    """A training run set up as ncf.py sets it up: its Config, model, optimizer, loss and precision."""

    config: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: object
    autocast: object
    scaler: object
    positives: object

    def epoch(self, dataset, number, train_model=None, epochs=None):
        """Train one epoch as ncf.py does (seeded by its number, the rate set by the config's --lr_schedule for a run
        of ``epochs``, default its -e); returns (mean loss, samples), waiting for the device."""
        train.seed_dropout(self.config.seed, number)
        batches = dataloading.ImplicitBatches(dataset, self.config.batch_size, self.config.negative_samples,
                                              train.epoch_seed(self.config.seed, number), self.positives)
        model = self.model if train_model is None else train_model  # (a compiled module has no truth value)
        loss, samples = train.train_epoch(model, self.optimizer, self.scaler, self.autocast, batches, self.loss,
                                          grads_accumulated=self.config.grads_accumulated,
                                          learning_rate=train.schedule(self.config.lr_schedule,
                                                                       self.config.learning_rate),
                                          position=(number, epochs or self.config.epochs))
        return float(loss), samples

    def evaluator(self, dataset):
        """ncf.py's evaluation of this run's model (its --eval_protocol, compiled under --compile): a function
        returning the metrics dict."""
        return evaluation.evaluator(self.model, dataset, self.config.eval_protocol, self.config.topk,
                                    self.config.valid_batch_size, self.autocast, compile_mode=self.config.compile)


def prepare_run(dataset, device, flags):
    """A Run of ncf.py with ``flags`` on ``dataset`` (already on ``device``), its model initialised with seed 0."""
    config, _ = ncf.resolve_config(ncf.parse_args([*flags, "--checkpoint_dir", "", "--device", device.type]), dataset)
    torch.manual_seed(0)
    model, _, optimizer, loss = ncf.build(families.family_of(config.model), config, dataset, device, LOCAL)
    autocast, scaler = train.mixed_precision(config.amp, device)
    positives = dataloading.PositiveSet(dataset.train_users, dataset.train_items, dataset.num_users,
                                        dataset.num_items)
    return Run(config, model, optimizer, loss, autocast, scaler, positives)


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def batch_label(batch_size):
    """2^k for powers of two, the number otherwise."""
    return f"2^{batch_size.bit_length() - 1}" if batch_size & (batch_size - 1) == 0 else str(batch_size)


def describe_device(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, PyTorch {torch.__version__}"
    processor = platform.processor() or platform.machine()
    return f"CPU {processor}, {torch.get_num_threads()} threads, PyTorch {torch.__version__}"


def result_of_log(log_path):
    """What a results file keeps of a finished ncf.py run, from its JSON-lines log: the test HR@k and NDCG@k of the
    best epoch, that epoch, which items chose it (``selected_on``), its validation metric when a validation set
    chose it (``valid``), all its metrics, the training and evaluation seconds (``total_time``) and the test HR@k of
    every epoch (``curve``); under full ranking also each epoch's test Recall@k (``recall_curve``) and the
    training and evaluation seconds up to its end (``elapsed``)."""
    lines = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    summary = next(line for line in reversed(lines) if line["type"] == "summary")
    start = max(index for index, line in enumerate(lines) if line["type"] == "config")
    epochs = [line for line in lines[start:] if line["type"] == "epoch"]
    # (A --refit run's choosing epochs evaluate the validation set alone: its curves are the validation set's.)
    prefix = "valid_" if summary.get("refit") else ""
    hr_key = next(key for key in epochs[0] if key.startswith(prefix + "hr@"))
    metrics = summary.get("best_metrics", {})
    # The selection metric: Recall@k under full ranking, else HR@k (of the validation set, when it chose).
    valid = next((value for prefix in ("valid_recall@", "valid_hr@") for key, value in
                  summary.get("chosen_metrics", metrics).items() if key.startswith(prefix)), None)
    recall = {key: value for key, value in metrics.items() if key.startswith(("recall@", "ndcg@"))}
    return {"hr": summary["best_accuracy"], "ndcg": summary["best_ndcg"], "best_epoch": summary["best_epoch"],
            **({"recall": recall[next(key for key in recall if key.startswith("recall@"))]}
               if any(key.startswith("recall@") for key in recall) else {}),
            "selected_on": summary.get("selected_on", "test"), "total_time": round(summary["total_time"], 1),
            "curve": [round(epoch[hr_key], 4) for epoch in epochs],
            **_recall_curve(epochs, prefix),
            **({"valid": valid} if valid is not None else {}), "metrics": metrics,
            **({"refit": summary["refit_choice"], "chosen_metrics": summary["chosen_metrics"]}
               if summary.get("refit") else {})}


def _recall_curve(epochs, prefix=""):
    """{recall_curve, elapsed} of a full-ranking run's epoch records ({} for sampled evaluation); ``prefix``
    'valid_': the validation set's Recall@k."""
    key = next((key for key in epochs[0] if key.startswith(prefix + "recall@")), None)
    if key is None:
        return {}
    seconds = itertools.accumulate(epoch.get("train_epoch_time", 0.0) + epoch.get("validation_epoch_time", 0.0)
                                   for epoch in epochs)
    return {"recall_curve": [round(epoch[key], 4) if key in epoch else None for epoch in epochs],
            "elapsed": [round(value, 1) for value in seconds]}


def parser_for(docstring):
    """An argument parser described by a script's docstring's first line, showing defaults."""
    return argparse.ArgumentParser(description=docstring.splitlines()[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def append_result(script, title, argv, body, file):
    """Add ``### {title}, {date}``, the command (``argv`` as given, or the process's own) and ``body`` to the
    Markdown ``file`` (a benchmark's ``--append``; created if missing)."""
    command = f"python -m bench.{script.removesuffix('.py')} " + shlex.join(sys.argv[1:] if argv is None else argv)
    with open(file, "a") as handle:
        handle.write(f"\n### {title}, {datetime.date.today()}\n\nCommand: `{command}`  \n{body}\n")


def report(script, title, argv, device, lines, append, heading):
    """Print ``heading; device: ...`` and the table ``lines``; with ``append`` (a file), add them to it."""
    print(f"{heading}; device: {device}", *lines, sep="\n")
    if append:
        append_result(script, title, argv, f"device: {device}\n\n" + "\n".join(lines), append)
