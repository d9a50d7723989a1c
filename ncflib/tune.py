"""``ncf-tune``: the best model for a dataset, searched on its validation set with Optuna, then refit on the training
and validation pairs and tested once.

    ncf-tune --data data/ml100k-ratio --eval_protocol full -k 20 --trials 40 --jobs 2 --output runs/tune
    python -m ncflib.tune --data data/ml100k-ratio --eval_protocol full --trials 40     # from a clone
    ncf-tune ... --storage postgresql://user:password@host/db                           # a study several machines share

Each trial picks a model (``--models``, by default every model whose family is tuned under the protocol) and that
model's settings from the search space its family declares (``Family.search_space``), then trains it through
ncf.py's own steps with the test items unseen: its epochs evaluate the validation set alone. A model trained by
gradient reports each evaluated epoch, and a median pruner stops trials that trail the others at the same epoch;
a closed form's one evaluation is its trial's value.

The study lives in ``--storage`` (default an SQLite file in ``--output``): a rerun of the same command continues it
to the same ``--trials`` in all. Trials of a worker that died (kill -9 included) stop sending their heartbeat, are
marked failed once it is overdue, and run again with the same settings; finished trials never run again.
``--jobs N`` runs N worker processes on this machine, the CPU threads divided between them.

At the end the best trial's command is rerun with ``--refit`` into ``OUTPUT/best`` (its ``best.pt`` serves
``recommend.py``); ``OUTPUT`` also holds ``command.txt`` (that command), ``trials.csv`` (every trial: model,
settings, validation metric, seconds, state) and the plots ``history.png``, ``importance.png`` and ``seconds.png``.
"""

import argparse
import contextlib
import csv
import io
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

import dataloading
import ncf
from logger import metric_label, read_log
from ncflib import evaluation, families
from ncflib.errors import UsageError, warnings_after

# How often a running trial says it is alive; one silent for 3 of these counts as dead (NCF_TUNE_HEARTBEAT: tests).
HEARTBEAT_SECONDS = float(os.environ.get("NCF_TUNE_HEARTBEAT", "10"))
FINISHED = ("COMPLETE", "PRUNED")  # the trial states that count towards --trials (with failures of their own)
optuna = None  # imported by ``main`` (an optional extra: ncf-tune --help needs none)


