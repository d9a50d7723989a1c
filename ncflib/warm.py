"""``ncf.py --warm_start CHECKPOINT``: train on an extended dataset (``convert.py --update``) from a checkpoint of the
dataset it extends, its tables grown for the new users and items.

    state = warm.load(path)                                  # the checkpoint, loaded once
    problem = warm.inherit(args, given, state, path, reads)  # the checkpoint's model and settings into the flags
    warm.check_ids(state, dataset, path)                     # its id maps must be a prefix of the dataset's
    epochs, reason = warm.default_epochs(state, dataset, fresh_epochs)
    model, words = warm.grown_model(state, path, kind, model_args)

A checkpoint records the id maps it was trained on (``id_record``: each side's count and a SHA-256 of its original
ids in index order) and its training pairs; a dataset extends it when the digest of its first ids equals the
checkpoint's. The tables are grown by a rule on names and shapes, not a list of models: a tensor whose name names a
side (``user``/``item``) and whose first dimension was that side's count gets the new rows of a fresh model (as the
constructor initialises them); every other tensor is loaded when its shape is unchanged.
"""

import functools
import hashlib
import math
from pathlib import Path

import torch

from ncflib import checkpoint, families
from ncflib.data.layout import read_id_map
from ncflib.errors import CheckpointError

# Flags of the run, not of the model or its training: a warm start takes them from the command line alone.
RUN_FLAGS = {"data", "checkpoint_dir", "load_checkpoint_path", "mode", "log_path", "resume", "device", "local_rank",
             "seed", "epochs", "threshold", "early_stop", "eval_every", "refit", "warm_start", "warm_shrink", "compile",
             "amp", "opt_level", "valid_batch_size", "pretrain_gmf", "pretrain_mlp", "user_embeddings",
             "item_embeddings", "embedding_sharding", "export_full", "table_optimizer", "table_lr", "model",
             "flags_given"}


def _id_digest(path, kind, count):
    """SHA-256 of the first ``count`` ids of the id map ``kind`` of the dataset at ``path`` (None without one)."""
    file = Path(path) / f"{kind}.csv"
    if not file.is_file():
        return None
    return _file_digest(str(file), file.stat().st_mtime_ns, count)


@functools.lru_cache(maxsize=16)
def _file_digest(file, modified, count):  # (``modified``: a rewritten id map is read again)
    ids, _ = read_id_map(Path(file))
    if ids is None or len(ids) < count:
        return None
    return hashlib.sha256("\n".join(ids[:count]).encode()).hexdigest()


def id_record(dataset):
    """What a checkpoint records of the dataset it was trained on, so that a warm start can check that another
    dataset extends it: {side: [count, digest of its original ids]} and the training pairs; None for a dataset
    without id maps (the demo, NVIDIA's layout)."""
    if not dataset.path:
        return None
    record = {}
    for kind, count in (("users", dataset.num_users), ("items", dataset.num_items)):
        digest = _id_digest(str(dataset.path), kind, count)
        if digest is None:
            return None
        record[kind] = [count, digest]
    return record | {"num_train": int(dataset.num_train)}


def load(path):
    """The checkpoint at ``path`` (a CheckpointError in one line when it cannot be read), loaded once while the file
    stays as it is."""
    path = Path(path)
    return _load(str(path), path.stat().st_mtime_ns if path.is_file() else None)


@functools.lru_cache(maxsize=1)
def _load(path, modified):
    return checkpoint.load_checkpoint(path)


def release():
    """Let go of the loaded checkpoint once its weights are in the model (a later ``load`` reads it again), so that
    training does not hold a second copy of its tables."""
    _load.cache_clear()


def inherit(args, given, state, path, reads):
    """Fill ``args`` (ncf.py's flags as parsed) from the checkpoint ``state`` where ``given`` (the flags given
    explicitly) leaves them: its model and constructor arguments, and the flags its run was given (``flags_given``
    of its configuration) that its model reads (``reads(name, kind)``), those of the run (``RUN_FLAGS``) aside; the
    settings its run chose from the data are chosen again from the new data. Records what was given or inherited in
    ``args.flags_given``. Returns a one-line problem (a flag that conflicts with the checkpoint's model) or None."""
    kind, model_args, config = state["model"], state["model_args"], state.get("config", {})
    if "model" in given and args.model != kind:
        return (f"--model {args.model}: --warm_start {path} holds a {kind}, and a warm start trains the checkpoint's "
                f"model; drop --model (or train from scratch)")
    args.model = kind
    inherited = {"model"}
    for name in families.hyper_parameters(kind):
        if name not in model_args or not hasattr(args, name):
            continue
        saved = model_args[name]
        if name in given and _as_saved(getattr(args, name)) != saved and _shapes_differ(kind, model_args, name,
                                                                                           getattr(args, name)):
            return (f"--{name} {_shown(getattr(args, name))}: --warm_start {path} holds a {kind} with {name} "
                    f"{_shown(saved)}, whose weights a warm start keeps; drop --{name} (or train from scratch)")
        if name not in given:
            setattr(args, name, saved)
            inherited.add(name)
    for name in config.get("flags_given", ()):
        if name in RUN_FLAGS or name in given or name not in config or not hasattr(args, name) \
                or not reads(name, kind):
            continue
        setattr(args, name, config[name])
        inherited.add(name)
    args.flags_given = sorted(set(args.flags_given) | inherited)
    return None


def _as_saved(value):
    return list(value) if isinstance(value, tuple) else value


def _shown(value):
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def _shapes_differ(kind, model_args, name, value):
    """Whether a ``kind`` model with ``name`` set to ``value`` has weights of other shapes than the checkpoint's
    (built on the meta device: no memory)."""
    with torch.device("meta"):
        saved = families.constructor(kind)(**model_args).state_dict()
        other = families.constructor(kind)(**(model_args | {name: _as_saved(value)})).state_dict()
    return {key: tensor.shape for key, tensor in saved.items()} != {key: tensor.shape for key, tensor in other.items()}


