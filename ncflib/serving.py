"""recommend.py's tasks: what a trained model is put to, each a ``Task`` record (the flag that asks for it, what the
model must offer, the function, and the message when it cannot), tried in the order of ``TASKS``.

What a model offers is read from the protocols its class implements (``ncflib.protocols``), never from its family
or its name: a model that ranks every item gets top-k lists and predictions, one with item vectors similar items
and plots, and so on. ``served`` (a ``Served``) is the loaded checkpoint: model, family, dataset and catalogues.

    task = asked_task(args)                       # the first TASKS record whose flag is given, else top-k
    problem = task_problem(task, served)          # None, or why this model cannot do it
    task.run(args, served)
"""

import contextlib
import io
import itertools
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ncflib import evaluation, files
from ncflib.errors import UsageError
from ncflib.protocols import (
    ExportsArrays,
    FastRanker,
    HasItemBiases,
    HasItemVectors,
    HasItemWords,
    HasUserRows,
    RanksAllItems,
    ScoresHistory,
    traits,
)

# Fold-in settings, chosen on ML-100k with bench/fold_in_bench.py (100 training users folded in from their own
# training items; docs/recommend.md): without the L2 pull more steps drift away from the trained user (GMF shared
# 5.0 of its top 10 after 300 steps); NeuMF came closest with its own objective (branch losses), its dropout on
# and every item as a weighted negative (7.71 of 10, against at most 6.94 in eval mode with sampled negatives).
FOLD_IN_STEPS, FOLD_IN_LEARNING_RATE, FOLD_IN_NEGATIVES, FOLD_IN_L2 = 50, 0.05, 4, 20.0
FOLD_IN_EVERY_ITEM = 2**16  # up to this many items a fold-in step weighs every item, not a sample
OUTPUT_FORMATS = (".parquet", ".csv", ".jsonl")


@dataclass(frozen=True)
class Served:
    """A loaded checkpoint as the tasks use it."""

    model: torch.nn.Module
    kind: str
    family: object  # the model's family, bound to it (``families.family_of``)
    checkpoint: dict
    dataset: object
    device: torch.device
    autocast: object
    users: object  # Catalogue of the users
    items: object  # Catalogue of the items


# ------------------------------------------------------------------------------------------------ names <-> indices


class Catalogue:
    """Original ids (and titles) of one kind, users or items, by contiguous index, and the way back from a name."""

    def __init__(self, kind, count, ids=None, titles=None, source="the dataset"):
        self.kind, self.source = kind, source
        self.ids = ids if ids is not None else [str(index) for index in range(count)]
        self.titles = titles
        self.index_of = {original: index for index, original in enumerate(self.ids)}

    def __len__(self):
        return len(self.ids)

    def title(self, index):
        return self.titles[index] if self.titles else None

    def label(self, index):
        title = self.title(index)
        return f"{self.ids[index]} ({title})" if title else self.ids[index]

    def user(self, name):
        """The index of a user by original id; a UsageError naming it otherwise."""
        if name in self.index_of:
            return self.index_of[name]
        raise UsageError(f"user {name!r} is not in {self.source} ({len(self):,} users); for someone who was not "
                         "in training, pass the items they interacted with as --history")

    def item(self, name):
        """The index of an item by original id, else by title: an exact title (any case), else the one title that
        contains ``name``. A UsageError when none matches, or several do (listing them)."""
        if name in self.index_of:
            return self.index_of[name]
        if not self.titles:
            raise UsageError(f"item {name!r} is not in {self.source} ({len(self):,} items; it has no titles, so "
                             "items are named by their original ids)")
        wanted = name.casefold()
        exact = [index for index, title in enumerate(self.titles) if title.casefold() == wanted]
        matches = exact or [index for index, title in enumerate(self.titles) if wanted in title.casefold()]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UsageError(f"item {name!r} is neither an item id nor part of a title in {self.source}; check the "
                             "spelling, or pass the item's id")
        listed = "; ".join(self.label(index) for index in matches[:8])
        more = f" and {len(matches) - 8} more" if len(matches) > 8 else ""
        raise UsageError(f"item {name!r} matches {len(matches)} titles: {listed}{more}; pass one of their ids or "
                         "a longer part of the title")


