"""Put a trained checkpoint to use: top-k items in the dataset's own ids, similar items, new users, exports.

    python recommend.py --checkpoint runs/ml100k/best.pt --user 1                 # user 1's top 10, with titles
    python recommend.py --checkpoint runs/ml100k/best.pt --users all --output recs.parquet   # everyone, one file
    python recommend.py --checkpoint runs/ml100k/best.pt --similar_to "Star Wars (1977)"
    python recommend.py --checkpoint runs/ml100k/best.pt --history 50 181 Fargo  # someone not in training
    python recommend.py --checkpoint runs/ml100k/best.pt --export exports/ml100k  # embeddings, id maps, ONNX
    python recommend.py --checkpoint runs/dotbias/best.pt --biases                # a rating model's item biases

The dataset is the one the checkpoint was trained on (``--data`` points elsewhere; a checkpoint of another dataset
is refused by its fingerprint). Users and items are named by their original ids, as in the source file, and items
also by title (or part of one) where the dataset has titles. What a user already interacted with (training,
validation and test items) is never recommended to them unless ``--include_seen``.
"""

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import dataloading
from ncflib import evaluation, families, files
from ncflib import training as train
from ncflib.checkpoint import check_dataset, load_checkpoint, model_from_checkpoint, training_loss
from ncflib.errors import UsageError

