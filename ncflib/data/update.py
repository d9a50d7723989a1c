"""``convert.py --update``: a dataset extended by a new log, its old users and items keeping their indices.

The old dataset's interactions (training, validation and test, with their times and ratings) are read back from its
arrays and id maps, the new log is read as the old one was (its format and columns, from the old metadata), and the
two are split again with the old protocol and settings; the split indexes ids ``known`` first (the old id maps, in
their order), then new ones in order of first appearance in the new log.

    old = read_previous("data/ml100k")                  # Previous: interactions, id maps, settings
    settings = old.settings()                            # the flags of the conversion that made it
    data = old.joined(new_log)                           # Interactions: the old rows first, then the log's
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ncflib.data.layout import read_id_map
from ncflib.data.splits import (
    NEW,
    OLD_TEST,
    OLD_TRAIN,
    OLD_VALIDATION,
    Interactions,
    OldParts,
    Split,
    as_text,
    cold_counts,
    index_known,
    random_ranks,
)
from ncflib.errors import ConversionError

# The protocols an update can split again. Of the given-file ones, NGCF/LightGCN's take new training pairs (their
# test set stays); the NCF paper's (whose sampled negatives a new pair could hit) and --test_path's do not.
UPDATABLE = ("leave_one_out", "ratio", "time_ratio", "random")
GIVEN_FORMATS = ("lightgcn",)

# convert.py's flags that set how a dataset is split: an update takes them all from the old dataset.
SPLIT_FLAGS = ("split", "test_fraction", "validation", "validation_fraction", "valid_negative", "min_interactions",
               "seed", "test_path", "max_words", "skip_top", "text_col")


@dataclass
class Previous:
    """The dataset an update extends: its folder, metadata, id maps (strings, by index) and interactions."""

    path: Path
    metadata: dict
    user_ids: np.ndarray
    item_ids: np.ndarray
    titles: dict
    users: np.ndarray  # [N] int64 indices: training, then validation, then test pairs
    items: np.ndarray
    timestamps: np.ndarray | None
    ratings: np.ndarray | None
    parts: np.ndarray  # [N] int8: OLD_TRAIN, OLD_VALIDATION or OLD_TEST, each row's part

    def old_parts(self):
        """The pairs and their parts, for the split of the update (a training pair stays one)."""
        return OldParts(self.users, self.items, self.parts)

    @property
    def protocol(self):
        return self.metadata["protocol"]

    @property
    def source(self):
        return self.metadata.get("source", {})

    def settings(self):
        """{convert.py flag dest: value} of the conversion that made the dataset, as far as the update uses them."""
        protocol = self.protocol
        settings = {"split": protocol.get("name", "given"), "seed": int(self.metadata.get("seed", 0)),
                    "validation": bool(protocol.get("validation")),
                    "min_interactions": int(protocol.get("min_interactions", 2)),
                    "valid_negative": int(self.metadata.get("test_negatives", 0))}
        for key, pattern in (("test_fraction", r"(?:the (?:random|latest) |random: )([0-9.eE-]+)"),
                             ("validation_fraction", r"then (?:the (?:random|latest) )?([0-9.eE-]+)")):
            found = re.search(pattern, protocol.get("split", ""))  # (datasets written before these were recorded)
            if key in protocol or found:
                settings[key] = float(protocol[key]) if key in protocol else float(found.group(1))
        return settings

    def joined(self, log):
        """Interactions of this dataset's rows (original ids as text) followed by ``log``'s (read as the dataset's
        source was); a ConversionError when the log lacks a side the dataset has (times, ratings), or has one it
        lacks."""
        where = log.source.get("path", "the new log")
        for name, old, new in (("time", self.timestamps, log.timestamps), ("rating", self.ratings, log.ratings)):
            if (old is None) != (new is None):
                has, lacks = (self.path, where) if new is None else (where, self.path)
                raise ConversionError(f"{where}: {has} has a {name} column and {lacks} none; an update needs the "
                                      f"columns of the dataset it extends (--{name}_col names one), or convert the "
                                      "whole log again")
        titles = {**{str(key): value for key, value in log.titles.items()}, **self.titles}

        def join(old, new, dtype):
            return None if old is None else np.concatenate([np.asarray(old, dtype=dtype), np.asarray(new, dtype=dtype)])

        return Interactions(
            users=np.concatenate([self.user_ids[self.users], as_text(log.users)]),
            items=np.concatenate([self.item_ids[self.items], as_text(log.items)]),
            timestamps=join(self.timestamps, log.timestamps, np.int64),
            ratings=join(self.ratings, log.ratings, np.float32), titles=titles, source=log.source,
            first_data_line=log.first_data_line)


def read_previous(path):
    """The dataset at ``path`` (written by convert.py) as a ``Previous``; a ConversionError naming what keeps it from
    being extended."""
    path = Path(path)
    file = path / "metadata.json"
    try:
        metadata = json.loads(file.read_text())
        protocol = metadata["protocol"]
        name = protocol.get("name", "given")  # (the NCF paper's files wrote no name)
    except FileNotFoundError:
        raise ConversionError(f"--update {path}: no metadata.json here; pass a dataset written by convert.py") \
            from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConversionError(f"--update {path}: unreadable metadata.json ({error}); pass a dataset written by "
                              "convert.py") from None
    if name not in UPDATABLE and not (name == "given" and metadata.get("source", {}).get("format") in GIVEN_FORMATS):
        raise ConversionError(f"--update {path}: its split ({name}) came with its files, which a new log cannot "
                              f"extend; --update re-splits datasets made with --split {', '.join(UPDATABLE)}, and "
                              "adds training pairs to datasets made from NGCF/LightGCN files")
    if (path / "vocab.csv").is_file():
        raise ConversionError(f"--update {path}: holds review text, whose vocabulary an update would change; convert "
                              "the whole log again")
    user_ids, _ = read_id_map(path / "users.csv")
    item_ids, item_titles = read_id_map(path / "items.csv")
    if user_ids is None or item_ids is None:
        raise ConversionError(f"--update {path}: no users.csv and items.csv (id maps); pass a dataset written by "
                              "convert.py")
    parts = [part for part in ("train", "validation", "test") if (path / f"{part}.npy").is_file()]

    def load(name):
        try:
            return np.load(path / f"{name}.npy", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ConversionError(f"--update {path / (name + '.npy')}: unreadable ({str(error)[:80]}); re-create "
                                  "the dataset with convert.py") from None

    pairs = [load(part) for part in parts]
    sides = {}
    for side in ("timestamps", "ratings"):
        present = [(path / f"{part}_{side}.npy").is_file() for part in parts]
        if any(present) and not all(pair.shape[0] == 0 or here for pair, here in zip(pairs, present)):
            raise ConversionError(f"--update {path}: some parts have {side} and some none; re-create the dataset "
                                  "with convert.py")
        sides[side] = np.concatenate([load(f"{part}_{side}") for part, here in zip(parts, present) if here]) \
            if any(present) else None
    rows = np.concatenate(pairs).astype(np.int64)
    if rows.size and (rows[:, 0].max() >= len(user_ids) or rows[:, 1].max() >= len(item_ids)):
        raise ConversionError(f"--update {path}: its arrays index users or items its id maps lack; re-create the "
                              "dataset with convert.py")
    titles = {} if item_titles is None else {key: title for key, title in zip(item_ids, item_titles) if title}
    code = {"train": OLD_TRAIN, "validation": OLD_VALIDATION, "test": OLD_TEST}
    parts_of_rows = np.concatenate([np.full(pair.shape[0], code[part], dtype=np.int8)
                                    for part, pair in zip(parts, pairs)])
    return Previous(path, metadata, np.asarray(user_ids, dtype=object), np.asarray(item_ids, dtype=object), titles,
                    rows[:, 0], rows[:, 1], sides["timestamps"], sides["ratings"], parts_of_rows)


def given_split(previous, data, progress):
    """The Split of an update of a dataset whose test set came with its files (NGCF/LightGCN's): ``data`` (the old
    pairs, then the log's) indexed with the old ids first; the old pairs keep their parts, the log's new pairs are
    training pairs, except that with a validation set each user's validation count is made up to the share the
    dataset's fraction gives the user's training and validation pairs in all (at least one left to train on), drawn
    from the user's new pairs with the dataset's seed. The test set is the old one."""
    user_codes, user_ids = index_known(data.users, previous.user_ids)
    item_codes, item_ids = index_known(data.items, previous.item_ids)
    num_users, num_items = user_ids.size, item_ids.size
    keys = user_codes * num_items + item_codes
    _, first = np.unique(keys, return_index=True)  # a repeated pair keeps its first row: the old one, if any
    rows = np.sort(first)
    users, items = user_codes[rows], item_codes[rows]
    part = previous.old_parts().of(users, items, num_items)
    settings = previous.settings()
    if settings["validation"]:
        fraction = float(settings.get("validation_fraction", 0.1))
        rng = np.random.default_rng(settings["seed"])
        trained = part != OLD_TEST
        pool = np.bincount(users[trained], minlength=num_users)
        target = np.clip(np.rint(fraction * pool), 0, np.maximum(pool - 1, 0)).astype(np.int64)
        new = part == NEW
        wanted = np.clip(target - np.bincount(users[part == OLD_VALIDATION], minlength=num_users), 0,
                         np.bincount(users[new], minlength=num_users))
        new_rows = np.flatnonzero(new)
        rank = random_ranks(users[new_rows], rng, num_users)
        part[new_rows[rank < wanted[users[new_rows]]]] = OLD_VALIDATION
    progress(f"{int((part == NEW).sum()):,} new training pairs; the test set is {previous.path}'s")

    def pairs(chosen):
        chosen_rows = np.flatnonzero(chosen)
        chosen_rows = chosen_rows[np.lexsort((items[chosen_rows], users[chosen_rows]))]
        return np.stack([users[chosen_rows], items[chosen_rows]], 1).astype(np.int32)

    train, test = pairs((part == NEW) | (part == OLD_TRAIN)), pairs(part == OLD_TEST)
    validation = pairs(part == OLD_VALIDATION) if settings["validation"] else None
    counts = {"input_rows": int(keys.size), "duplicates_dropped": int(keys.size - rows.size), "users_dropped": 0,
              **cold_counts(train, test)}
    if validation is not None:
        counts["validation_pairs"] = int(validation.shape[0])
    return Split(train=train, test=test, test_negatives=None, user_ids=user_ids, item_ids=item_ids, counts=counts,
                 protocol=dict(previous.protocol), validation=validation)


def check_columns(previous, fmt, columns):
    """A ConversionError when the new log's format or columns (as given or detected) differ from those the dataset
    was made from."""
    old_format = previous.source.get("format")
    if fmt != old_format:
        raise ConversionError(f"--path: reads as {fmt}, but {previous.path} was made from {old_format} input; pass "
                              f"a log of the same format (or --format {old_format})")
    old_columns = previous.source.get("columns") or {}
    for key, value in columns.items():
        old = old_columns.get(key)
        if value is not None and str(value) != str(old):
            raise ConversionError(f"--{key}_col {value}: {previous.path} read its {key} column from "
                                  f"{old if old is not None else 'nowhere'}; an update reads the same columns")


def update_counts(previous, split, log_rows, duplicates_of_old):
    """The summary's counts of what the update added."""
    old_pairs = previous.users.size
    new_pairs = int(split.train.shape[0] + split.test.shape[0]
                    + (0 if split.validation is None else split.validation.shape[0]))
    return {"from": str(previous.path), "from_fingerprint": previous.metadata.get("fingerprint"),
            "old_users": int(previous.user_ids.size), "old_items": int(previous.item_ids.size),
            "old_interactions": int(old_pairs), "log_rows": int(log_rows),
            "new_users": int(split.user_ids.size - previous.user_ids.size),
            "new_items": int(split.item_ids.size - previous.item_ids.size),
            "new_interactions": new_pairs - int(old_pairs), "duplicates_of_old": int(duplicates_of_old)}


def duplicates_of_old(previous, data):
    """How many rows of the new log (the rows of ``data`` after the old ones) repeat a (user, item) pair the old
    dataset holds."""
    old = previous.users.size
    users, _ = pd.factorize(data.users)
    items, _ = pd.factorize(data.items)
    pairs = users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items
    return int(np.isin(pairs[old:], pairs[:old]).sum())