def catalogues(dataset):
    """(users, items) Catalogues of a dataset: convert.py's id maps, or the indices themselves without them."""
    source = dataset.path
    user_ids, _ = dataset.original_ids("users") if dataset.path != "demo" else (None, None)
    item_ids, titles = dataset.original_ids("items") if dataset.path != "demo" else (None, None)
    return (Catalogue("users", dataset.num_users, user_ids, None, source),
            Catalogue("items", dataset.num_items, item_ids, titles, source))


def read_names(file, header):
    """The non-blank lines of a text file (the first field of each, for CSV rows), without a ``header`` line; a
    UsageError naming the file when it cannot be read."""
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{file}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    names = [(number, line.split(",")[0].strip().strip('"')) for number, line in enumerate(lines, 1) if line.strip()]
    if names and names[0][1] == header:
        names = names[1:]
    if not names:
        raise UsageError(f"{file}: no ids in it; put one per line")
    return names


def resolve_in_file(file, names, resolve):
    """Indices of ``names`` ((line, name) pairs of ``file``) by ``resolve``, an error naming the line otherwise."""
    indices = []
    for number, name in names:
        try:
            indices.append(resolve(name))
        except UsageError as error:
            raise UsageError(f"{file}, line {number}: {error}") from None
    return indices


# ------------------------------------------------------------------------------------------------ ranking


def known_interactions(dataset, device):
    """Every (user, item) pair of the dataset, training and held out, as ``evaluation.interactions_by_user``: the
    items a user has already seen."""
    users, items = [dataset.train_users], [dataset.train_items]
    for held in (dataset.test, dataset.validation):
        if held is not None:
            users.append(torch.repeat_interleave(held.users, held.offsets.diff()))
            items.append(held.items)
    offsets, flat = evaluation.interactions_by_user(torch.cat(users), torch.cat(items), dataset.num_users)
    return offsets.to(device), flat.to(device)


def top_items(model, users, num_items, topk, seen, autocast, device, progress=False):
    """Yields (users [B], scores [B, k], items [B, k]) chunk by chunk: each user's best k of the ``num_items``,
    best first, without the items in ``seen`` (an ``interactions_by_user`` pair, or None); an excluded item carries
    the score -inf (when a user has fewer than k candidates left)."""
    chunk = evaluation.users_per_full_chunk(num_items, device, model=model)
    with torch.no_grad(), autocast():
        score = evaluation.all_item_scorer(model)
    for start in tqdm(range(0, users.numel(), chunk), desc="scoring users", unit="chunk", disable=not progress,
                      file=sys.stderr):
        batch = users[start:start + chunk].to(device)
        with torch.no_grad(), autocast():
            scores = score(batch).float()
        if seen is not None:
            evaluation.exclude_seen(scores, batch, seen)
        best_scores, best_items = evaluation.top_k(scores, topk)
        yield batch.cpu(), best_scores.cpu(), best_items.cpu()


def similar_items(model, items, topk):
    """(similarities [Q, k], items [Q, k], how they were compared) of the items nearest to each of ``items`` [Q],
    the item itself left out: by cosine similarity of the model's item vectors (the mean cosine over them when it
    has several), or, for a model without them that scores from items alone (RP3beta's and GF-CF's item-item
    weights), by the scores it gives a user who has that one item."""
    if not isinstance(model, HasItemVectors):
        with torch.no_grad():
            similarity = torch.stack([model.score_history(item[None]).float() for item in items])
        how = "the scores of a user who has that one item"
    else:
        vectors = model.item_vectors()
        similarity = sum(torch.nn.functional.normalize(table.float(), dim=1)[items] @
                         torch.nn.functional.normalize(table.float(), dim=1).T for table in vectors.values())
        similarity = similarity / len(vectors)
        how = "cosine similarity of " + " and ".join(vectors)
    similarity[torch.arange(len(items)), items] = -math.inf
    best, nearest = evaluation.top_k(similarity, topk)
    return best, nearest, how


