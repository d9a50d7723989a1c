"""Train and evaluate NCF recommenders (GMF, MLP, NeuMF) with NVIDIA DeepLearningExamples-compatible flags, and
the other model families of ``ncflib.families`` (star ratings, review text).

    python ncf.py                                         # the built-in demo dataset, on CPU or GPU
    python ncf.py --data data/ml100k                      # batch size and learning rate chosen for the data
    python ncf.py --data data/ml1m -e 20 -b 16384 -l 0.002 --model gmf --checkpoint_dir runs/gmf
    python ncf.py --data data/ml1m --mode test --load_checkpoint_path runs/gmf/best.pt
    python ncf.py --data data/ml100k-random --model dotbias    # RMSE of star ratings (5 epochs, one cycle)
    torchrun --nproc_per_node=8 ncf.py --data data/ml20m --amp

Reports HR@k and NDCG@k every epoch, writes JSON lines to --log_path, keeps the best model and the last state (for
--resume) in --checkpoint_dir. The command line only: flags -> an immutable Config -> ``run``'s named steps.
"""

import argparse
import dataclasses
import functools
import math
import sys
from pathlib import Path

import torch

import dataloading
from logger import RunLogger, describe_run, epoch_line, metric_label, metric_line, summary
from ncflib import checkpoint, evaluation, families
from ncflib import training as train
from ncflib.defaults import DEFAULT_EPOCHS, DEMO_EPOCHS, RATING_EPOCHS
from ncflib.errors import UsageError
from ncflib.placement import add_arguments as add_sharding_arguments
from ncflib.placement import placement_for


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none to show (flags whose default is chosen from the data)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    """The command line as given, with -e's default filled in and the deprecated --opt_level O1/O2 read as --amp;
    ``resolve_config`` turns it into the run's Config."""
    parser = argparse.ArgumentParser(
        description="Train and evaluate Neural Collaborative Filtering (GMF, MLP, NeuMF). Flags follow NVIDIA's "
                    "DeepLearningExamples ncf.py.", formatter_class=_HelpFormatter)
    parser.add_argument("--data", help="dataset directory from convert.py (or NVIDIA's convert.py); without it, "
                                       "the built-in synthetic demo dataset is generated in memory")
    parser.add_argument("-e", "--epochs", type=int, default=None,
                        help=f"number of training epochs; default {DEFAULT_EPOCHS} ({DEMO_EPOCHS} for the built-in "
                             f"demo, whose best epoch comes by the 9th; {RATING_EPOCHS} for the rating models)")
    parser.add_argument("-b", "--batch_size", type=int, default=None,
                        help="samples (positives and negatives) per optimizer step; default: chosen from the "
                             "dataset size (printed at start)")
    parser.add_argument("--valid_batch_size", type=int, help="samples per evaluation batch (default 2^20; CPU: 2^14)")
    parser.add_argument("-f", "--factors", type=int, default=64, help="GMF embedding size (predictive factors)")
    parser.add_argument("--layers", nargs="+", type=int, default=None,
                        help="MLP layer sizes, the first being the user and item embeddings joined (even); default "
                             "NVIDIA's 256 256 128 64, halved below 500,000 training pairs (printed at start); for "
                             "embnn its hidden layers, default 100")
    parser.add_argument("-n", "--negative_samples", type=int, default=None,
                        help="negatives drawn per positive, each epoch; default: chosen from the dataset size "
                             "(printed at start): NVIDIA's 4, up to 16 on small datasets (the built-in demo keeps 4)")
    parser.add_argument("-l", "--learning_rate", type=float, default=None,
                        help="Adam learning rate; default: chosen with the batch size and schedule (printed at start)")
    parser.add_argument("-k", "--topk", type=int, default=10, help="k of HR@k and NDCG@k")
    parser.add_argument("-s", "--seed", type=int, default=0, help="random seed (negatives, order, initialisation)")
    parser.add_argument("-t", "--threshold", type=float, default=None,
                        help="stop training once the selection metric (HR@k, or Recall@k under --eval_protocol full; "
                             "of the validation set when there is one) reaches this value (default: run every epoch)")
    parser.add_argument("--eval_protocol", choices=evaluation.PROTOCOLS, default="sampled",
                        help="'sampled': each held-out item ranked among its sampled negatives (NVIDIA, the NCF "
                             "paper); 'full': among every item the user has not trained on, with HR@k, Recall@k, "
                             "NDCG@k and MRR@k (NGCF/LightGCN; needed for ratio splits)")
    parser.add_argument("--eval_every", type=int, default=1, metavar="EPOCHS",
                        help="evaluate after every EPOCHS-th epoch (and the last) only: where ranking every item "
                             "takes longer than an epoch's training; the best epoch is chosen among those evaluated")
    parser.add_argument("--early_stop", type=int, default=None, metavar="EPOCHS",
                        help="stop after this many epochs without a better selection metric (default: run every "
                             "epoch); the best epoch is chosen on the validation set when the dataset has one")
    parser.add_argument("-b1", "--beta1", type=float, default=None,
                        help="Adam beta1; default: NVIDIA's 0.25 for batches of 2^18 or more, else 0.9 (printed)")
    parser.add_argument("-b2", "--beta2", type=float, default=None,
                        help="Adam beta2; default: NVIDIA's 0.5 for batches of 2^18 or more, else PyTorch's default; "
                             "0.99 for the rating models (printed)")
    parser.add_argument("--eps", type=float, default=1e-8, help="Adam epsilon")
    parser.add_argument("--weight_decay", type=float, default=None,
                        help="decoupled weight decay (AdamW) on all parameters; 0 gives plain Adam as in NVIDIA's "
                             "tool; default 0.1 (measured better on ML-100k and ML-1M, docs/history.md); for the "
                             "rating models 0.2 (embnn 0.1), their biases spared (printed)")
    parser.add_argument("--lr_schedule", choices=["constant", "cosine", "onecycle"], default=None,
                        help="'cosine' lowers the rate from -l towards 0 along half a cosine over -e epochs (resuming "
                             "with the same -e follows it); 'onecycle' rises from -l/25 to -l in the first quarter, "
                             "then falls towards 0 (fastai's fit_one_cycle); default cosine below 500,000 training "
                             "pairs with at least 25 per item (not the demo), else constant; rating models onecycle")
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout after each MLP layer; default 0.5 (embnn: 0)")
    for family in families.all_families():
        family.add_arguments(parser)
    add_sharding_arguments(parser)
    parser.add_argument("--checkpoint_dir", default="checkpoints",
                        help="where best.pt (best model) and last.pt (for --resume) are written; '' for none")
    parser.add_argument("--load_checkpoint_path", help="checkpoint to start training from, or to test in --mode test")
    parser.add_argument("--mode", choices=["train", "test"], default="train",
                        help="'test' evaluates --load_checkpoint_path (default CHECKPOINT_DIR/best.pt)")
    parser.add_argument("--grads_accumulated", type=int, default=1,
                        help="batches whose gradients are summed per optimizer step")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision (bfloat16 where supported, else float16 with loss scaling)")
    parser.add_argument("--log_path", help="JSON-lines log; default CHECKPOINT_DIR/log.json")
    parser.add_argument("--opt_level", choices=["O0", "O1", "O2"], default="O0",
                        help="deprecated apex option: O1/O2 mean --amp")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deprecated torch.distributed.launch; the LOCAL_RANK variable is used")
    parser.add_argument("--model", choices=families.model_kinds(), default=None,
                        help="which model to train: " + "; ".join(family.description
                                                                  for family in families.all_families())
                             + "; default neumf, or gmf under --eval_protocol full")
    parser.add_argument("--optimizer", choices=["adam", "row_sparse_adam", "sgd"], default="adam",
                        help="'adam': AdamW over every parameter (fused); 'row_sparse_adam': embedding rows change "
                             "only in steps whose batch looks them up (LazyAdam), which moves far fewer bytes per "
                             "step when the tables are large and the batch small; a different optimizer from 'adam', "
                             "so check its accuracy on your data; 'sgd': SGD with momentum -b1 (a rate near 0.1)")
    parser.add_argument("--compile", nargs="?", const="default", choices=train.COMPILE_MODES, metavar="MODE",
                        help="compile the training forward pass and evaluation's scoring with torch.compile "
                             "(faster steps after a start-up of a minute or so; on CPU it needs a C++ compiler); "
                             "MODE is torch.compile's mode, "
                             f"one of {', '.join(train.COMPILE_MODES)} ('default' when given without one; "
                             "'reduce-overhead' replays the step as CUDA graphs, which helps small batches on a GPU)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="'auto' uses a GPU when one is available")
    parser.add_argument("--resume", action="store_true",
                        help="continue from CHECKPOINT_DIR/last.pt when it exists (else start from scratch)")
    args = parser.parse_args(argv)
    if args.model is None:  # NeuMF's tower is too slow to rank every item; GMF scores them with one product
        args.model = "gmf" if args.eval_protocol == "full" else "neumf"
    if args.epochs is None:
        args.epochs = families.family_of(args.model).default_epochs(args)
    _validate(parser, args)
    args.amp = args.amp or args.opt_level in ("O1", "O2")
    return args


RULES = {"at least 1": lambda value: value >= 1, "0 or more": lambda value: 0 <= value < math.inf,
         "positive": lambda value: 0 < value < math.inf, "in [0, 1]": lambda value: 0 <= value <= 1,
         "in [0, 1)": lambda value: 0 <= value < 1, "finite": math.isfinite}


def _validate(parser, args):
    """One-line errors (exit 2) for values no run can use, NaN and infinities included."""
    checks = [(flag, getattr(args, name), "at least 1") for flag, name in (
        ("--epochs", "epochs"), ("--valid_batch_size", "valid_batch_size"), ("--factors", "factors"),
        ("--topk", "topk"), ("--grads_accumulated", "grads_accumulated"), ("--batch_size", "batch_size"),
        ("--eval_every", "eval_every"))]
    checks += [("--negative_samples", args.negative_samples, "0 or more"), ("--weight_decay", args.weight_decay,
               "0 or more"), ("--eps", args.eps, "positive"), ("--learning_rate", args.learning_rate, "positive"),
               ("-b1/--beta1", args.beta1, "in [0, 1)"), ("-b2/--beta2", args.beta2, "in [0, 1)"),
               ("--dropout", args.dropout, "in [0, 1)")]
    checks += [("--layers sizes", size, "at least 1") for size in args.layers or []]
    checks += [check for family in families.all_families() for check in family.flag_checks(args)]
    for flag, value, rule in checks:
        if value is not None and not RULES[rule](value):  # None: not given, chosen from the data
            parser.error(f"{flag} must be {rule}, got {value}")
    for family in families.all_families():  # each checks its own flags against --model
        problem = family.flag_problem(args.model, args)
        if problem:
            parser.error(problem)


@functools.cache
def config_type(names):
    """The frozen dataclass with a field per flag name (the registered families' flags included)."""
    return dataclasses.make_dataclass("Config", [(name, object) for name in names], frozen=True)


def resolve_config(args, dataset):
    """The run's Config (a field per flag; nothing changes it afterwards) from the parsed flags and the settings
    the model's family chooses from the data (-n, -b, -l, betas, ...), and notes {what: (value, how chosen)} to
    print."""
    family = families.family_of(args.model)
    if args.mode == "train":  # --mode test checks its checkpoint's model
        family.check(args.model, dataset, args)
    values, notes, warning = family.choose(args.model, args, dataset)
    if warning:
        print(warning, file=sys.stderr)
    fields = vars(args) | values
    return config_type(tuple(fields))(**fields), notes


def build(config, dataset, device, placement):
    """(model, its constructor arguments, optimizer, loss function): fresh and readied by its family (NeuMF from
    pre-trained GMF and MLP, a rating model from the mean), or from --load_checkpoint_path; placed by ``placement``
    (--embedding_sharding). The model says which loss trains it."""
    family = families.family_of(config.model)
    settings = dataclasses.asdict(config) | family.data_settings(dataset)
    model_args = checkpoint.model_arguments(config.model, dataset.num_users, dataset.num_items, settings)
    model = checkpoint.initial_model(config.model, model_args, dataset, config.load_checkpoint_path)
    if not config.load_checkpoint_path:
        model = family.prepare(model, config.model, dataset, config)
    loss = family.training_loss(config.model, model, settings)
    model = placement.place(model.to(device))
    dense = placement.dense_module(model)
    optimizer = placement.optimizer(model, family.optimizer(dense, config))
    return model, model_args, optimizer, loss


def restore(config, folder, model, model_args, optimizer, scaler, dataset, metric, placement, say):
    """(first epoch, best so far by ``metric``): from CHECKPOINT_DIR/last.pt under --resume (refused when trained
    with other settings), else (0, None)."""
    last_path = folder / "last.pt" if folder else None
    if not (config.resume and last_path and last_path.is_file()):
        if config.resume:
            say("no checkpoint to resume from; starting from scratch")
        return 0, None
    resumed = checkpoint.resume(last_path, dataset, model, optimizer, scaler, config.model, model_args,
                                dataclasses.asdict(config), metric, placement=placement)
    say(f"resuming from {last_path} after epoch {resumed[0] - 1}")
    return resumed


def test_mode(config, dataset, runtime, log, autocast, say):
    """--mode test: evaluate a checkpoint once, as its model's family evaluates it."""
    model = checkpoint.load_model(config.load_checkpoint_path or Path(config.checkpoint_dir) / "best.pt", dataset)
    kind = families.kind_of(model)
    family = families.family_of(kind)
    config = dataclasses.replace(config, model=kind)
    family.check(kind, dataset, config)
    metrics = evaluation.timed(family.evaluator(kind, config, dataset, model.to(runtime.device), autocast, runtime))
    log.write("summary", metrics)
    say(metric_line(metrics))
    return 0


def fit(config, dataset, runtime, built, scaler, autocast, placement, folder, log, say):
    """Train ``built`` (``build``'s model, arguments, optimizer and loss) with training.fit on the batches, evaluation
    and selection metric of its family (the best epoch chosen on the validation set when there is one, else on the
    test items); logs, prints and keeps best.pt/last.pt. Returns (the best epoch's dict, whether --threshold
    stopped the run)."""
    model, model_args, optimizer, loss = built
    family = families.family_of(config.model)
    chosen_on = family.selection(config.model, dataset, config)
    start_epoch, best = restore(config, folder, model, model_args, optimizer, scaler, dataset, chosen_on.metric,
                                placement, say)
    train.check_ranks_agree(dataclasses.asdict(config), dataset.fingerprint, start_epoch, runtime)
    saving = folder is not None and runtime.is_main
    saved_best = checkpoint.prepare_folder(folder, dataset.fingerprint, config.model, chosen_on.metric) if saving \
        else None
    log.forget_epochs_from(start_epoch)  # those a killed run logged after its last checkpoint
    log.write("config", dataclasses.asdict(config) | {
        "num_users": dataset.num_users, "num_items": dataset.num_items, "num_train": dataset.num_train,
        "world_size": runtime.world_size, "device": str(runtime.device)})

    def save(name, record, best):  # (on every rank of a sharded run, whose ranks each write their shards)
        checkpoint.save_checkpoint(folder / name, model, config.model, model_args, optimizer, scaler,
                                   record["epoch"], record, best, dataclasses.asdict(config), dataset.fingerprint,
                                   write=saving, placement=placement)

    def on_epoch(record):
        log.write("epoch", record)
        say(epoch_line(record))
        if config.threshold is not None and chosen_on.metric in record and chosen_on.reaches(
                record[chosen_on.metric], config.threshold):
            say(f"reached the target {metric_label(chosen_on.metric)} {config.threshold} in epoch {record['epoch']}; "
                "stopping")

    evaluate = placement.evaluator(
        model, lambda plain: family.evaluator(config.model, config, dataset, plain, autocast, runtime),
        lambda: checkpoint.build_model(config.model, **model_args).to(runtime.device))
    try:
        return family.fit(
            train.compiled(placement.distributed(model, runtime), config.compile), optimizer, scaler, loss,
            family.batches(config.model, config, dataset, runtime), evaluate, chosen_on, epochs=config.epochs,
            autocast=autocast, start_epoch=start_epoch, best=best, seed=config.seed, rank=runtime.rank,
            world_size=runtime.world_size, grads_accumulated=config.grads_accumulated,
            learning_rate=train.schedule(config.lr_schedule, config.learning_rate), threshold=config.threshold,
            on_epoch=on_epoch, save=save if saving or (folder and placement.sharded) else None,
            saved_best=saved_best, patience=config.early_stop, show_bar=runtime.is_main and sys.stderr.isatty(),
            eval_every=config.eval_every, config=config, dataset=dataset)
    except train.NonFiniteLoss as error:
        raise UsageError(f"{error}; lower --learning_rate (now {config.learning_rate:g}); the best checkpoint so far "
                         "is kept") from None


def main(argv=None):
    args = parse_args(argv)
    try:
        with train.process_group_teardown():
            return run(args)
    except UsageError as error:
        print(f"ncf.py: error: {error}", file=sys.stderr)
        return 1


def run(args):
    """The named steps of a run."""
    runtime = train.setup_devices(args.device)
    dataset = dataloading.load_dataset_or_demo(args.data)
    config, notes = resolve_config(args, dataset)
    if config.recency and config.mode == "train":
        dataset = dataset.weighted_by_recency(config.recency, config.recency_window)
    dataset = dataset.to(runtime.device)
    folder, log_path = checkpoint.output_paths(config.checkpoint_dir, config.log_path, config.mode == "train",
                                               check=runtime.is_main)
    log = RunLogger(log_path, enabled=runtime.is_main)
    autocast, scaler = train.mixed_precision(config.amp, runtime.device)
    if scaler.is_enabled() and config.optimizer == "row_sparse_adam":
        raise UsageError("--optimizer row_sparse_adam with --amp needs bfloat16, which this GPU lacks (float16 needs "
                         "loss scaling); drop --amp or use --optimizer adam")
    say = print if runtime.is_main else (lambda *_, **__: None)
    if config.mode == "test":
        return test_mode(config, dataset, runtime, log, autocast, say)
    torch.manual_seed(config.seed)
    family = families.family_of(config.model)
    say(describe_run(config, dataset, runtime, notes, family.describe(config.model, config)))
    placement = placement_for(config.embedding_sharding, config.export_full, family, config.model,
                              config.eval_protocol, table_optimizer=config.table_optimizer, table_lr=config.table_lr,
                              learning_rate=config.learning_rate, device=runtime.device, say=say)
    built = build(config, dataset, runtime.device, placement)
    best, reached = fit(config, dataset, runtime, built, scaler, autocast, placement, folder, log, say)
    record, lines = summary(best, config.topk, reached, dataset.validation is not None)
    log.write("summary", record)
    say(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
