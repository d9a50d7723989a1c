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
import sys
from pathlib import Path

import torch

import dataloading
from logger import RunLogger, describe_run, epoch_line, metric_label, metric_line, summary
from ncflib import checkpoint, evaluation, families, warm
from ncflib import training as train
from ncflib.defaults import DEFAULT_EPOCHS, DEMO_EPOCHS, RATING_EPOCHS
from ncflib.errors import CheckpointError, UsageError, warnings_after
from ncflib.flags import given
from ncflib.placement import add_arguments as add_sharding_arguments
from ncflib.placement import placement_for
from ncflib.protocols import SolvedInClosedForm


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none to show (flags whose default is chosen from the data)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    """The command line as given, with -e's default filled in and the deprecated --opt_level O1/O2 read as --amp;
    ``resolve_config`` turns it into the run's Config. Each flag that not every model reads is declared with its
    readers (``families.Flags``): another model given it stops in one line, as does a value outside its range."""
    parser = argparse.ArgumentParser(
        prog="ncf.py", formatter_class=_HelpFormatter,
        description="Train and evaluate Neural Collaborative Filtering (GMF, MLP, NeuMF). Flags follow NVIDIA's "
                    "DeepLearningExamples ncf.py.")
    flags, gradient = families.Flags(parser), families.trained_by_gradient
    add = functools.partial(flags.add, parser)
    add("--data", help="dataset directory from convert.py (or NVIDIA's convert.py); without it, the built-in "
                       "synthetic demo dataset is generated in memory")
    add("-e", "--epochs", type=int, default=None, readers=gradient, rule="at least 1",
        help=f"number of training epochs; default {DEFAULT_EPOCHS} ({DEMO_EPOCHS} for the built-in demo, whose best "
             f"epoch comes by the 9th; {RATING_EPOCHS} for the rating models); ease: one per --ease_l2 weight")
    add("-b", "--batch_size", type=int, default=None, readers=gradient, rule="at least 1",
        help="samples (positives and negatives) per optimizer step; default: chosen from the dataset size (printed "
             "at start)")
    add("--valid_batch_size", type=int, rule="at least 1",
        help="samples per evaluation batch (default 2^20; CPU: 2^14)")
    add("-f", "--factors", type=int, default=64, readers=families.takes("factors"), rule="at least 1",
        help="GMF embedding size (predictive factors)")
    add("--layers", nargs="+", type=int, default=None, readers=families.takes("layers"), rule="at least 1",
        help="MLP layer sizes, the first being the user and item embeddings joined (even); default NVIDIA's 256 256 "
             "128 64, halved below 500,000 training pairs (printed at start); for embnn its hidden layers, default "
             "100")
    add("-l", "--learning_rate", type=float, default=None, readers=gradient, rule="positive",
        help="Adam learning rate; default: chosen with the batch size and schedule (printed at start)")
    add("-k", "--topk", type=int, default=10, readers=families.ranks_items, rule="at least 1",
        help="k of HR@k and NDCG@k")
    add("-s", "--seed", type=int, default=0, help="random seed (negatives, order, initialisation)")
    add("-t", "--threshold", type=float, default=None, rule="finite",
        help="stop training once the selection metric (HR@k, or Recall@k under --eval_protocol full; of the "
             "validation set when there is one) reaches this value (default: run every epoch)")
    add("--eval_protocol", choices=evaluation.PROTOCOLS, default="sampled", readers=families.ranks_items,
        help="'sampled': each held-out item ranked among its sampled negatives (NVIDIA, the NCF paper); 'full': "
             "among every item the user has not trained on, with HR@k, Recall@k, NDCG@k and MRR@k (NGCF/LightGCN; "
             "needed for ratio splits)")
    add("--eval_every", type=int, default=1, metavar="EPOCHS", readers=gradient, rule="at least 1",
        help="evaluate after every EPOCHS-th epoch (and the last) only: where ranking every item takes longer than "
             "an epoch's training; the best epoch is chosen among those evaluated")
    add("--early_stop", type=int, default=None, metavar="EPOCHS", rule="at least 1",
        help="stop after this many epochs without a better selection metric (default: run every epoch); the best "
             "epoch is chosen on the validation set when the dataset has one")
    add("--refit", action="store_true",
        help="with a validation split: after choosing the epoch (or a closed form's setting) on it, fit that choice "
             "once more on the training and validation pairs and evaluate the test set once, with that model; "
             "CHECKPOINT_DIR/best.pt is then the refit model, and the choosing run's models go to "
             "CHECKPOINT_DIR/chosen/")
    add("-b1", "--beta1", type=float, default=None, readers=gradient, rule="in [0, 1)",
        help="Adam beta1; default: NVIDIA's 0.25 for batches of 2^18 or more, else 0.9 (printed)")
    add("-b2", "--beta2", type=float, default=None, readers=gradient, rule="in [0, 1)",
        help="Adam beta2; default: NVIDIA's 0.5 for batches of 2^18 or more, else PyTorch's default; 0.99 for the "
             "rating models (printed)")
    add("--eps", type=float, default=1e-8, readers=gradient, rule="positive", help="Adam epsilon")
    add("--weight_decay", type=float, default=None, readers=gradient, rule="0 or more",
        help="decoupled weight decay (AdamW) on all parameters; 0 gives plain Adam as in NVIDIA's tool; default 0.1 "
             "(measured better on ML-100k and ML-1M, docs/history.md); for the rating models 0.2 (embnn 0.1), "
             "their biases spared (printed)")
    add("--lr_schedule", choices=["constant", "cosine", "onecycle"], default=None, readers=gradient,
        help="'cosine' lowers the rate from -l towards 0 along half a cosine over -e epochs (resuming with the same "
             "-e follows it); 'onecycle' rises from -l/25 to -l in the first quarter, then falls towards 0 (fastai's "
             "fit_one_cycle); default cosine below 500,000 training pairs with at least 25 per item (not the demo), "
             "else constant; rating models onecycle")
    add("--dropout", type=float, default=None, readers=families.takes("dropout"), rule="in [0, 1)",
        help="dropout after each MLP layer; default 0.5 (embnn: 0)")
    for family in families.all_families():
        family.add_arguments(parser, flags)
    add_sharding_arguments(parser, flags)
    add("--checkpoint_dir", default="checkpoints",
        help="where best.pt (best model) and last.pt (for --resume) are written; '' for none")
    add("--load_checkpoint_path", help="checkpoint to start training from, or to test in --mode test")
    add("--warm_start", metavar="CHECKPOINT",
        help="train from CHECKPOINT (a best.pt of the dataset that convert.py --update extended into --data): its "
             "model and settings unless flags override them, every weight whose shape still fits, the user and item "
             "tables grown for the new ids as a fresh model's; the optimizer starts fresh, and -e defaults to fewer "
             "epochs, from the share of new training pairs (printed); a model solved in closed form is solved "
             "afresh")
    add("--warm_shrink", type=float, default=None, metavar="FACTOR", rule="in (0, 1]",
        help="with --warm_start: the checkpoint's weights are multiplied by FACTOR before training (new rows are a "
             "fresh model's): a model trained on from where it stopped generalises worse than a fresh one, and "
             "shrinking its weights first closes most of the gap (Ash and Adams, NeurIPS 2020); default 0.5, and 1 "
             "(as saved) for a model that scores by cosine, whose scores the weights' scale does not move "
             "(docs/training.md)")
    add("--mode", choices=["train", "test"], default="train",
        help="'test' evaluates --load_checkpoint_path (default CHECKPOINT_DIR/best.pt)")
    add("--grads_accumulated", type=int, default=1, readers=gradient, rule="at least 1",
        help="batches whose gradients are summed per optimizer step")
    add("--amp", action="store_true", help="mixed precision (bfloat16 where supported, else float16 with loss "
                                           "scaling)")
    add("--log_path", help="JSON-lines log; default CHECKPOINT_DIR/log.json")
    add("--opt_level", choices=["O0", "O1", "O2"], default="O0", help="deprecated apex option: O1/O2 mean --amp")
    add("--local_rank", "--local-rank", type=int, default=None,
        help="set by the deprecated torch.distributed.launch; the LOCAL_RANK variable is used")
    add("--model", choices=families.model_kinds(), default=None,
        help="which model to train: " + "; ".join(family.description for family in families.all_families())
             + "; default neumf, or gmf under --eval_protocol full")
    add("--optimizer", choices=["adam", "row_sparse_adam", "sgd"], default="adam", readers=gradient,
        help="'adam': AdamW over every parameter (fused); 'row_sparse_adam': embedding rows change only in steps "
             "whose batch looks them up (LazyAdam), which moves far fewer bytes per step when the tables are large "
             "and the batch small; a different optimizer from 'adam', so check its accuracy on your data; 'sgd': "
             "SGD with momentum -b1 (a rate near 0.1)")
    add("--compile", nargs="?", const="default", choices=train.COMPILE_MODES, metavar="MODE", readers=gradient,
        help="compile the training forward pass and evaluation's scoring with torch.compile (faster steps after a "
             "start-up of a minute or so; on CPU it needs a C++ compiler); MODE is torch.compile's mode, one of "
             f"{', '.join(train.COMPILE_MODES)} ('default' when given without one; 'reduce-overhead' replays the "
             "step as CUDA graphs, which helps small batches on a GPU)")
    add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="'auto' uses a GPU when one is available")
    add("--resume", action="store_true",
        help="continue from CHECKPOINT_DIR/last.pt when it exists (else start from scratch)")
    args = parser.parse_args(argv)
    args.flags_given = sorted(given(parser, argv))  # (recorded in checkpoints: what a --warm_start carries over)
    if args.warm_start:
        if args.mode == "test":
            parser.error("--warm_start starts a training run; --mode test evaluates a checkpoint: drop one of them")
        if args.load_checkpoint_path:
            parser.error("--warm_start and --load_checkpoint_path both name the starting weights: keep one")
        try:
            problem = warm.inherit(
                args, set(args.flags_given), warm.load(args.warm_start), args.warm_start,
                lambda name, kind: name not in flags.owned or flags.owned[name].read_by(kind, families.constructor))
        except CheckpointError as error:
            problem = str(error)
        if problem:
            parser.error(problem)
    if args.model is None:  # NeuMF's tower is too slow to rank every item; GMF scores them with one product
        args.model = "gmf" if args.eval_protocol == "full" else "neumf"
    family = families.family_of(args.model)
    problem = flags.problem(args) or family.check_flags(args) or (
        args.refit and args.mode == "test" and "--refit trains a model again; --mode test evaluates a checkpoint as "
                                               "it is: drop one of them")
    if problem:
        parser.error(problem)
    if args.epochs is None and not (args.warm_start and families.trained_by_gradient(family.model_class)):
        args.epochs = family.default_epochs(args)  # (a warm start's is chosen from the data, by resolve_config)
    args.amp = args.amp or args.opt_level in ("O1", "O2")
    return args


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
        family.check(dataset, args)
    values, notes, warning = family.choose(args, dataset)
    if warning:
        print(warning, file=sys.stderr)
    if args.warm_start and args.mode == "train":
        state = warm.load(args.warm_start)
        warm.check_ids(state, dataset, args.warm_start)
        if args.epochs is None:
            values["epochs"], reason = warm.default_epochs(state, dataset, family.default_epochs(args))
            notes["epochs"] = (values["epochs"], reason)
    fields = vars(args) | values
    return config_type(tuple(fields))(**fields), notes