class _WithRows:
    """Calls ``model`` with some of its parameters replaced (``torch.func.functional_call``): a new user's rows."""

    def __init__(self, model, rows):
        self.model, self.rows = model, rows

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self.model, self.rows, args, kwargs)


def fold_in(model, history, num_items, steps, learning_rate, negatives, seed, l2=FOLD_IN_L2, loss=None):
    """The score of every item [num_items] for a user who interacted with ``history`` (item indices) and was not
    in training: a new row for each of the model's user tables (``user_parameter_names``), started at the mean
    user and fitted by Adam for ``steps`` steps, every other weight as trained.

    Each step minimises the loss the model was trained with (``loss``: (loss function, layout) from its family's
    ``fold_in_loss``; by default the model's own ``training_loss()`` over 'pairs') in training mode (its dropout on,
    as when the users were trained), plus ``l2`` / 2 times the squared distance of the rows from the mean user's.
    The history items are the positives. Layout 'pairs' (a label per pair, BCE's) and 'shared' (one set of
    negatives for every positive): on catalogues of up to ``FOLD_IN_EVERY_ITEM`` items the negatives are every
    other item (for 'pairs' each weighted so that together they count ``negatives`` per history item: the
    expectation of the sampled negatives, without their noise); larger ones draw them anew each step. Layout
    'blocks' (each positive's own negatives): ``negatives`` drawn per history item each step. Deterministic given
    ``seed``; leaves the model's weights, modes and random state as they were."""
    device = history.device
    parameters = dict(model.named_parameters())
    start = {name: parameters[name].detach().mean(0, keepdim=True) for name in model.user_parameter_names()}
    rows = {name: row.clone().requires_grad_() for name, row in start.items()}
    optimizer = torch.optim.Adam(rows.values(), lr=learning_rate)
    others = torch.ones(num_items, dtype=torch.bool, device=device)
    others[history] = False
    candidates = others.nonzero().squeeze(1)
    loss_function, layout = loss or (model.training_loss(), "pairs")
    every_item = len(candidates) <= FOLD_IN_EVERY_ITEM and layout != "blocks"
    count = len(candidates) if every_item else len(history) * negatives
    inputs = _fold_in_inputs(layout, history, count, every_item, negatives)
    scorer = _WithRows(model, rows)
    trained, was_training = [parameter.requires_grad for parameter in parameters.values()], model.training
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        model.requires_grad_(False).train()  # the trained weights are constants here: no gradient is computed
        try:
            for _ in range(steps):
                drawn = candidates if every_item else torch.sort(candidates[torch.randint(
                    len(candidates), (count,), device=device, generator=generator)])[0]
                _, value = loss_function(scorer, inputs(drawn), contextlib.nullcontext)  # (reported, minimised)
                if l2:
                    value = value + l2 / 2 * sum(((rows[name] - start[name]) ** 2).sum() for name in rows)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
        finally:
            model.train(was_training)
            for parameter, flag in zip(parameters.values(), trained):
                parameter.requires_grad_(flag)
    with torch.no_grad():
        model.eval()
        every = torch.arange(num_items, device=device)
        scores = scorer(torch.zeros_like(every), every).float()
        model.train(was_training)
    return scores


def _fold_in_inputs(layout, history, count, every_item, negatives):
    """A function drawn negatives -> the inputs of a loss function of ``layout`` for one new user (index 0)."""
    device, size = history.device, len(history)
    if layout == "shared":  # (users [B], positives [B], shared negatives [N], log q, weights): dataloading's
        return lambda drawn: (torch.zeros(size, dtype=torch.long, device=device), history, drawn, None, None)
    if layout == "blocks":  # the positives, then ``negatives`` rounds of one negative per positive
        users = torch.zeros(size * (1 + negatives), dtype=torch.long, device=device)
        labels = torch.cat([torch.ones(size, device=device), torch.zeros(size * negatives, device=device)])
        return lambda drawn: (users, torch.cat([history, drawn[torch.randperm(len(drawn), device=device)]]), labels,
                              None, 1 + negatives)
    labels = torch.cat([torch.ones(size, device=device), torch.zeros(count, device=device)])
    weights = None if not every_item else torch.cat([torch.ones(size, device=device),
                                                     torch.full((count,), size * negatives / count, device=device)])
    users = torch.zeros(size + count, dtype=torch.long, device=device)
    return lambda drawn: (users, torch.cat([history, drawn]), labels, weights)