OUTPUT_FORMATS = (".parquet", ".csv", ".jsonl")
# Fold-in settings, chosen on ML-100k with bench/fold_in_bench.py (100 training users folded in from their own
# training items; docs/recommend.md): without the L2 pull more steps drift away from the trained user (GMF shared
# 5.0 of its top 10 after 300 steps); NeuMF came closest with its own objective (branch losses), its dropout on
# and every item as a weighted negative (7.71 of 10, against at most 6.94 in eval mode with sampled negatives).
FOLD_IN_STEPS, FOLD_IN_LEARNING_RATE, FOLD_IN_NEGATIVES, FOLD_IN_L2 = 50, 0.05, 4, 20.0
FOLD_IN_EVERY_ITEM = 2**16  # up to this many items a fold-in step weighs every item, not a sample


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="recommend.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Top-k recommendations, similar items, fold-in for new users and exports of an ncf.py model.")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by ncf.py (best.pt or last.pt)")
    parser.add_argument("--data", help="the dataset directory it was trained on; default: the one its training "
                                       "run named (the built-in demo when it had none)")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--user", nargs="+", metavar="ID", help="top-k items for these users (original ids)")
    task.add_argument("--users", metavar="all|FILE",
                      help="top-k items for every user ('all') or for the ids in FILE (one per line; a 'user_id' "
                           "header is skipped), scored in chunks with a progress bar; write them with --output")
    task.add_argument("--similar_to", nargs="+", metavar="ITEM",
                      help="the items nearest to each ITEM (an original id, or a title or part of one) by cosine "
                           "similarity of the model's item vectors")
    task.add_argument("--history", nargs="+", metavar="ITEM",
                      help="top-k items for someone not in training who interacted with these items (ids or "
                           "titles): a user vector fitted to them with every other weight frozen (fold-in)")
    task.add_argument("--history_file", metavar="FILE", help="as --history, the items read from FILE, one per line")
    task.add_argument("--predict", nargs=2, metavar=("USER", "ITEM"),
                      help="the model's prediction for one user and item (an id, or a title or part of one): a "
                           "rating for the rating models, a score and its probability for the implicit ones")
    task.add_argument("--biases", action="store_true",
                      help="rating models with biases (biasmf, dotbias): the -k items with the lowest and the highest "
                           "learned bias, which the model rates down or up whatever the user's taste")
    task.add_argument("--plot_items", metavar="FILE.png",
                      help="draw the items' vectors on their first two principal components, the 50 most-rated "
                           "labelled by title (needs matplotlib)")
    task.add_argument("--words", nargs="+", metavar="ITEM",
                      help="review-text models (textitem, textmf): the -k vocabulary words nearest (cosine) to "
                           "each ITEM's text vector, with their counts in the training reviews")
    task.add_argument("--export", metavar="DIR",
                      help="write the embeddings (.npy), id maps (users.csv, items.csv) and the scoring model "
                           "(model.onnx: user and item index tensors in, logits out) to the new folder DIR")
    parser.add_argument("-k", "--topk", type=int, default=10, help="how many items to list per user or item")
    parser.add_argument("--include_seen", action="store_true",
                        help="keep the items a user already interacted with among the candidates")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the lists to FILE: .parquet, .csv or .jsonl (columns user_id, rank, "
                             "item_id, score, and title when the dataset has titles; for --similar_to: query_id, "
                             "rank, item_id, similarity), written whole or not at all; an existing FILE is "
                             "refused unless --force")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --output or --plot_items file")
    parser.add_argument("--fold_in_steps", type=int, default=FOLD_IN_STEPS,
                        help="Adam steps fitting a new user's vector for --history")
    parser.add_argument("--fold_in_lr", type=float, default=FOLD_IN_LEARNING_RATE,
                        help="learning rate of those steps")
    parser.add_argument("--fold_in_negatives", type=int,
                        help="negatives drawn per history item at each fold-in step; default: as many as the model "
                             "trained with (its -n)")
    parser.add_argument("--fold_in_l2", type=float, default=FOLD_IN_L2,
                        help="weight of the fold-in's L2 pull of the new user's rows toward the mean user's (against "
                             "the summed loss: the more history, the less it pulls)")
    parser.add_argument("-s", "--seed", type=int, default=0, help="seed of the fold-in's negatives")
    parser.add_argument("--no_onnx", action="store_true", help="--export without model.onnx (no onnx packages)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to score; 'auto': a GPU when there is one")
    parser.add_argument("--amp", action="store_true",
                        help="score in bfloat16 (float16 on GPUs without it): faster on a GPU or a CPU with AVX-512 "
                             "BF16 (docs/speed.md), and the model's deeper layers lose precision (GMF is unaffected)")
    args = parser.parse_args(argv)
    for flag, value in (("-k/--topk", args.topk), ("--fold_in_steps", args.fold_in_steps),
                        ("--fold_in_negatives", args.fold_in_negatives)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if not (math.isfinite(args.fold_in_lr) and args.fold_in_lr > 0):
        parser.error(f"--fold_in_lr must be a positive number, got {args.fold_in_lr}")
    if not (math.isfinite(args.fold_in_l2) and args.fold_in_l2 >= 0):
        parser.error(f"--fold_in_l2 must be a number >= 0, got {args.fold_in_l2}")
    if args.output and (args.export or Path(args.output).suffix.lower() not in OUTPUT_FORMATS):
        parser.error("--output takes a .parquet, .csv or .jsonl file, with --user, --users, --similar_to or "
                     "--history" if not args.export else "--output does not go with --export, which writes a folder")
    if args.users and not args.output:
        parser.error("--users writes its lists to a file: add --output recs.parquet (or .csv, .jsonl)")
    return args


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
    """(similarities [Q, k], items [Q, k], what was compared) of the items nearest to each of ``items`` [Q] by
    cosine similarity of the model's item vectors (the mean cosine over them when it has several), the item
    itself left out."""
    vectors = model.item_vectors()
    similarity = sum(torch.nn.functional.normalize(table.float(), dim=1)[items] @
                     torch.nn.functional.normalize(table.float(), dim=1).T for table in vectors.values())
    similarity = similarity / len(vectors)
    similarity[torch.arange(len(items)), items] = -math.inf
    best, nearest = evaluation.top_k(similarity, topk)
    return best, nearest, " and ".join(vectors)


class _WithRows:
    """Calls ``model`` with some of its parameters replaced (``torch.func.functional_call``): a new user's rows."""

    def __init__(self, model, rows):
        self.model, self.rows = model, rows

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self.model, self.rows, args, kwargs)


