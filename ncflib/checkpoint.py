"""Checkpoints: the model registry, atomic save, safe load, and the checks that a checkpoint fits its use.

    model = build_model("neumf", num_users, num_items, factors=64, layers=[256, 256, 128, 64], dropout=0.5)
    save_checkpoint(path, model, "neumf", model_arguments(...), optimizer, scaler, epoch, record, best, config,
                    dataset.fingerprint)
    checkpoint = load_checkpoint(path, dataset)          # refuses another dataset's checkpoint
    model = model_from_checkpoint(checkpoint, path)

A checkpoint describes itself (model kind and constructor arguments, state, optimizer, epoch, best metrics,
configuration and the dataset's fingerprint), so testing or resuming needs nothing else. Files are read with
``torch.load(weights_only=True)``: loading never runs code from the file. Every problem with a file is a
CheckpointError whose message is one line naming it.
"""

import pickle
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from ncflib import families, files
from ncflib.errors import CheckpointError, TaskError
from ncflib.placement import LOCAL

CHECKPOINT_FORMAT = "ncf-checkpoint-v1"

REQUIRED_KEYS = ("model", "model_args", "state_dict", "fingerprint")
RESUME_KEYS = ("optimizer", "scaler", "epoch", "best", "config")


def model_arguments(kind, num_users, num_items, settings):
    """The constructor arguments of a ``kind`` model (a model constructor takes num_users and num_items, then
    hyper-parameters by name): the counts, and from ``settings`` (a mapping such as the configuration) the
    hyper-parameters its constructor names. Lists stay lists, as a checkpoint stores them."""
    return {"num_users": num_users, "num_items": num_items,
            **{name: list(settings[name]) if isinstance(settings[name], tuple) else settings[name]
               for name in families.hyper_parameters(kind) if name in settings}}


def build_model(kind, num_users, num_items, **settings):
    """A fresh ``kind`` model; ``settings`` may hold hyper-parameters of other kinds too, which are ignored."""
    return families.constructor(kind)(**model_arguments(kind, num_users, num_items, settings))


def save_checkpoint(path, model, kind, model_args, optimizer, scaler, epoch, metrics, best, config, fingerprint,
                    write=True, placement=LOCAL, ids=None):
    """Write atomically: a temporary file beside the target, then a rename, so a crash never leaves half a file;
    a failed write (a full disk) removes its temporary file and raises a CheckpointError. The model's
    ``placement`` gives the state to save and writes what the file does not hold (a sharded run's every rank
    writes its shards: then all ranks call this, and only those with ``write`` write the file). ``ids``: what
    ``warm.id_record`` says of the dataset's id maps (so that a warm start can match an extended dataset)."""
    path = Path(path)
    placement.save_shards(model, path, epoch)
    with placement.state_to_save(model, path, write) as state_dict:
        if write:
            _write(path, {
                "format": CHECKPOINT_FORMAT, "model": kind, "model_args": model_args, "state_dict": state_dict,
                "optimizer": {} if optimizer is None else optimizer.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch,
                "metrics": metrics, "best": best, "config": config, "fingerprint": fingerprint,
                **({} if ids is None else {"ids": ids})})


def _write(path, checkpoint):
    with files.atomic_file(path, CheckpointError, "free some space or pass another --checkpoint_dir",
                           what="the checkpoint") as temporary:
        torch.save(checkpoint, temporary)


def load_checkpoint(path, dataset=None, for_resume=False):
    """A checkpoint dict, loaded without executing code; a CheckpointError for a missing, empty, foreign or
    incomplete file, and, given ``dataset``, for a checkpoint trained on another dataset."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged or foreign file
        raise CheckpointError(f"{path}: {unreadable(path, error)}") from None
    damaged = _damaged_entry(path)
    if damaged:
        raise CheckpointError(f"{path}: a damaged checkpoint (its part {damaged} does not match the checksum written "
                              "with it); train again or pass another checkpoint")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint written by this tool")
    missing = [key for key in REQUIRED_KEYS + (RESUME_KEYS if for_resume else ()) if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, without {', '.join(missing)}")
    if not isinstance(checkpoint["model_args"], dict) or checkpoint["model"] not in families.model_kinds():
        raise CheckpointError(f"{path}: holds an unknown model {str(checkpoint['model'])[:40]!r} (this tool knows "
                              f"{', '.join(sorted(families.model_kinds()))})")
    if dataset is not None:
        check_dataset(checkpoint, dataset, path)
    return checkpoint


def _damaged_entry(path):
    """The first part of the zip archive ``path`` whose bytes differ from its recorded CRC-32 (torch reads the parts
    without checking them, so a flipped byte in a tensor loads as a wrong weight), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        return damaged and damaged.partition("/")[2]  # (the first folder is the name the file was written under)
    except (zipfile.BadZipFile, OSError) as error:
        return f"? ({error})"