def build(family, config, dataset, device, placement, say=print):
    """(model, its constructor arguments, optimizer or None, the epoch loop's step): fresh and readied by its family
    (NeuMF from pre-trained GMF and MLP, a rating model from the mean), from --load_checkpoint_path, or grown from
    --warm_start's (said with ``say``); placed by ``placement`` (--embedding_sharding). A gradient-trained model
    gets its optimizer and loss; a model solved in closed form neither."""
    settings = dataclasses.asdict(config) | family.data_settings(dataset)
    model_args = checkpoint.model_arguments(config.model, dataset.num_users, dataset.num_items, settings)
    warm_start = config.warm_start and families.trained_by_gradient(family.model_class)
    if warm_start:
        shrink = warm.shrink_of(config.warm_shrink, settings)
        model, words = warm.grown_model(warm.load(config.warm_start), config.warm_start, config.model, model_args,
                                        shrink)
        warm.release()
        say(words)
    else:
        model = checkpoint.initial_model(config.model, model_args, dataset, config.load_checkpoint_path)
        if config.warm_start:
            say(f"warm start: {config.model} is solved in closed form, so it is solved afresh on {dataset.path} with "
                f"the settings of {config.warm_start} (one solve costs what loading it would save)")
    if not (config.load_checkpoint_path or warm_start):
        model = family.prepare(model, dataset, config, checkpoint.load_model)
    if isinstance(model, SolvedInClosedForm):  # (sharding refuses such a model at parsing)
        model = model.to(device)
        return model, model_args, None, train.solve_step(model, dataset.train_users, dataset.train_items,
                                                         family.settings(config))
    loss = family.loss(model, settings)  # (asked of the model itself, before a placement wraps it)
    model = placement.place(model.to(device))
    optimizer = placement.optimizer(model, family.optimizer(placement.dense_module(model), config))
    return model, model_args, optimizer, loss