# ------------------------------------------------------------------------------------------------ output


def write_table(path, columns):
    """Write ``columns`` (name -> equal-length list or array) to ``path`` (.parquet, .csv, .jsonl) atomically."""
    import pandas as pd  # only writing a file needs pandas

    path, frame = Path(path), pd.DataFrame(columns)
    with files.atomic_file(path, UsageError, "pass another --output") as temporary:
        if path.suffix.lower() == ".parquet":
            frame.to_parquet(temporary, index=False)
        elif path.suffix.lower() == ".csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_json(temporary, orient="records", lines=True, force_ascii=False)


def check_writable(path, force=False, flag="--output"):
    """A UsageError, before any work, when ``path`` cannot or must not be written: a missing folder, a folder in
    its place, no permission, an existing file without ``force``. Removes the temporary files that runs killed
    while writing ``path`` left beside it."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; pass a file name with {flag}")
    if not folder.is_dir():
        raise UsageError(f"{path}: the folder {folder} does not exist; create it or pass another {flag}")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{path}: not writable here; pass another {flag}")
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; pass --force to replace it, or another {flag}")
    files.remove_stale_temporaries(folder, path.name)


def print_list(heading, rows, columns):
    """A heading and an aligned table of ``rows`` (tuples in the order of ``columns``)."""
    print(heading)
    cells = [columns] + [tuple("" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
                               for value in row) for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(columns))]
    for row in cells:
        print("  ".join(cell.rjust(width) if column < len(columns) - 1 else cell
                        for column, (cell, width) in enumerate(zip(row, widths))).rstrip())


def print_ranked(heading, rows, items_catalogue, value="score"):
    """``print_list`` of ``ranked_rows``-style rows: rank, item id, ``value``, and the title when there are titles."""
    print_list(heading, rows, ("rank", "item_id", value) + (("title",) if items_catalogue.titles else ()))


def ranked_rows(items_catalogue, scores, items):
    """(rank, item id, score, title) rows of one ranked list, the -inf (excluded) tail dropped."""
    rows = []
    for rank, (score, item) in enumerate(zip(scores.tolist(), items.tolist()), 1):
        if score == -math.inf:
            break
        rows.append((rank, items_catalogue.ids[item], score, items_catalogue.title(item)))
    return rows


def table_columns(owners, scores, items, items_catalogue, owner="user_id", value="score"):
    """Output-file columns of ranked lists: ``owners`` [N] (their ids), ``scores`` and ``items`` [N, k] (item
    indices) as ``top_items`` gives them; entries scoring -inf (excluded) are left out."""
    scores, items = scores.numpy(), items.numpy()
    kept = scores > -np.inf
    item_ids = np.asarray(items_catalogue.ids, dtype=object)
    columns = {owner: np.repeat(np.asarray(owners, dtype=object), kept.sum(1)),
               "rank": np.broadcast_to(np.arange(1, scores.shape[1] + 1), scores.shape)[kept],
               "item_id": item_ids[items[kept]], value: scores[kept]}
    if items_catalogue.titles:
        columns["title"] = np.asarray(items_catalogue.titles, dtype=object)[items[kept]]
    return columns


# ------------------------------------------------------------------------------------------------ export


def export_arrays(model):
    """{file stem: tensor} of what ``--export`` writes: the model's own choice (``ExportsArrays``), else each of its
    embedding tables, its output layer and its buffers (a rating model's global mean, a closed form's solution)."""
    if isinstance(model, ExportsArrays):
        return model.export_arrays()
    arrays = {name.replace(".", "_"): module.weight for name, module in model.named_modules()
              if isinstance(module, torch.nn.Embedding)}
    buffers = dict(model.named_buffers())
    for name, tensor in itertools.chain(model.named_parameters(), buffers.items()):
        if name.startswith("output.") or name in buffers:
            arrays[name.replace(".", "_")] = tensor
    return arrays


def export(model, kind, model_args, users, items, folder, onnx):
    """Write ``folder`` (new, or empty) whole or not at all: the arrays the model exports (``export_arrays``) as
    .npy, users.csv and items.csv, model.onnx when ``onnx``, and export.json describing them. Returns the
    description and the largest difference between the ONNX model's scores and PyTorch's (None without
    onnxruntime)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder}: exists and is not an empty folder; pass a new folder to --export")
    if not folder.parent.is_dir() or not os.access(folder.parent, os.W_OK):
        raise UsageError(f"{folder}: cannot create it in {folder.parent}; pass another --export folder")
    if onnx:
        _check_onnx_packages()
    with files.atomic_folder(folder, "--export") as staging:
        written = {}
        for stem, tensor in export_arrays(model).items():
            np.save(staging / f"{stem}.npy", tensor.detach().cpu().numpy(), allow_pickle=False)
            written[f"{stem}.npy"] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        for catalogue, file in ((users, "users.csv"), (items, "items.csv")):
            _write_id_map(staging / file, catalogue)
        difference = _export_onnx(model, staging / "model.onnx", len(users), len(items)) if onnx else None
        description = {"model": kind, "model_args": model_args, "files": written,
                       "onnx": "model.onnx: inputs user and item (int64 [N], indices as in users.csv and "
                               "items.csv), output " + OUTPUTS[traits(model).output] if onnx else None,
                       "score": traits(model).formula}
        (staging / "export.json").write_text(json.dumps(description, indent=2) + "\n")
    return description, difference