def unreadable(path, error):
    """Why torch could not load ``path``, in words a user can act on (torch's own first line is often a bare key
    or a paragraph about its defaults)."""
    if path.stat().st_size == 0:
        return "empty (a write cut short?); train again or pass another checkpoint"
    if not zipfile.is_zipfile(path):
        return ("not a checkpoint: PyTorch checkpoints are zip archives and this file is not one (a text file, a "
                "file cut short or an array?); pass a best.pt or last.pt written by ncf.py")
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
        found = re.search(r"GLOBAL (\S+)", str(error))
        return (f"holds {'an object of ' + found.group(1) if found else 'objects'} beside tensors and plain values, "
                "which is never loaded (weights_only: it could run code); pass a best.pt or last.pt written by ncf.py")
    lines = [line for line in str(error).splitlines() if line.strip()]
    detail = f" ({lines[0].strip()})" if len(lines) == 1 and len(lines[0]) <= 100 else ""  # torch's, when it is short
    return f"a damaged checkpoint{detail}; train again or pass another checkpoint"


def check_dataset(checkpoint, dataset, path="checkpoint"):
    """A CheckpointError unless the loaded ``checkpoint`` was trained on ``dataset`` (their fingerprints agree)."""
    if checkpoint["fingerprint"] != dataset.fingerprint:
        args = checkpoint["model_args"]
        raise CheckpointError(f"{path}: trained on another dataset ({args.get('num_users')} users, "
                              f"{args.get('num_items')} items; this one has {dataset.num_users} and "
                              f"{dataset.num_items}); pass the matching --data")


def model_from_checkpoint(checkpoint, path="checkpoint"):
    """The model a loaded checkpoint describes, with its trained weights; a CheckpointError when its arguments or
    weights do not make that model."""
    kind, model_args = checkpoint["model"], checkpoint["model_args"]
    try:
        model = families.constructor(kind)(**model_args)
    except (TypeError, ValueError, TaskError) as error:
        raise CheckpointError(f"{path}: its {kind} arguments {str(model_args)[:80]} are not valid ({error})") \
            from None
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as error:
        summary = " ".join(str(error).split())[:120]
        raise CheckpointError(f"{path}: its weights do not fit a {kind} with {model_args} ({summary})") from None
    return model


def load_model(path, dataset=None, kind=None):
    """The trained model in a checkpoint file (checked against ``dataset``, and to hold a ``kind`` model)."""
    checkpoint = load_checkpoint(path, dataset)
    if kind is not None and checkpoint["model"] != kind:
        raise CheckpointError(f"{path}: holds a {checkpoint['model']} model, expected {kind}")
    return model_from_checkpoint(checkpoint, path)


def initial_model(kind, model_args, dataset, load_path=None):
    """The model a run starts from: fresh, or with the weights of ``load_path`` (a checkpoint of the same model)."""
    model = build_model(kind, **model_args)
    if load_path:
        checkpoint = load_checkpoint(load_path, dataset)
        if not same_model(checkpoint, kind, model_args):
            raise CheckpointError(f"{load_path}: holds a {checkpoint['model']} with {checkpoint['model_args']}, "
                                  "which differs from the flags given")
        model.load_state_dict(checkpoint["state_dict"])
    return model


def same_model(checkpoint, kind, model_args):
    """Whether a loaded checkpoint holds a ``kind`` model built with ``model_args`` (arguments added since it was
    written count at their defaults)."""
    return checkpoint["model"] == kind and (families.with_defaults(kind, checkpoint["model_args"])
                                            == families.with_defaults(kind, model_args))


def resume_fields(config):
    """The settings a run resumed under ``config`` (a mapping) must share with its checkpoint, as ``resume`` takes
    them: (key, flag, value of checkpoints older than the flag, whether it applies); those of every run, then its
    model family's."""
    return [("optimizer", "--optimizer", "adam", True), ("eval_protocol", "--eval_protocol", "sampled", True),
            ("embedding_sharding", "--embedding_sharding", "none", True),
            ("lr_schedule", "--lr_schedule", None, True), ("refit", "--refit", False, True)] + \
        families.family_of(config["model"]).resume_fields(config)