def restore(config, folder, model, model_args, optimizer, scaler, dataset, metric, placement, say, resume):
    """(first epoch, best so far by ``metric``): from ``folder``/last.pt when ``resume`` (refused when trained with
    other settings), else (0, None)."""
    last_path = folder / "last.pt" if folder else None
    if not (resume and last_path and last_path.is_file()):
        if resume:
            say("no checkpoint to resume from; starting from scratch")
        return 0, None
    resumed = checkpoint.resume(last_path, dataset, model, optimizer, scaler, config.model, model_args,
                                dataclasses.asdict(config), metric, placement=placement)
    say(f"resuming from {last_path} after epoch {resumed[0] - 1}")
    return resumed


def test_mode(config, dataset, runtime, log, autocast, say):
    """--mode test: evaluate a checkpoint once, as its model's family evaluates it."""
    path = config.load_checkpoint_path or Path(config.checkpoint_dir) / "best.pt"
    state = checkpoint.load_checkpoint(path, dataset)
    model = checkpoint.model_from_checkpoint(state, path)
    family = families.family_of(families.kind_of(model))
    if state["config"].get("refit_of") and dataset.validation is not None:  # it trained on them: ranked as such
        say(f"{path}: refit on the training and validation pairs; the test set is evaluated as its run did")
        dataset = dataset.with_validation_trained()
    config = dataclasses.replace(config, model=family.kind)
    family.check(dataset, config)
    metrics = evaluation.timed(family.evaluator(config, dataset, model.to(runtime.device), autocast, runtime))
    log.write("summary", metrics)
    say(metric_line(metrics))
    return 0