def fold_in(model, history, num_items, steps, learning_rate, negatives, seed, l2=FOLD_IN_L2, loss_function=None):
    """The score of every item [num_items] for a user who interacted with ``history`` (item indices) and was not
    in training: a new row for each of the model's user tables (``user_parameter_names``), started at the mean
    user and fitted by Adam for ``steps`` steps, every other weight as trained.

    Each step minimises the model's own training loss (``loss_function``, from ``checkpoint.training_loss``; by
    default ``model.training_loss()``) in training mode (its dropout on, as when the users were trained) over the
    history items as positives and ``negatives`` per history item, plus ``l2`` / 2 times the squared distance of
    the rows from the mean user's. On catalogues of up to ``FOLD_IN_EVERY_ITEM`` items the negatives are every other
    item, each weighted so that together they count ``negatives`` per history item: the expectation of the sampled
    negatives, without their noise; larger ones draw them anew each step. Deterministic given ``seed``; leaves
    the model's weights, modes and random state as they were."""
    device = history.device
    parameters = dict(model.named_parameters())
    start = {name: parameters[name].detach().mean(0, keepdim=True) for name in model.user_parameter_names()}
    rows = {name: row.clone().requires_grad_() for name, row in start.items()}
    optimizer = torch.optim.Adam(rows.values(), lr=learning_rate)
    others = torch.ones(num_items, dtype=torch.bool, device=device)
    others[history] = False
    candidates = others.nonzero().squeeze(1)
    every_item = len(candidates) <= FOLD_IN_EVERY_ITEM
    count = len(candidates) if every_item else len(history) * negatives
    labels = torch.cat([torch.ones(len(history), device=device), torch.zeros(count, device=device)])
    weights = None if not every_item else torch.cat([torch.ones(len(history), device=device),
                                                     torch.full((count,), len(history) * negatives / count,
                                                                device=device)])
    loss_function, scorer = loss_function or model.training_loss(), _WithRows(model, rows)
    trained, was_training = [parameter.requires_grad for parameter in parameters.values()], model.training
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        model.requires_grad_(False).train()  # the trained weights are constants here: no gradient is computed
        try:
            for _ in range(steps):
                drawn = candidates if every_item else candidates[torch.randint(
                    len(candidates), (count,), device=device, generator=generator)]
                items = torch.cat([history, drawn])
                _, loss = loss_function(scorer, (torch.zeros_like(items), items, labels, weights),
                                        contextlib.nullcontext)  # (reported, minimised): the training objective
                if l2:
                    loss = loss + l2 / 2 * sum(((rows[name] - start[name]) ** 2).sum() for name in rows)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
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


# ------------------------------------------------------------------------------------------------ output


def write_table(path, columns):
    """Write ``columns`` (name -> equal-length list or array) to ``path`` (.parquet, .csv, .jsonl) atomically: a
    temporary file beside it, then a rename, so a failure leaves no half-written file."""
    import pandas as pd  # only writing a file needs pandas

    path = Path(path)
    frame = pd.DataFrame(columns)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if path.suffix.lower() == ".parquet":
            frame.to_parquet(temporary, index=False)
        elif path.suffix.lower() == ".csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_json(temporary, orient="records", lines=True, force_ascii=False)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write it ({files.write_failure(error)}); pass another --output") from None


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