def resume(path, dataset, model, optimizer, scaler, kind, model_args, config, metric, fields=None, placement=LOCAL):
    """Load the state of ``path`` (last.pt) into model (through its ``placement``), optimizer and scaler, after
    ``check_resumable`` of ``fields`` (default ``resume_fields(config)``); returns (the epoch to continue from, the
    run's best so far as ``training.fit`` takes it)."""
    state = load_checkpoint(path, dataset, for_resume=True)
    check_resumable(state, path, kind, model_args, config, resume_fields(config) if fields is None else fields)
    placement.load(model, path, state)
    if optimizer is not None:  # (a model solved in closed form has none)
        optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    best = state["best"]
    return state["epoch"] + 1, {"epoch": best["epoch"], "metrics": best_metrics(best, metric),
                                "seconds": best["seconds"], "elapsed": best.get("elapsed", 0.0)}


def check_resumable(checkpoint, path, kind, model_args, config, fields):
    """Refuse to resume from ``checkpoint`` with settings that differ from those it was trained with.

    ``fields`` lists (configuration key, flag as the user writes it, value a checkpoint without that key was
    trained with (None: not checked), whether it matters for this configuration). The model and its arguments are
    always compared.
    """
    if not same_model(checkpoint, kind, model_args):
        raise CheckpointError(f"{path}: holds a {checkpoint['model']} with {checkpoint['model_args']}, which differs "
                              "from the flags given; resume with the original flags")
    saved_config = checkpoint["config"]
    for key, flag, default, applies in fields:
        saved = saved_config.get(key, default)
        if applies and saved is not None and saved != config[key]:
            shown = format(saved, "g") if isinstance(saved, float) else saved
            raise CheckpointError(f"{path}: was trained with {flag} {shown}; resume with the same")


def best_on_disk(path, fingerprint, kind, metric, warn=None):
    """The ``metric`` value of a best.pt already at ``path`` for this dataset and model kind (None when there is
    none); refuses one of another dataset or model, or a file this tool cannot read, which would be overwritten.
    An empty file (a write cut short) holds nothing: it is reported through ``warn`` and will be replaced."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.stat().st_size == 0:
        (warn or (lambda text: print(text, file=sys.stderr)))(f"warning: {path}: empty; it will be replaced")
        return None
    checkpoint = load_checkpoint(path)
    if checkpoint["fingerprint"] != fingerprint or checkpoint["model"] != kind:
        raise CheckpointError(f"{path}: holds a {checkpoint['model']} model for another dataset or model; pass "
                              "another --checkpoint_dir (or remove it) so it is not overwritten")
    return best_metrics(checkpoint.get("best", {}), metric).get(metric)


def best_metrics(best, metric):
    """The metrics of a checkpoint's best epoch. Checkpoints of earlier versions kept only ``hr`` and ``ndcg``
    under ``best``, for the HR@k and NDCG@k of the run's k: they are read as those."""
    if "metrics" in best:
        return best["metrics"]
    if "hr" in best and metric.startswith("hr@"):
        return {metric: best["hr"], "ndcg@" + metric[3:]: best.get("ndcg", 0.0)}
    return {}


def check_writable(path, flag, folder):
    """Fail before any work when ``path`` (a folder, or a file when not ``folder``) could not be written: a file
    or folder in the way, or a place without write access. Creates nothing."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise CheckpointError(f"{flag} {path}: is a {'file' if folder else 'directory'}; pass another {flag}")
    existing = path if folder and path.exists() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"{flag} {path}: {existing} is a file, so nothing can be written there; pass another "
                              f"{flag}")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise CheckpointError(f"{flag} {path}: cannot write in {existing} ({error.strerror}); pass another {flag}") \
            from None


def output_paths(checkpoint_dir, log_path, training, check=True):
    """(checkpoint folder or None, log file or None) of --checkpoint_dir and --log_path (default
    CHECKPOINT_DIR/log.json), checked writable before any work when ``check`` (the folder only when ``training``);
    nothing is created."""
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    log_file = Path(log_path) if log_path else (folder / "log.json" if folder else None)
    if check and folder and training:
        check_writable(folder, "--checkpoint_dir", folder=True)
    if check and log_file:
        check_writable(log_file, "--log_path" if log_path else "--checkpoint_dir", folder=False)
    return folder, log_file


def prepare_folder(folder, fingerprint, kind, metric):
    """Make --checkpoint_dir, clear dead runs' temporary files, and return the ``metric`` of a best.pt already there
    for this dataset and model (None if none; see ``best_on_disk``)."""
    folder.mkdir(parents=True, exist_ok=True)
    files.remove_stale_temporaries(folder)
    return best_on_disk(folder / "best.pt", fingerprint, kind, metric)