def step_of(built, config, runtime, scaler, autocast, placement, family, dataset):
    """The epoch loop's step: the closed-form solve ``build`` made, or gradient epochs over the family's batches."""
    model, _, optimizer, loss = built
    if optimizer is None:
        return loss
    return train.gradient_step(
        train.compiled(placement.distributed(model, runtime), config.compile), optimizer, scaler, loss,
        family.batches(config, dataset, runtime), epochs=config.epochs, autocast=autocast, seed=config.seed,
        rank=runtime.rank, world_size=runtime.world_size, grads_accumulated=config.grads_accumulated,
        learning_rate=train.schedule(config.lr_schedule, config.learning_rate),
        show_bar=runtime.is_main and sys.stderr.isatty())


@dataclasses.dataclass(frozen=True)
class Observer:
    """What a caller of ``run`` (the tuner) watches: ``on_epoch(record)`` after each epoch's record is logged; with
    ``validation_only``, the epochs evaluate the validation set alone (the test items stay unseen)."""

    on_epoch: object = None
    validation_only: bool = False


def fit(family, config, dataset, runtime, built, scaler, autocast, placement, folder, log, say, refit_of=None,
        observer=Observer()):
    """Run the epoch loop on ``built`` (``build``'s model, arguments, optimizer and step) with its family's
    evaluation and selection metric (the best epoch chosen on the validation set when there is one, else on the
    test items); logs, prints and keeps best.pt/last.pt in ``folder``. Returns (the best epoch's dict, whether
    --threshold stopped the run).

    ``refit_of`` (--refit's second run, on the training and validation pairs): the choosing run's best epoch and
    its ``plan`` (``Family.refit_plan``'s epochs). Then the loop runs those epochs and evaluates once, at the last;
    nothing stops it early, and its best.pt replaces any there (the choice was made on validation, not here)."""
    model, model_args, optimizer, _ = built
    chosen_on = family.selection(dataset, config)
    epochs, eval_every, patience, threshold = ((refit_of["epochs"], refit_of["epochs"], None, None) if refit_of else
                                               (config.epochs, config.eval_every, config.early_stop, config.threshold))
    resume = config.resume and (refit_of is None or refit_of.get("resumed", False))
    start_epoch, best = restore(config, folder, model, model_args, optimizer, scaler, dataset, chosen_on.metric,
                                placement, say, resume)
    train.check_ranks_agree(dataclasses.asdict(config), dataset.fingerprint, start_epoch, runtime)
    saving = folder is not None and runtime.is_main
    saved_best = checkpoint.prepare_folder(folder, dataset.fingerprint, config.model, chosen_on.metric) if saving \
        else None
    if refit_of:
        saved_best = None
    kinds = ("refit_config", "refit_epoch") if refit_of else ("config", "epoch")
    log.forget_epochs_from(start_epoch, *kinds)  # those a killed run logged after its last checkpoint
    saved_config = dataclasses.asdict(config) | ({"refit_of": {key: refit_of[key] for key in ("epoch", "metrics",
                                                                                              "epochs", "chosen",
                                                                                              "seconds")}}
                                                 if refit_of else {})
    log.write(kinds[0], saved_config | {
        "num_users": dataset.num_users, "num_items": dataset.num_items, "num_train": dataset.num_train,
        "world_size": runtime.world_size, "device": str(runtime.device)})

    def save(name, record, best):  # (on every rank of a sharded run, whose ranks each write their shards)
        checkpoint.save_checkpoint(folder / name, model, config.model, model_args, optimizer, scaler,
                                   record["epoch"], record, best, saved_config, dataset.fingerprint,
                                   write=saving, placement=placement, ids=ids)

    ids = warm.id_record(dataset) if saving else None

    def on_epoch(record):
        log.write(kinds[1], record)
        say(("refit " if refit_of else "") + epoch_line(record))
        if observer.on_epoch is not None:
            observer.on_epoch(record)
        if threshold is not None and chosen_on.metric in record and chosen_on.reaches(record[chosen_on.metric],
                                                                                      threshold):
            say(f"reached the target {metric_label(chosen_on.metric)} {threshold} in epoch {record['epoch']}; "
                "stopping")

    evaluated = (dataset.without_test() if (config.refit or observer.validation_only) and dataset.validation is not None
                 else dataset)
    evaluate = placement.evaluator(
        model, lambda plain: family.evaluator(config, evaluated, plain, autocast, runtime),
        lambda: checkpoint.build_model(config.model, **model_args).to(runtime.device))
    try:
        return train.loop(
            step_of(built, config, runtime, scaler, autocast, placement, family, dataset), evaluate, chosen_on,
            epochs=epochs, start_epoch=start_epoch, best=best, threshold=threshold, on_epoch=on_epoch,
            save=save if saving or (folder and placement.sharded) else None, saved_best=saved_best,
            patience=patience, eval_every=eval_every)
    except train.NonFiniteLoss as error:
        raise UsageError(f"{error}; lower --learning_rate (now {config.learning_rate:g}); the best checkpoint so far "
                         "is kept") from None