def export(model, kind, model_args, users, items, folder, onnx):
    """Write ``folder`` (new, or empty) whole or not at all: each embedding and bias table, the output layer and a
    rating model's global mean as .npy,
    users.csv and items.csv, model.onnx when ``onnx``, and export.json describing them. Returns the description
    and the largest difference between the ONNX model's scores and PyTorch's (None without onnxruntime)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder}: exists and is not an empty folder; pass a new folder to --export")
    if not folder.parent.is_dir() or not os.access(folder.parent, os.W_OK):
        raise UsageError(f"{folder}: cannot create it in {folder.parent}; pass another --export folder")
    if onnx:
        _check_onnx_packages()
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    family = families.family_of(kind)
    try:
        staging.mkdir()
        files = {}
        for name, parameter in model.state_dict().items():
            if "embedding" in name or "_bias." in name or name.startswith("output.") or name.endswith("mean"):
                tables = "embedding" in name or "_bias." in name
                file = (name.removesuffix(".weight") if tables else name).replace(".", "_") + ".npy"
                np.save(staging / file, parameter.detach().float().cpu().numpy(), allow_pickle=False)
                files[file] = {"parameter": name, "shape": list(parameter.shape)}
        for catalogue, file in ((users, "users.csv"), (items, "items.csv")):
            _write_id_map(staging / file, catalogue)
        difference = _export_onnx(model, staging / "model.onnx", len(users), len(items)) if onnx else None
        description = {"model": kind, "model_args": model_args, "files": files,
                       "onnx": "model.onnx: inputs user and item (int64 [N], indices as in users.csv and "
                               "items.csv), output " + family.export_output(kind, model) if onnx else None,
                       "gmf_score": family.export_formula(kind)}
        (staging / "export.json").write_text(json.dumps(description, indent=2) + "\n")
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except OSError as error:
        raise UsageError(f"{folder}: cannot write the export ({files.write_failure(error)}); free some space or pass "
                         "another folder") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return description, difference


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


def _export_onnx(model, file, num_users, num_items):
    """Export the model's scoring to ``file``; with onnxruntime, the largest difference from PyTorch's logits
    over 1,000 random pairs (float32)."""
    scoring = _Scoring(model.float().cpu()).eval()
    batch = torch.export.Dim("batch")
    example = (torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(scoring, example, str(file), input_names=["user", "item"], output_names=["logit"],
                          dynamic_shapes=({0: batch}, {0: batch}), dynamo=True, external_data=False,
                          verbose=False)
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


# ------------------------------------------------------------------------------------------------ the command


def load(args):
    """(model in eval mode on the device, its checkpoint, the dataset, device, autocast)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no GPU is visible here; pass --device cpu")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(args.checkpoint)
    data = args.data if args.data is not None else (checkpoint.get("config") or {}).get("data")
    if data is not None and not Path(data).is_dir():
        how = "" if args.data is not None else " (the folder its training run named)"
        raise UsageError(f"{data}: no such dataset folder{how}; pass the dataset with --data")
    dataset = dataloading.load_dataset_or_demo(data)
    check_dataset(checkpoint, dataset, args.checkpoint)  # refuses another dataset's checkpoint
    model = model_from_checkpoint(checkpoint, args.checkpoint).to(device).eval()
    autocast = train.mixed_precision(args.amp, device)[0]
    return model, checkpoint, dataset, device, autocast


def recommend_for_users(args, model, dataset, device, autocast, users_catalogue, items_catalogue):
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


def fold_in_settings(model, checkpoint, negatives=None):
    """(negatives per history item, loss function) of a fold-in for ``model``, loaded from ``checkpoint``: as it
    trained (its -n and its loss, e.g. NeuMF's branch losses); ``negatives`` when given."""
    config = checkpoint.get("config") or {}
    negatives = negatives or config.get("negative_samples") or FOLD_IN_NEGATIVES
    return negatives, training_loss(model, config)


def recommend_for_history(args, model, checkpoint, dataset, device, items_catalogue):
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
    if isinstance(model, families.ScoresHistory):  # (EASE: a new user's scores come from their items alone)
        with torch.no_grad():
            scores, how = model.score_history(history).float(), "from their items"
    else:
        negatives, loss_function = fold_in_settings(model, checkpoint, args.fold_in_negatives)
        scores = fold_in(model, history, dataset.num_items, args.fold_in_steps, args.fold_in_lr, negatives,
                         args.seed, args.fold_in_l2, loss_function)
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


def show_similar(args, model, items_catalogue):
    queries = [items_catalogue.item(name) for name in args.similar_to]
    best, nearest, compared = similar_items(model, torch.tensor(queries, device=device_of(model)),
                                            args.topk)
    best, nearest = best.cpu(), nearest.cpu()
    for query, scores, items in zip(queries, best, nearest):
        print_ranked(f"items nearest to {items_catalogue.label(query)} by cosine similarity of {compared}",
                     ranked_rows(items_catalogue, scores, items), items_catalogue, value="similarity")
    if args.output:
        write_table(args.output, table_columns([items_catalogue.ids[query] for query in queries], best, nearest,
                                               items_catalogue, owner="query_id", value="similarity"))
        print(f"wrote the lists to {args.output}")


def predict(args, model, kind, users_catalogue, items_catalogue):
    """Print the model's prediction for one (user, item) pair, as its family states it."""
    user, item = users_catalogue.user(args.predict[0]), items_catalogue.item(args.predict[1])
    device = device_of(model)
    with torch.no_grad():
        value = model(torch.tensor([user], device=device), torch.tensor([item], device=device)).float().item()
    what = families.family_of(kind).prediction(kind, model, value)
    print(f"user {users_catalogue.ids[user]}, item {items_catalogue.label(item)}: {what}")


def show_words(args, model, kind, dataset, items_catalogue):
    """Print the vocabulary words nearest to each item's text vector."""
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