def check_ids(state, dataset, path):
    """A CheckpointError unless the checkpoint's id maps are a prefix of ``dataset``'s (its users and items keep
    their indices there): the same dataset, or one ``convert.py --update`` extended from it."""
    if state["fingerprint"] == dataset.fingerprint:
        return
    record = state.get("ids")
    if record is None:
        raise CheckpointError(f"--warm_start {path}: records no id maps (trained on a dataset without users.csv and "
                              "items.csv, or by an earlier version), so it cannot be matched to "
                              f"{dataset.path}; train from scratch")
    for kind in ("users", "items"):
        count, digest = record[kind]
        if _id_digest(str(dataset.path), kind, count) != digest:
            have = getattr(dataset, f"num_{kind}")
            raise CheckpointError(
                f"--warm_start {path}: its {count:,} {kind[:-1]} ids are not the first {kind} of {dataset.path} "
                f"({have:,}); pass a checkpoint of the dataset that convert.py --update extended into it")


def new_share(state, dataset):
    """The share of ``dataset``'s training pairs that the checkpoint did not train on (from its recorded count)."""
    trained = (state.get("ids") or {}).get("num_train")
    if trained is None or state["fingerprint"] == dataset.fingerprint:
        return 0.0
    return min(max(1.0 - trained / max(dataset.num_train, 1), 0.0), 1.0)


# The checkpoint's weights are multiplied by SHRINK before a warm start trains on (--warm_shrink), except in a model
# that scores by cosine, where the weights' scale moves no score and shrinking it only lengthens the first steps:
# chosen on validation among 0.3, 0.5, 0.7 and 1 on ML-100k cut by time (GMF), checked on ML-1M (GMF), and for
# cosine scores on ML-100k and Yelp2018 (docs/results.md, "New data: warm start").
SHRINK = 0.5


def shrink_of(given, settings):
    """The factor a warm start multiplies the checkpoint's weights by: ``given`` (--warm_shrink), else 1 for a model
    scoring by cosine (``settings["similarity"]``) and SHRINK for any other."""
    if given is not None:
        return given
    return 1.0 if settings.get("similarity") == "cosine" else SHRINK


# A warm model trains WARM_EPOCH_SHARE of the fresh epochs per unit of new data, at least MIN_WARM_EPOCHS
# (docs/training.md, "New data": measured on ML-100k by time, then checked on ML-1M and Yelp2018).
WARM_EPOCH_SHARE = 2.0
MIN_WARM_EPOCHS = 2


def default_epochs(state, dataset, fresh_epochs):
    """(-e of a warm start where it is not given, the reason in words): fewer than ``fresh_epochs`` (a fresh
    model's), in proportion to the share of new training pairs."""
    share = new_share(state, dataset)
    epochs = min(fresh_epochs, max(MIN_WARM_EPOCHS, math.ceil(WARM_EPOCH_SHARE * share * fresh_epochs)))
    return epochs, (f"warm start: {share:.0%} of the training pairs are new, so {WARM_EPOCH_SHARE:g} x "
                    f"{share:.2f} x the {fresh_epochs} epochs of a fresh model, at least {MIN_WARM_EPOCHS}; set "
                    "with -e")


def _side(name, rows, old_counts):
    """The side ('users' or 'items') whose table ``name`` (with ``rows`` rows) is, or None."""
    leaf = name.rsplit(".", 2)
    words = ".".join(leaf[-2:]).lower()
    for kind, count in old_counts.items():
        if kind[:-1] in words and rows == count:
            return kind
    return None


def grown_model(state, path, kind, model_args, shrink=1.0):
    """(a ``kind`` model built with ``model_args`` (the new dataset's counts) holding every weight of the
    checkpoint ``state`` whose shape still fits, its parameters multiplied by ``shrink`` (buffers, such as a rating
    model's mean, as saved), its user and item tables grown by fresh rows, a line saying what was loaded and
    grown)."""
    model = checkpoint.build_model(kind, **model_args)
    fresh = model.state_dict()
    learned = {name for name, _ in model.named_parameters()}
    old_counts = {"users": state["model_args"]["num_users"], "items": state["model_args"]["num_items"]}
    new_counts = {"users": model_args["num_users"], "items": model_args["num_items"]}
    loaded, grown, left = 0, [], []
    with torch.no_grad():
        for name, old in state["state_dict"].items():
            new = fresh.get(name)
            value = old * shrink if name in learned else old
            if new is None:
                left.append(name)
            elif new.shape == old.shape:
                new.copy_(value)
                loaded += 1
            elif old.dim() and old.shape[1:] == new.shape[1:] and new.shape[0] > old.shape[0] \
                    and _side(name, old.shape[0], old_counts):
                new[:old.shape[0]].copy_(value)
                grown.append(name)
            else:
                left.append(name)
    if left:
        raise CheckpointError(f"--warm_start {path}: its {left[0]} does not fit the {kind} of this dataset; train "
                              "from scratch")
    model.load_state_dict(fresh)
    added = ", ".join(f"{new_counts[kind_] - old_counts[kind_]:,} new {kind_}" for kind_ in ("users", "items"))
    words = (f"warm start from {path}: {loaded + len(grown)} tensors loaded, {len(grown)} of them grown for {added} "
             f"({', '.join(grown) or 'none'}), "
             + (f"its weights multiplied by {shrink:g} (--warm_shrink), " if shrink != 1 else "")
             + "the new rows initialised as a fresh model's; the optimizer starts fresh")
    return model, words