def refit_under_way(config, folder, dataset):
    """The choice a killed --refit run had made (the ``refit_of`` its CHECKPOINT_DIR/last.pt records), when --resume
    finds one: the refit then resumes without choosing again. Else None."""
    last_path = folder / "last.pt" if folder else None
    if not (config.refit and config.resume and last_path and last_path.is_file()):
        return None
    return checkpoint.load_checkpoint(last_path, dataset, for_resume=True)["config"].get("refit_of")


def refit(family, config, dataset, chosen, runtime, scaler, autocast, folder, log, say):
    """--refit's second run: the choice ``chosen`` (the choosing run's best epoch, or a resumed refit's record of
    it) fitted on the training and validation pairs (``dataset`` as loaded, before its family's training data)
    and evaluated on the test set once. Returns (its best, which is its one evaluated epoch, and the choice)."""
    if "epochs" in chosen:  # a refit resumed: its plan is recorded
        refit_config, _, _ = family.refit_plan(config, chosen["epoch"])
        chosen = chosen | {"resumed": True}
    else:
        refit_config, epochs, words = family.refit_plan(config, chosen["epoch"])
        validation = {key: value for key, value in chosen["metrics"].items() if key.startswith("valid_")}
        chosen = {"epoch": chosen["epoch"], "metrics": validation, "epochs": epochs, "chosen": words,
                  "seconds": chosen["elapsed"]}
    trained = family.training_data(dataset.with_validation_trained(), refit_config).to(runtime.device)
    say(f"refit: {chosen['chosen']} (chosen on the validation set), fitted on the {trained.num_train:,} training and "
        "validation pairs; the test set is evaluated once, at its end")
    torch.manual_seed(config.seed)
    placement = placement_for(config.embedding_sharding, config.export_full, config.eval_protocol,
                              table_optimizer=config.table_optimizer, table_lr=config.table_lr,
                              learning_rate=config.learning_rate, device=runtime.device, say=say)
    built = build(family, refit_config, trained, runtime.device, placement, say)
    best, _ = fit(family, refit_config, trained, runtime, built, scaler, autocast, placement, folder, log, say,
                  refit_of=chosen)
    return best, chosen