# What the exported model's output is, by the model's ``traits().output``.
OUTPUTS = {"logit": "logit (float32 [N]); sigmoid(logit) is the probability",
           "rating": "the predicted rating (float32 [N])", "score": "the model's score (float32 [N])"}


def _write_id_map(file, catalogue):
    import csv

    with open(file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "original_id"] + (["title"] if catalogue.titles else []))
        for index, original in enumerate(catalogue.ids):
            writer.writerow([index, original] + ([catalogue.titles[index]] if catalogue.titles else []))


def _check_onnx_packages():
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError("--export writes the model as ONNX, which needs the onnx and onnxscript packages: pip "
                         "install -r requirements-export.txt (or pass --no_onnx for the embeddings alone)") from None


class _Scoring(torch.nn.Module):
    """The exported graph: logits [N] of (user, item) index pairs [N], [N]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, user, item):
        return self.model(user, item).float()


@contextlib.contextmanager
def _silenced_output():
    """Standard output and error discarded for the block, down to the file descriptors: the exporter prints a
    traced graph where a model's shapes depend on its data (EASE's users' items), and not always through Python's
    streams. Its errors still arrive as exceptions."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved, null = [os.dup(1), os.dup(2)], os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (*saved, null):
            os.close(descriptor)


@contextlib.contextmanager
def _quiet_loggers(*names):
    """The exporters' loggers held at ERROR for the block: their notes (torchvision ops skipped, a traced graph for
    a data-dependent shape) say nothing a user can act on, and went to the terminal around the one-line result."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_onnx(model, file, num_users, num_items):
    """Export the model's scoring to ``file``; with onnxruntime, the largest difference from PyTorch's logits
    over 1,000 random pairs (float32)."""
    scoring = _Scoring(model.float().cpu()).eval()
    batch = torch.export.Dim("batch")
    example = (torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    try:
        with _silenced_output(), warnings.catch_warnings(), _quiet_loggers("torch", "onnx_ir", "onnxscript"):
            warnings.simplefilter("ignore")
            torch.onnx.export(scoring, example, str(file), input_names=["user", "item"], output_names=["logit"],
                              dynamic_shapes=({0: batch}, {0: batch}), dynamo=True, external_data=False,
                              verbose=False)
    except Exception as error:  # noqa: BLE001 - the exporter raises many kinds for a model it cannot trace
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:100]
        raise UsageError(f"model.onnx: torch.onnx could not export this {type(model).__name__} ({first}); pass "
                         "--no_onnx for its arrays alone") from None
    try:
        import onnxruntime
    except ImportError:
        return None
    generator = torch.Generator().manual_seed(0)
    users = torch.randint(num_users, (1000,), generator=generator)
    items = torch.randint(num_items, (1000,), generator=generator)
    runner = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    onnx_logits = runner.run(None, {"user": users.numpy(), "item": items.numpy()})[0]
    with torch.no_grad():
        torch_logits = scoring(users, items).numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


def recommend_for_users(args, served):
    model, dataset, device, autocast = served.model, served.dataset, served.device, served.autocast
    users_catalogue, items_catalogue = served.users, served.items
    if args.user:
        indices = [users_catalogue.user(name) for name in args.user]
    elif args.users == "all":
        indices = list(range(dataset.num_users))
    else:
        indices = resolve_in_file(args.users, read_names(args.users, "user_id"), users_catalogue.user)
    seen = None if args.include_seen else known_interactions(dataset, device)
    chunks = list(top_items(model, torch.tensor(indices), dataset.num_items, args.topk, seen, autocast, device,
                            progress=args.users is not None))
    users, scores, items = (torch.cat(parts) for parts in zip(*chunks))
    user_ids = [users_catalogue.ids[user] for user in users.tolist()]
    if args.user:
        left_out = "" if seen is None else ", leaving out what the user already interacted with"
        for user_id, user_scores, user_items in zip(user_ids, scores, items):
            print_ranked(f"user {user_id}: top {args.topk} of {dataset.num_items:,} items{left_out}",
                         ranked_rows(items_catalogue, user_scores, user_items), items_catalogue)
    if args.output:
        write_table(args.output, table_columns(user_ids, scores, items, items_catalogue))
        print(f"wrote the top {args.topk} of {len(user_ids):,} users to {args.output}")


def recommend_for_history(args, served):
    model, dataset, device, items_catalogue = served.model, served.dataset, served.device, served.items
    if args.history_file:
        names = read_names(args.history_file, "item_id")
        history = resolve_in_file(args.history_file, names, items_catalogue.item)
    else:
        history = [items_catalogue.item(name) for name in args.history]
    history = torch.tensor(sorted(set(history)), device=device)
    if len(history) == dataset.num_items:
        raise UsageError("the history holds every item, so there is nothing left to recommend or to contrast it "
                         "with")
    started = time.perf_counter()
    if isinstance(model, ScoresHistory):  # (EASE: a new user's scores come from their items alone)
        with torch.no_grad():
            scores, how = model.score_history(history).detach().float().clone(), "from their items"  # (ours)
    else:
        config = served.checkpoint.get("config") or {}
        negatives = args.fold_in_negatives or config.get("negative_samples") or FOLD_IN_NEGATIVES
        if "loss" not in config:
            print(f"note: the checkpoint records no --loss (written by an earlier version): folding in with the "
                  f"{served.kind} model's own loss")
        scores = fold_in(model, history, dataset.num_items, args.fold_in_steps, args.fold_in_lr, negatives,
                         args.seed, args.fold_in_l2, served.family.fold_in_loss(model, config))
        how = f"by fold-in ({args.fold_in_steps} steps)"
    if not args.include_seen:
        scores[history] = -math.inf
    best, items = evaluation.top_k(scores[None], args.topk)
    seconds = time.perf_counter() - started
    best, items = best.cpu(), items.cpu()
    rows = ranked_rows(items_catalogue, best[0], items[0])
    print_ranked(f"a new user with {len(history)} items: top {args.topk} of {dataset.num_items:,} items {how}, "
                 f"answered in {seconds * 1000:.0f} ms", rows, items_catalogue)
    if args.output:
        write_table(args.output, table_columns(["new"], best, items, items_catalogue))
        print(f"wrote the list to {args.output}")


def device_of(model):
    """Where a model's weights are (its parameters', or its buffers' for a model solved in closed form)."""
    return next(itertools.chain(model.parameters(), model.buffers())).device