def load_optuna():
    """Import Optuna into this module; a UsageError naming the extra when it is not installed."""
    global optuna
    try:
        import optuna as module
    except ImportError:
        raise UsageError("ncf-tune needs Optuna: pip install -r requirements-tune.txt (or pip install "
                         "'ncf[tune]')") from None
    optuna = module
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna's notes on its own API (heartbeats, stale trials and the importance evaluator are "experimental";
    # heartbeats "are supposed to be used with Study.optimize", which this worker loop replaces): nothing to act on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
    warnings.filterwarnings("ignore", "Target and region quantiles select the same set of trials")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="ncf-tune", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset directory from convert.py, with a validation split")
    parser.add_argument("--models", nargs="+", default=None,
                        help="the models tried; default every model tuned under --eval_protocol (implicit: gmf, and "
                             "neumf and mlp under sampled evaluation; ease, rp3beta, gfcf); rating models by name")
    parser.add_argument("--trials", type=int, default=40,
                        help="the study's trials in all (finished or pruned): a rerun continues to this number")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="start no trial after this many seconds of this command")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--output", default="tune", help="folder of the study's files, the refit model and plots")
    parser.add_argument("--storage", default=None,
                        help="the study's database URL (any Optuna takes, e.g. postgresql://...); default "
                             "sqlite:///OUTPUT/study.db")
    parser.add_argument("--study", default=None, help="the study's name; default from the data and protocol")
    parser.add_argument("--eval_protocol", choices=evaluation.PROTOCOLS, default="sampled",
                        help="as ncf.py's: 'full' ranks every item the user has not trained on")
    parser.add_argument("-k", "--topk", type=int, default=10, help="k of the selection metric")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("-s", "--seed", type=int, default=0, help="the sampler's seed and every trial's -s")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # (process N of --jobs)
    args = parser.parse_args(argv)
    for name, low in (("trials", 1), ("jobs", 1), ("topk", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be at least {low}, got {getattr(args, name)}")
    if args.timeout is not None and not args.timeout > 0:
        parser.error(f"--timeout must be positive, got {args.timeout:g}")
    return args


# ------------------------------------------------------------------------------------------------ the study


def study_of(args, output):
    """(its storage, with heartbeats; the Optuna study of this search, created or loaded to continue)."""
    url = args.storage or f"sqlite:///{(output / 'study.db').resolve()}"
    options = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(
        url, engine_kwargs=options, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=3 * HEARTBEAT_SECONDS,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
    name = args.study or f"{Path(args.data).resolve().name}-{args.eval_protocol}-k{args.topk}"
    direction = "maximize"  # (ranking metrics; the rating models' RMSE is stored negated, see ``objective``)
    return storage, optuna.create_study(
        study_name=name, storage=storage, direction=direction, load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=args.seed + 7919 * (args.worker or 0), n_startup_trials=8),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1))


def chosen_models(args, dataset, quiet=False):
    """The models to try: --models, else those whose family is tuned by default under the protocol; each checked
    against the data (a model that cannot run on it, EASE beyond this machine's memory say, is left out with a
    note). A UsageError when none is left, or when ranking and rating models are mixed."""
    kinds = args.models or [kind for kind in families.model_kinds()
                            if families.family_of(kind).tuned_by_default(args.eval_protocol)]
    unknown = [kind for kind in kinds if kind not in families.model_kinds()]
    if unknown:
        raise UsageError(f"--models {unknown[0]}: not a model; this tool knows {', '.join(families.model_kinds())}")
    metrics, kept = {}, []
    for kind in kinds:
        base = ncf.parse_args(["--data", args.data, "--model", kind, *protocol_flags(args, kind)])
        family = families.family_of(kind)
        try:
            family.check(dataset, base)
        except Exception as error:  # noqa: BLE001 - a family's refusal, whatever its kind: the model is left out
            if not quiet:
                print(f"{kind}: left out ({error})", file=sys.stderr)
            continue
        metrics[kind] = family.selection(dataset, base)
        kept.append(kind)
    if not kept:
        raise UsageError("no model of --models can run on this dataset; see the notes above")
    if len({selection.higher_is_better for selection in metrics.values()}) > 1:
        raise UsageError("--models mixes ranking models and rating models, whose metrics cannot be compared; tune "
                         "them in two studies")
    return kept, next(iter(metrics.values()))


def protocol_flags(args, kind):
    """The protocol flags of ncf.py that a ``kind`` model reads."""
    ranks = families.ranks_items(families.constructor(kind))
    return (["--eval_protocol", args.eval_protocol, "-k", str(args.topk)] if ranks else []) + \
        ["--device", args.device, "-s", str(args.seed)]


def trial_command(args, kind, flags):
    """ncf.py's flags for a trial of ``kind`` with its family's ``flags``."""
    return ["--data", args.data, "--model", kind, *protocol_flags(args, kind), *flags]


def objective(trial, args, kinds, selection, output):
    """Train one trial's model on the training pairs, its epochs evaluated on the validation set alone; its value
    is the best epoch's validation metric (negated RMSE for the rating models)."""
    kind = trial.suggest_categorical("model", kinds)
    flags = families.family_of(kind).search_space(trial, args.eval_protocol, args.timed)
    command = trial_command(args, kind, flags)
    trial.set_user_attr("command", shlex.join(command))
    sign = 1.0 if selection.higher_is_better else -1.0
    gradient = families.trained_by_gradient(families.constructor(kind))
    folder = output / "trials"
    folder.mkdir(exist_ok=True)
    log = folder / f"{trial.number}.json"
    log.unlink(missing_ok=True)  # (a retried trial's earlier attempt)

    def on_epoch(record):
        if gradient and selection.metric in record:  # (a closed form's one figure is the trial's value)
            trial.report(sign * record[selection.metric], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

    with contextlib.redirect_stderr(io.StringIO()) as refused:
        try:
            args_of_run = ncf.parse_args([*command, "--checkpoint_dir", "", "--log_path", str(log)])
        except SystemExit:  # (a setting the model's flags refuse: the trial fails, the search goes on)
            raise RuntimeError((refused.getvalue().strip().splitlines() or ["ncf.py refused the flags"])[-1]) \
                from None
    with open(folder / f"{trial.number}.txt", "w") as sink, contextlib.redirect_stdout(sink):
        status = ncf.run(args_of_run, ncf.Observer(on_epoch, validation_only=True))
    if status:
        raise RuntimeError(f"ncf.py exited with {status}")
    summary = next(record for record in reversed(read_log(log)) if record["type"] == "summary")
    return sign * summary["best_metrics"][selection.metric]


def heartbeat(storage, trial_id, stop):
    """Record ``trial_id``'s heartbeat every HEARTBEAT_SECONDS until ``stop`` is set."""
    while not stop.wait(HEARTBEAT_SECONDS):
        with contextlib.suppress(Exception):  # (a busy database: the next beat is in time)
            storage.record_heartbeat(trial_id)


@contextlib.contextmanager
def machine_lock(output):
    """One worker of this machine at a time between counting the study's trials and starting one, so that the
    workers of one --output never start more than --trials."""
    import fcntl

    with open(output / ".tune.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def counts(study):
    """(trials finished: complete, pruned, or failed by their own error; trials running or waiting; whether one
    waits: a dead worker's trial queued again)."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(trial.state.name in FINISHED or (trial.state == optuna.trial.TrialState.FAIL
                                                and "error" in trial.user_attrs) for trial in trials)
    waiting = sum(trial.state == optuna.trial.TrialState.WAITING for trial in trials)
    running = sum(trial.state == optuna.trial.TrialState.RUNNING for trial in trials)
    return finished, running + waiting, waiting > 0


def work(args, output, deadline, say, quiet=False):
    """One worker: trials until the study holds --trials finished ones (or the deadline passes); ``say`` gets a
    line per finished trial."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    dataset = dataloading.load_dataset(args.data)
    kinds, selection = chosen_models(args, dataset, quiet=quiet or args.worker is not None)
    storage, study = study_of(args, output)
    study_id = storage.get_study_id_from_name(study.study_name)
    while True:
        with machine_lock(output):
            optuna.storages.fail_stale_trials(study)  # (a dead worker's trials: failed, then queued again)
            finished, pending, waiting = counts(study)
            if finished >= args.trials or (deadline is not None and time.time() > deadline):
                return
            trial = study.ask() if finished + pending < args.trials or waiting else None
        if trial is None:  # the last trials are running elsewhere: wait for them (or for them to be found dead)
            time.sleep(min(HEARTBEAT_SECONDS, 2.0))
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.record_heartbeat(trial_id)  # (at once: a worker killed before its next beat is found dead too)
        stop = threading.Event()
        threading.Thread(target=heartbeat, args=(storage, trial_id, stop), daemon=True).start()
        started = time.perf_counter()
        try:
            value, state = objective(trial, args, kinds, selection, output), optuna.trial.TrialState.COMPLETE
        except optuna.TrialPruned:
            value, state = None, optuna.trial.TrialState.PRUNED
        except Exception as error:  # noqa: BLE001 - a trial's failure is recorded, and the search goes on
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:300])
            value, state = None, optuna.trial.TrialState.FAIL
        finally:
            stop.set()
        seconds = time.perf_counter() - started
        trial.set_user_attr("seconds", round(seconds, 1))
        study.tell(trial, value, state=state)
        shown = "" if value is None else f" validation {label(selection.metric)} {abs(value):.4f}"
        say(f"trial {trial.number} {trial.params.get('model', '?')}: {state.name.lower()}{shown} in {seconds:.0f} s"
            + (f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""))


# ------------------------------------------------------------------------------------------------ the end


def label(metric):
    """A selection metric as printed after "validation": ``valid_recall@20`` -> ``Recall@20``."""
    return metric_label(metric.removeprefix("valid_"))


def best_trial(study):
    complete = [trial for trial in study.get_trials(deepcopy=False) if trial.state == optuna.trial.TrialState.COMPLETE]
    return max(complete, key=lambda trial: trial.value) if complete else None


def refit_best(args, output, study, say):
    """Rerun the best trial's command with --refit into OUTPUT/best (unless done already for that trial); write
    command.txt. Returns the refit's summary record."""
    best = best_trial(study)
    if best is None:
        raise UsageError("no trial finished; see OUTPUT/trials/ for their output")
    command = shlex.split(best.user_attrs["command"]) + ["--refit", "--checkpoint_dir", str(output / "best")]
    (output / "command.txt").write_text("python ncf.py " + shlex.join(command) + "\n")
    done = output / "best" / "trial.txt"
    if done.is_file() and done.read_text().strip() == str(best.number):
        say(f"the refit of trial {best.number} is done already ({output / 'best'})")
    else:
        say(f"refitting trial {best.number} ({best.params['model']}) on the training and validation pairs")
        shutil.rmtree(output / "best", ignore_errors=True)  # (an earlier best trial's refit)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            status = ncf.run(ncf.parse_args(command))
        (output / "best.txt").write_text(buffer.getvalue())
        if status:
            raise UsageError(f"the refit of trial {best.number} failed; see {output / 'best.txt'}")
        done.write_text(f"{best.number}\n")
    return next(record for record in reversed(read_log(output / "best" / "log.json")) if record["type"] == "summary")


def write_table(study, path, metric):
    """trials.csv: one row per trial."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", "model", "settings", f"validation {label(metric)}", "seconds",
                         "error"])
        for trial in study.get_trials(deepcopy=False):
            settings = " ".join(f"{name.partition('.')[2]}={value:.4g}" if isinstance(value, float) else
                                f"{name.partition('.')[2]}={value}" for name, value in trial.params.items()
                                if name != "model")
            writer.writerow([trial.number, trial.state.name.lower(), trial.params.get("model", ""), settings,
                             "" if trial.value is None else f"{abs(trial.value):.6f}",
                             trial.user_attrs.get("seconds", ""), trial.user_attrs.get("error", "")])


def draw_plots(study, output, metric):
    """history.png (each trial's validation figure and the best so far), importance.png (each family's settings
    by their importance, by Optuna's default evaluator over its finished trials) and seconds.png (validation
    figure against seconds, per family)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = [trial for trial in study.get_trials(deepcopy=False) if trial.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return []
    shown = f"validation {label(metric)}"
    figure, axes = plt.subplots(figsize=(7, 4))
    numbers, values = [trial.number for trial in complete], [abs(trial.value) for trial in complete]
    axes.scatter(numbers, values, s=14, label="trial")
    best = [max(trial.value for trial in complete if trial.number <= number) for number in numbers]
    axes.step(numbers, [abs(value) for value in best], where="post", color="C3", label="best so far")
    axes.set(xlabel="trial", ylabel=shown, title="optimisation history")
    axes.legend()
    figure.tight_layout()
    figure.savefig(output / "history.png", dpi=110)
    plt.close(figure)

    models = sorted({trial.params["model"] for trial in complete})
    figure, axes = plt.subplots(figsize=(7, 4))
    for model in models:
        chosen = [trial for trial in complete if trial.params["model"] == model]
        axes.scatter([trial.user_attrs.get("seconds", math.nan) for trial in chosen],
                     [abs(trial.value) for trial in chosen], s=16, label=model)
    axes.set(xlabel="seconds a trial", ylabel=shown, title="validation figure against time, by model")
    axes.legend()
    figure.tight_layout()
    figure.savefig(output / "seconds.png", dpi=110)
    plt.close(figure)

    importances = {}
    for model in models:
        chosen = [trial for trial in complete if trial.params["model"] == model]
        names = {name for trial in chosen for name in trial.params if name != "model"}
        if len(chosen) < 3 or not names:
            continue
        sub = optuna.create_study(direction="maximize")
        sub.add_trials(chosen)
        with contextlib.suppress(Exception):  # (too few distinct settings to split on)
            importances |= {name: value for name, value in optuna.importance.get_param_importances(
                sub, params=sorted(names)).items()}
    if importances:
        figure, axes = plt.subplots(figsize=(7, 0.4 * len(importances) + 1.5))
        names = sorted(importances, key=importances.get)
        axes.barh(names, [importances[name] for name in names])
        axes.set(xlabel="importance (Optuna's evaluator, within each model's trials)",
                 title="settings by importance")
        figure.tight_layout()
        figure.savefig(output / "importance.png", dpi=110)
        plt.close(figure)
    return [name for name in ("history.png", "seconds.png", "importance.png") if (output / name).is_file()]


# ------------------------------------------------------------------------------------------------ the command


@warnings_after
def main(argv=None):
    args = parse_args(argv)
    try:
        load_optuna()
        return tune(args)
    except (UsageError, dataloading.DatasetError) as error:
        print(f"ncf-tune: error: {error}", file=sys.stderr)
        return 1


def tune(args):
    started = time.time()
    deadline = started + args.timeout if args.timeout else None
    output = Path(args.output)
    dataset = dataloading.load_dataset(args.data)
    if dataset.validation is None:
        raise UsageError(f"--data {args.data}: has no validation split, and trials are chosen on one (never on the "
                         "test items); convert it with --validation")
    times = dataset.train_timestamps
    args.timed = times is not None and times.size > 0 and times.min() != times.max()  # (--recency has a use)
    say = print
    if args.worker is not None:
        output.mkdir(parents=True, exist_ok=True)
        work(args, output, deadline, say)
        return 0
    kinds, selection = chosen_models(args, dataset)
    output.mkdir(parents=True, exist_ok=True)
    _, study = study_of(args, output)
    finished, _, _ = counts(study)
    say(f"study {study.study_name} ({args.storage or output / 'study.db'}): {finished} of {args.trials} trials "
        f"finished; models {', '.join(kinds)}; chosen on the validation {label(selection.metric)}")
    if args.jobs == 1:
        with tqdm(total=args.trials, initial=min(finished, args.trials), desc="trials", unit="trial",
                  disable=not sys.stderr.isatty()) as bar:
            work(args, output, deadline, lambda line: (bar.write(line), bar.update()), quiet=True)
    else:
        command = [sys.executable, "-m", "ncflib.tune", *worker_flags(args)]
        threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
        root = Path(__file__).resolve().parents[1]
        environment = dict(os.environ, OMP_NUM_THREADS=threads,
                           PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
        workers = [subprocess.Popen([*command, "--worker", str(index)], env=environment) for index in range(args.jobs)]
        with tqdm(total=args.trials, initial=min(finished, args.trials), desc="trials", unit="trial",
                  disable=not sys.stderr.isatty()) as bar:
            while any(worker.poll() is None for worker in workers):
                time.sleep(1.0)
                bar.update(min(counts(study)[0], args.trials) - bar.n)
        failed = [worker.returncode for worker in workers if worker.returncode]
        if failed:
            raise UsageError(f"a worker process exited with {failed[0]}; see its output above")
    _, study = study_of(args, output)
    write_table(study, output / "trials.csv", selection.metric)
    plots = draw_plots(study, output, selection.metric)
    summary = refit_best(args, output, study, say)
    best = best_trial(study)
    say(f"best: trial {best.number}, {best.params['model']} (validation {label(selection.metric)} "
        f"{abs(best.value):.4f}); refit on training and validation: test "
        + "  ".join(f"{metric_label(key)} {value:.4f}" for key, value in summary["best_metrics"].items()))
    say(f"{output / 'best' / 'best.pt'} serves recommend.py; the command is in {output / 'command.txt'}; every trial "
        f"in {output / 'trials.csv'}; plots: {', '.join(plots) or 'none'}")
    return 0


def worker_flags(args):
    """The command line of a --jobs worker: this search's flags, absolute paths."""
    flags = ["--data", str(Path(args.data).resolve()), "--trials", str(args.trials), "--jobs", str(args.jobs),
             "--output", str(Path(args.output).resolve()), "--eval_protocol", args.eval_protocol, "-k",
             str(args.topk), "--device", args.device, "-s", str(args.seed)]
    for name in ("timeout", "storage", "study"):
        if getattr(args, name) is not None:
            flags += [f"--{name}", str(getattr(args, name))]
    return flags + (["--models", *args.models] if args.models else [])


if __name__ == "__main__":
    sys.exit(main())