@warnings_after
def main(argv=None):
    args = parse_args(argv)
    try:
        with train.process_group_teardown():
            return run(args)
    except UsageError as error:
        print(f"ncf.py: error: {error}", file=sys.stderr)
        return 1


def run(args, observer=Observer()):
    """The named steps of a run; ``observer`` (an ``Observer``) watches its epochs."""
    runtime = train.setup_devices(args.device)
    dataset = dataloading.load_dataset_or_demo(args.data)
    config, notes = resolve_config(args, dataset)
    family = families.family_of(config.model)
    raw = dataset  # (--refit trains on it again, with its validation pairs)
    if config.mode == "train":
        dataset = family.training_data(dataset, config)
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
    if config.refit and raw.validation is None:
        raise UsageError(f"--refit fits the epoch or setting chosen on a validation set again, and {raw.path} has "
                         "none; convert the data with --validation, or drop --refit")
    torch.manual_seed(config.seed)
    say(describe_run(config, dataset, runtime, notes, family.describe(config, dataset)))
    placement = placement_for(config.embedding_sharding, config.export_full, config.eval_protocol,
                              table_optimizer=config.table_optimizer, table_lr=config.table_lr,
                              learning_rate=config.learning_rate, device=runtime.device, say=say)
    chosen = refit_under_way(config, folder, raw)
    if chosen is None:
        built = build(family, config, dataset, runtime.device, placement, say)
        best, reached = fit(family, config, dataset, runtime, built, scaler, autocast, placement,
                            folder / "chosen" if folder and config.refit else folder, log, say, observer=observer)
    else:
        say(f"resuming the refit of {chosen['chosen']} (chosen on the validation set)")
        best, reached = chosen, False
    if config.refit:
        best, chosen = refit(family, config, raw, best, runtime, scaler, autocast, folder, log, say)
    record, lines = summary(best, config.topk, reached, dataset.validation is not None,
                            refit=chosen if config.refit else None)
    log.write("summary", record)
    say(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