def show_similar(args, served):
    model, items_catalogue = served.model, served.items
    queries = [items_catalogue.item(name) for name in args.similar_to]
    best, nearest, how = similar_items(model, torch.tensor(queries, device=device_of(model)), args.topk)
    best, nearest = best.cpu(), nearest.cpu()
    for query, scores, items in zip(queries, best, nearest):
        print_ranked(f"items nearest to {items_catalogue.label(query)} by {how}",
                     ranked_rows(items_catalogue, scores, items), items_catalogue, value="similarity")
    if args.output:
        write_table(args.output, table_columns([items_catalogue.ids[query] for query in queries], best, nearest,
                                               items_catalogue, owner="query_id", value="similarity"))
        print(f"wrote the lists to {args.output}")


def predict(args, served):
    """Print the model's prediction for one (user, item) pair, as its output's meaning (traits) states it."""
    model, users_catalogue, items_catalogue = served.model, served.users, served.items
    user, item = users_catalogue.user(args.predict[0]), items_catalogue.item(args.predict[1])
    device = device_of(model)
    with torch.no_grad():
        value = model(torch.tensor([user], device=device), torch.tensor([item], device=device)).float().item()
    output = traits(model).output
    what = (f"predicted rating {value:.3f}" if output == "rating" else f"score {value:.4f}" + (
        f" (probability {1 / (1 + math.exp(-value)):.3f})" if output == "logit" else ""))
    print(f"user {users_catalogue.ids[user]}, item {items_catalogue.label(item)}: {what}")