def show_biases(args, model, kind, items_catalogue):
    """Print the items with the lowest and the highest learned bias."""
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
    temporary = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")
    try:
        figure.savefig(temporary, dpi=80, format="png")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write it ({files.write_failure(error)})") from None
    finally:
        plt.close(figure)
    return explained


# The flag that asks for each of recommend.py's tasks, in the order main() tries them.
TASK_FLAGS = {"export": "--export", "words": "--words", "similar": "--similar_to", "predict": "--predict",
              "biases": "--biases", "plot": "--plot_items", "fold_in": "--history", "top_k": "--user"}
MISSING = {"words": "--words: a {kind} model has no item vectors in the word space; train --model textitem or textmf",
           "biases": "--biases: a {kind} model has no item biases; train --model biasmf or dotbias",
           "fold_in": "--history folds in a user from the items they interacted with, which the implicit models "
                      "learn from; a {kind} model would need their ratings",
           "similar": "--similar_to: a {kind} model has no item vectors to compare",
           "plot": "--plot_items: a {kind} model has no item vectors to draw"}


def asked_task(args):
    """Which of the tasks (``families.RECOMMEND_TASKS``) the flags ask for."""
    flags = {"export": args.export, "words": args.words, "similar": args.similar_to, "predict": args.predict,
             "biases": args.biases, "plot": args.plot_items, "fold_in": args.history or args.history_file}
    return next((task for task, given in flags.items() if given), "top_k")


def check_task(task, model, kind):
    """A UsageError when a ``kind`` model cannot do ``task``, as its family says: a model that ranks no items
    (the review-text diagnostics) says why and what it does offer."""
    family = families.family_of(kind)
    offered = family.tasks(kind, model)
    if task in offered:
        return
    if "top_k" not in offered:
        flags = [TASK_FLAGS[name] for name in ("words", "similar", "plot") if name in offered]
        raise UsageError(f"a {kind} model {family.refusal(kind)}; " + (
            f"it offers {', '.join(flags)}" if flags else "recommend.py has nothing to show for it"))
    raise UsageError(MISSING[task].format(kind=kind))


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.output:
            check_writable(args.output, args.force)
        if args.plot_items:
            check_writable(args.plot_items, args.force, "--plot_items")
        if args.export:
            files.remove_stale_temporaries(Path(args.export).parent, Path(args.export).name)
        model, checkpoint, dataset, device, autocast = load(args)
        users_catalogue, items_catalogue = catalogues(dataset)
        if args.topk > dataset.num_items - (0 if args.similar_to is None else 1):
            raise UsageError(f"-k/--topk {args.topk} is larger than the catalogue ({dataset.num_items:,} items); "
                             "pass a smaller -k")
        check_task(asked_task(args), model, checkpoint["model"])
        if args.export:
            description, difference = export(model, checkpoint["model"], checkpoint["model_args"], users_catalogue,
                                             items_catalogue, args.export, onnx=not args.no_onnx)
            checked = ("" if difference is None else
                       f"; ONNX against PyTorch over 1,000 pairs: largest difference {difference:.1e}")
            print(f"exported {len(description['files'])} arrays, users.csv, items.csv"
                  f"{'' if args.no_onnx else ', model.onnx'} and export.json to {args.export}{checked}")
        elif args.words:
            show_words(args, model, checkpoint["model"], dataset, items_catalogue)
        elif args.similar_to:
            show_similar(args, model, items_catalogue)
        elif args.predict:
            predict(args, model, checkpoint["model"], users_catalogue, items_catalogue)
        elif args.biases:
            show_biases(args, model, checkpoint["model"], items_catalogue)
        elif args.plot_items:
            explained = plot_items(args.plot_items, model, dataset, items_catalogue)
            print(f"wrote {args.plot_items}: the item vectors on their first two principal components "
                  f"({explained:.0%} of the variance), the 50 most-rated items labelled")
        elif args.history or args.history_file:
            recommend_for_history(args, model, checkpoint, dataset, device, items_catalogue)
        else:
            recommend_for_users(args, model, dataset, device, autocast, users_catalogue, items_catalogue)
    except UsageError as error:
        print(f"recommend.py: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `recommend.py ... | head`: the reader has all it wanted
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