def show_words(args, served):
    """Print the vocabulary words nearest to each item's text vector."""
    model, kind, dataset, items_catalogue = served.model, served.kind, served.dataset, served.items
    words, counts = dataset.vocabulary
    queries = [items_catalogue.item(name) for name in args.words]
    with torch.no_grad():
        similarity = model.item_words(torch.tensor(queries, device=device_of(model))).float().cpu()
    best, nearest = similarity.topk(min(args.topk, len(words)), dim=1)
    for query, scores, chosen in zip(queries, best, nearest):
        rows = [(rank, words[word], score, int(counts[word]))
                for rank, (score, word) in enumerate(zip(scores.tolist(), chosen.tolist()), 1)]
        print_list(f"words nearest to item {items_catalogue.label(query)} ({kind}, cosine with its text vector)",
                   rows, ("rank", "word", "similarity", "count"))


def show_biases(args, served):
    """Print the items with the lowest and the highest learned bias."""
    model, kind, items_catalogue = served.model, served.kind, served.items
    biases = model.item_biases().float().cpu()
    order = torch.argsort(biases)
    for heading, chosen in (("lowest", order[:args.topk]), ("highest", order.flip(0)[:args.topk])):
        rows = [(rank, items_catalogue.ids[item], biases[item].item(), items_catalogue.title(item))
                for rank, item in enumerate(chosen.tolist(), 1)]
        print_ranked(f"the {args.topk} items with the {heading} bias ({kind})", rows, items_catalogue, value="bias")


def plot_items(path, model, dataset, items_catalogue, labelled=50):
    """Save a PNG of the item vectors (``item_vectors``, joined when there are several) on their first two principal
    components, the ``labelled`` most-rated items named; returns the share of variance the two components hold."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot_items needs matplotlib: pip install matplotlib") from None
    vectors = torch.cat([table.float().cpu() for table in model.item_vectors().values()], dim=1)
    centred = vectors - vectors.mean(0)
    _, singular, basis = torch.linalg.svd(centred, full_matrices=False)
    points = (centred @ basis[:2].T).numpy()
    explained = float((singular[:2] ** 2).sum() / (singular ** 2).sum())
    popular = torch.bincount(dataset.train_items.cpu(), minlength=dataset.num_items).argsort(descending=True)
    figure, axes = plt.subplots(figsize=(12, 9))
    axes.scatter(points[:, 0], points[:, 1], s=4, color="lightgray")
    for item in popular[:labelled].tolist():
        axes.scatter(points[item, 0], points[item, 1], s=10, color="tab:blue")
        axes.annotate(items_catalogue.title(item) or items_catalogue.ids[item], points[item], fontsize=7)
    axes.set_xlabel("first principal component")
    axes.set_ylabel("second principal component")
    axes.set_title(f"item vectors ({' and '.join(model.item_vectors())}), {explained:.0%} of their variance")
    try:
        with files.atomic_file(path, UsageError, "pass another --plot_items") as temporary:
            figure.savefig(temporary, dpi=80, format="png")
    finally:
        plt.close(figure)
    return explained


def show_plot(args, served):
    explained = plot_items(args.plot_items, served.model, served.dataset, served.items)
    print(f"wrote {args.plot_items}: the item vectors on their first two principal components ({explained:.0%} of "
          "the variance), the 50 most-rated items labelled")


def show_export(args, served):
    description, difference = export(served.model, served.kind, served.checkpoint["model_args"], served.users,
                                     served.items, args.export, onnx=not args.no_onnx)
    checked = "" if difference is None else f"; ONNX against PyTorch over 1,000 pairs: largest difference " \
                                            f"{difference:.1e}"
    print(f"exported {len(description['files'])} arrays, users.csv, items.csv{'' if args.no_onnx else ', model.onnx'} "
          f"and export.json to {args.export}{checked}")




# ------------------------------------------------------------------------------------------------ the tasks


def ranks(model):
    return isinstance(model, (RanksAllItems, FastRanker))


def folds_in(model):
    """A new user's scores come from their items alone, or a fold-in of their rows under a loss on 0/1 labels."""
    return isinstance(model, ScoresHistory) or (isinstance(model, HasUserRows) and traits(model).output == "logit")


@dataclass(frozen=True)
class Task:
    """One of recommend.py's tasks: the flags that ask for it (``asked``: args -> bool), what the model must offer
    (``offered``: model -> bool), the function (args, served), and the message when the model cannot do it."""

    flag: str
    asked: object
    offered: object
    run: object
    missing: str


TASKS = (
    Task("--export", lambda args: args.export, ranks, show_export, "--export: a {kind} model has no scores to export"),
    Task("--words", lambda args: args.words, lambda model: isinstance(model, HasItemWords), show_words,
         "--words: a {kind} model has no item vectors in the word space; train --model textitem or textmf"),
    Task("--similar_to", lambda args: args.similar_to,
         lambda model: isinstance(model, (HasItemVectors, ScoresHistory)), show_similar,
         "--similar_to: a {kind} model has no item vectors to compare"),
    Task("--predict", lambda args: args.predict, ranks, predict, "--predict: a {kind} model predicts no pairs"),
    Task("--biases", lambda args: args.biases,
         lambda model: isinstance(model, HasItemBiases) and model.item_biases() is not None, show_biases,
         "--biases: a {kind} model has no item biases; train --model biasmf or dotbias"),
    Task("--plot_items", lambda args: args.plot_items, lambda model: isinstance(model, HasItemVectors), show_plot,
         "--plot_items: a {kind} model has no item vectors to draw"),
    Task("--history", lambda args: args.history or args.history_file, folds_in, recommend_for_history,
         "--history folds in a user from the items they interacted with, which the implicit models learn from; a "
         "{kind} model would need their ratings"),
    Task("--user", lambda args: True, ranks, recommend_for_users, "--user: a {kind} model ranks no items"),
)


def asked_task(args):
    """The task the flags ask for: the first of ``TASKS`` whose flag is given (top-k lists when none is)."""
    return next(task for task in TASKS if task.asked(args))


def task_problem(task, served):
    """Why ``served``'s model cannot do ``task`` (one line), or None. A model that ranks no items says why (from its
    traits) and what it does offer."""
    model, kind = served.model, served.kind
    if task.offered(model):
        return None
    if not ranks(model):
        why = ("reads a review to predict its rating: a diagnostic of what the words tell, not a recommender"
               if traits(model).reads_review else "learns item vectors from review words and predicts no rating"
               if traits(model).output is None else "ranks no items for users")
        offered = [other.flag for other in TASKS if other.offered(model)]
        return f"a {kind} model {why}; " + (f"it offers {', '.join(offered)}" if offered else
                                          "recommend.py has nothing to show for it")
    return task.missing.format(kind=kind)
