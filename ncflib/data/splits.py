"""Splits: ``Interactions`` -> a ``Split`` in contiguous indices (train, test, optional validation, negatives).

Leave-one-out by time (each user's latest interaction held out, with sampled test negatives), ratio and time-ratio
splits (evaluated by full ranking), and the random splits of the rating models (with given test files, and an
optional validation fraction). Every function takes values (arrays, counts, a seed) and a ``progress(message)``
callable for the converter's log lines.

    split = split_interactions(data, min_interactions=2, num_negatives=100, seed=0, progress=print)
"""

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ncflib import textdata
from ncflib.data.synthetic import DEMO_SHAPE, synthetic_interactions
from ncflib.errors import ConversionError


@dataclass
class Interactions:
    """Raw interactions as read from a source: original ids, optional time and rating, optional item titles."""

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None = None
    ratings: np.ndarray | None = None
    titles: dict = field(default_factory=dict)  # original item id -> title
    source: dict = field(default_factory=dict)
    texts: np.ndarray | None = None  # [N] str: each row's review text ('' for none), when the source has text
    first_data_line: int = 1  # file line of row 0, so errors can name the line



@dataclass
class Split:
    """A finished split in contiguous indices (what the dataset directory stores)."""

    train: np.ndarray  # [N, 2] int32 (user, item)
    test: np.ndarray  # [T, 2] int32 (user, held-out item), sorted by user; leave-one-out: row u is user u
    test_negatives: np.ndarray | None  # [U, K] int32 with one test item per user, else None
    user_ids: np.ndarray  # [U] original user ids
    item_ids: np.ndarray  # [I] original item ids
    titles: dict = field(default_factory=dict)
    extra_arrays: dict = field(default_factory=dict)  # optional ratings / timestamps, aligned with train and test
    counts: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    validation: np.ndarray | None = None  # [V, 2] int32, as test, when the split holds a validation set
    validation_negatives: np.ndarray | None = None  # [U, K] int32 with one validation item per user
    vocabulary: tuple | None = None  # (words, counts) of the review text, when the split keeps text


# The part a pair had in a dataset being extended (``OldParts.of``).
NEW, OLD_TRAIN, OLD_VALIDATION, OLD_TEST = -1, 0, 1, 2


@dataclass
class OldParts:
    """The pairs of a dataset being extended, in its indices (which an update keeps), and the part of each:
    ``OLD_TRAIN``, ``OLD_VALIDATION`` or ``OLD_TEST``."""

    users: np.ndarray
    items: np.ndarray
    parts: np.ndarray

    def of(self, users, items, num_items):
        """The old part of each (user, item) pair given in the new indices; ``NEW`` for a pair the old dataset
        lacks."""
        keys = np.asarray(users, dtype=np.int64) * num_items + items
        old_keys = self.users.astype(np.int64) * num_items + self.items
        if not old_keys.size:
            return np.full(keys.size, NEW, dtype=np.int8)
        order = np.argsort(old_keys)
        where = np.minimum(np.searchsorted(old_keys[order], keys), old_keys.size - 1)
        return np.where(old_keys[order][where] == keys, self.parts[order][where], NEW).astype(np.int8)


# ---------------------------------------------------------------------------------------------------- protocol


def cold_counts(train, test):
    """{test users / items / rows without training}: test users and items no training pair holds, and the test rows
    with either (a model predicts them from rows training never moved)."""
    cold_users = ~np.isin(test[:, 0], train[:, 0])
    cold_items = ~np.isin(test[:, 1], train[:, 1])
    return {"test_users_without_training": int(np.unique(test[cold_users, 0]).size),
            "test_items_without_training": int(np.unique(test[cold_items, 1]).size),
            "test_rows_without_training": int((cold_users | cold_items).sum())}


def index_ids(ids):
    """Map original ids to 0..n-1 in sorted id order; returns (codes, unique ids)."""
    if np.issubdtype(ids.dtype, np.integer) and ids.size and ids.min() >= 0 and ids.max() < 4 * ids.size + 1_000_000:
        # Dense non-negative integer ids (the usual case) are indexed by counting, far faster than hashing.
        present = np.bincount(ids) > 0
        remap = np.cumsum(present) - 1
        return remap[ids], np.flatnonzero(present)
    codes, uniques = pd.factorize(ids, sort=True)
    return codes.astype(np.int64), np.asarray(uniques)


def as_text(ids):
    """Original ids as the id maps hold them (text), whatever type the reader gave."""
    return np.asarray(ids).astype(str).astype(object)


def index_known(ids, known):
    """(codes, ids by code) as ``index_ids``, except that the ``known`` ids (text: an id map being extended) keep
    their positions and the others follow in order of first appearance in ``ids``; None ``known``: ``index_ids``."""
    if known is None:
        return index_ids(ids)
    ids = as_text(ids)
    codes = pd.Index(known).get_indexer(ids).astype(np.int64)
    unknown = codes < 0
    new_codes, new_ids = pd.factorize(ids[unknown], sort=False)
    codes[unknown] = new_codes + len(known)
    return codes, np.concatenate([np.asarray(known, dtype=object), np.asarray(new_ids, dtype=object)])


def _time_order(timestamps, rng, num_rows):
    """Each row's position when rows are sorted by time, ties in file order; a seeded random order without time."""
    if timestamps is None:
        return rng.permutation(num_rows)
    shifted = timestamps - timestamps.min()
    if shifted.max() < np.iinfo(np.int64).max // max(num_rows, 1):
        # Sorting packed (time, row) values is several times faster than a stable argsort of the times.
        order = np.sort(shifted * num_rows + np.arange(num_rows)) % num_rows
    else:
        order = np.argsort(timestamps, kind="stable")
    position = np.empty(num_rows, dtype=np.int64)
    position[order] = np.arange(num_rows)
    return position


def leave_last_out(data, min_interactions, rng, progress, known=(None, None)):
    """Drop repeated pairs (keeping the earliest), drop light users, and hold out each user's latest interaction.
    ``known`` (user ids, item ids): id maps being extended (``index_known``), whose users and items must all stay.

    Returns (rows of the kept interactions sorted by user then time, user codes, item codes, per-user counts,
    original user ids, original item ids, counts for the summary).
    """
    num_rows = data.users.size
    user_codes, user_ids = index_known(data.users, known[0])
    item_codes, item_ids = index_known(data.items, known[1])
    num_items = item_ids.size
    position = _time_order(data.timestamps, rng, num_rows)
    progress(f"indexed {user_ids.size:,} users and {num_items:,} items")

    # Repeated (user, item) pairs: keep the earliest, so the held-out item is the latest *new* item for the user,
    # which is what a recommender is asked to predict. One sort of packed (pair, time position) values does it.
    pair = user_codes * num_items + item_codes
    if pair.max() < np.iinfo(np.int64).max // max(num_rows, 1):
        packed = np.sort(pair * num_rows + position)
        pair_sorted = packed // num_rows
        first = np.ones(num_rows, dtype=bool)
        first[1:] = pair_sorted[1:] != pair_sorted[:-1]
        kept_position = packed[first] % num_rows
        kept_pair = pair_sorted[first]
    else:
        order = np.lexsort((position, pair))
        first = np.ones(num_rows, dtype=bool)
        first[1:] = pair[order][1:] != pair[order][:-1]
        kept_pair, kept_position = pair[order][first], position[order][first]
    duplicates = num_rows - kept_pair.size

    # Back to rows sorted by (user, time): sort packed (user, time position) values.
    row_of_position = np.empty(num_rows, dtype=np.int64)
    row_of_position[position] = np.arange(num_rows)
    kept_user = kept_pair // num_items
    kept_rows = row_of_position[np.sort(kept_user * num_rows + kept_position) % num_rows]
    progress(f"dropped {duplicates:,} repeated (user, item) pairs")

    counts = np.bincount(user_codes[kept_rows], minlength=user_ids.size)
    light = counts < min_interactions
    if light.all():
        raise ConversionError(f"{data.source.get('path', 'input')}: no user has {min_interactions} or more distinct "
                              "interactions, so nothing is left to train and test on")
    kept_rows = kept_rows[~light[user_codes[kept_rows]]]

    # Contiguous indices over what is left: users and items that lost every interaction disappear.
    user_index = np.cumsum(~light) - 1
    item_used = np.zeros(num_items, dtype=bool)
    item_used[item_codes[kept_rows]] = True
    item_index = np.cumsum(item_used) - 1
    for ids, dropped, what in ((known[0], light, "user"), (known[1], ~item_used, "item")):
        if ids is not None and dropped[:len(ids)].any():  # (an update keeps every pair: so never, unless edited)
            raise ConversionError(f"the dataset being updated lost {what} {ids[np.argmax(dropped[:len(ids)])]} in "
                                  "the new split; re-create it with convert.py")
    users = user_index[user_codes[kept_rows]]
    items = item_index[item_codes[kept_rows]]
    summary = {"input_rows": int(num_rows), "duplicates_dropped": int(duplicates),
               "users_dropped": int(light.sum()), "interactions_of_dropped_users": int(counts[light].sum()),
               "items_dropped": int(num_items - item_used.sum())}
    return kept_rows, users, items, counts[~light], user_ids[~light], item_ids[item_used], summary


def sample_test_negatives(users, items, counts, num_items, num_negatives, rng, chunk_users=None):
    """Draw ``num_negatives`` distinct items per user, uniformly among the items the user never interacted with.

    ``users``/``items`` hold every interaction (train and test), sorted by user; ``counts`` is interactions per user.
    Vectorised rejection sampling over chunks of users, checked against a dense chunk-by-items bitmap; users with
    few items left over use an exact draw from their complement. Returns an int32 array [num_users, num_negatives].
    """
    num_users = counts.size
    result = np.empty((num_users, num_negatives), dtype=np.int32)
    starts = np.concatenate(([0], np.cumsum(counts)))
    chunk_users = chunk_users or max(1, min(num_users, 64_000_000 // num_items))
    free_share = (num_items - counts) / num_items

    def exact_draw(user):
        seen = np.zeros(num_items, dtype=bool)
        seen[items[starts[user]:starts[user + 1]]] = True
        result[user] = rng.choice(np.flatnonzero(~seen), num_negatives, replace=False)

    # Rejection sampling wastes draws when a user's free items are few or nearly all needed; those users (rare in
    # real data) take the exact draw from their complement.
    needs_exact = (free_share < 0.5) | (num_negatives > 0.5 * (num_items - counts))
    for user in np.flatnonzero(needs_exact):
        exact_draw(user)

    for first_user in range(0, num_users, chunk_users):
        last_user = min(num_users, first_user + chunk_users)
        chunk = np.arange(first_user, last_user)
        chunk = chunk[~needs_exact[chunk]]
        if chunk.size == 0:
            continue
        seen = np.zeros((last_user - first_user, num_items), dtype=bool)
        lo, hi = starts[first_user], starts[last_user]
        seen[users[lo:hi] - first_user, items[lo:hi]] = True
        pending = chunk
        for _ in range(3):
            if pending.size == 0:
                break
            # Enough draws that nearly every row finishes in one round: the expected need is
            # k / free_share plus the repeats among the draws themselves.
            worst = free_share[pending].min()
            width = int(np.ceil(num_negatives / worst * 1.2 + num_negatives**2 / num_items + 16))
            candidates = rng.integers(0, num_items, (pending.size, width))
            valid = ~seen[(pending - first_user)[:, None], candidates]
            # A repeat within a row is invalid from its second occurrence on (stable sort keeps draw order).
            order = np.argsort(candidates, axis=1, kind="stable")
            ordered = np.take_along_axis(candidates, order, axis=1)
            repeat = np.zeros_like(valid)
            np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
            valid &= ~repeat
            rank = np.cumsum(valid, axis=1)
            done = rank[:, -1] >= num_negatives
            take = valid[done] & (rank[done] <= num_negatives)
            result[pending[done]] = candidates[done][take].reshape(-1, num_negatives)
            pending = pending[~done]
        for user in pending:  # after three unlucky rounds (very unlikely), draw exactly
            exact_draw(user)
    return result


SPLITS = ("leave_one_out", "ratio", "time_ratio", "random")


def split_interactions(data, min_interactions, num_negatives, seed, progress, split="leave_one_out",
                       test_fraction=0.2, validation=False, validation_fraction=0.1, known=(None, None), old=None):
    """Apply the protocol to raw interactions: de-duplicate, filter, hold out the test (and validation) items, and,
    for leave-one-out, sample each user's test (and validation) negatives.

    ``split``: 'leave_one_out' holds out each user's latest interaction (with ``validation``, the one before it
    too); 'ratio' a random ``test_fraction`` of each user's items (NGCF/LightGCN), 'time_ratio' the latest share;
    with ``validation``, a ``validation_fraction`` of each user's remaining items is held out the same way.
    ``known``: the (user, item) id maps of a dataset being extended (``index_known``); ``old``: that dataset's pairs
    and their parts (``OldParts``), which keep a training pair in training (``_held_out_rows``).
    """
    rng = np.random.default_rng(seed)
    needed = max(min_interactions, 3 if validation and split == "leave_one_out" else 2)
    rows, users, items, counts, user_ids, item_ids, summary = leave_last_out(data, needed, rng, progress, known)
    num_users, num_items = user_ids.size, item_ids.size
    is_test, is_validation = _held_out_rows(users, counts, rng, split, test_fraction, validation, validation_fraction,
                                            None if old is None else old.of(users, items, num_items))
    negatives = validation_negatives = None
    if split == "leave_one_out" and num_negatives:
        _check_negatives_feasible(data, counts, user_ids, num_items, num_negatives)
        negatives = sample_test_negatives(users, items, counts, num_items, num_negatives, rng)
        if validation:
            validation_negatives = sample_test_negatives(users, items, counts, num_items, num_negatives, rng)
        progress(f"sampled {num_negatives} test negatives for each of {num_users:,} users"
                 + (", and as many validation negatives" if validation else ""))
    is_train = ~(is_test | is_validation)
    extra = {}
    for name, values in (("timestamps", data.timestamps), ("ratings", data.ratings)):
        if values is not None:
            for part, chosen in (("train", is_train), ("test", is_test), ("validation", is_validation)):
                if chosen.any():
                    extra[f"{part}_{name}"] = values[rows[chosen]]
    return Split(
        train=np.stack([users[is_train], items[is_train]], 1).astype(np.int32),
        test=np.stack([users[is_test], items[is_test]], 1).astype(np.int32),
        test_negatives=negatives, user_ids=user_ids, item_ids=item_ids, titles=data.titles,
        extra_arrays=extra, counts=summary,
        protocol=_protocol(split, data.timestamps is not None, needed, test_fraction, validation,
                           validation_fraction, num_negatives > 0),
        validation=np.stack([users[is_validation], items[is_validation]], 1).astype(np.int32) if validation
        else None, validation_negatives=validation_negatives)


def split_ratings(data, seed, progress, test_data=None, test_fraction=0.2, validation=False, validation_fraction=0.1,
                  max_words=20000, skip_top=0, known=(None, None), old=None):
    """The splits of rating prediction, with every rating kept as given: a random ``test_fraction`` of all
    interactions held out (fastai's random split), or, with ``test_data``, that file's rows as the test set
    (MovieLens ``u1.base`` / ``u1.test``), the ids of both files indexed together. A repeated (user, item) pair
    within a file keeps its latest row (by time, then file order). With ``validation``, a random
    ``validation_fraction`` of the training rows is held out. No user or item is dropped and no negatives are drawn;
    a test user or item with no training row keeps its index (a model predicts it from biases and the mean). With
    review text, each part's reviews become word indices over a vocabulary counted on the training reviews alone
    (``max_words`` and ``skip_top``: ``textdata.build_vocabulary``). ``known`` and ``old``: as
    ``split_interactions``'s."""
    rng = np.random.default_rng(seed)
    parts = [data] if test_data is None else [data, test_data]
    file_of = np.concatenate([np.full(part.users.size, number) for number, part in enumerate(parts)])
    user_codes, user_ids = index_known(np.concatenate([part.users for part in parts]), known[0])
    item_codes, item_ids = index_known(np.concatenate([part.items for part in parts]), known[1])
    num_rows, num_users, num_items = file_of.size, user_ids.size, item_ids.size
    columns = {}
    for name in ("timestamps", "ratings"):
        if all(getattr(part, name) is not None for part in parts):
            columns[name] = np.concatenate([getattr(part, name) for part in parts])
    progress(f"indexed {num_users:,} users and {num_items:,} items")
    kept = _latest_rows((file_of * num_users + user_codes) * num_items + item_codes, columns.get("timestamps"))
    progress(f"kept the latest of {num_rows - kept.size:,} repeated (user, item) pairs")
    is_test, is_validation = _rating_held_out(kept, file_of, rng, test_data, test_fraction,
                                              validation_fraction if validation else 0.0,
                                              None if old is None else old.of(user_codes, item_codes, num_items))
    by_user = kept[np.argsort(user_codes[kept], kind="stable")]  # rows sorted by user, file order within a user

    def pairs(chosen):
        rows = by_user[chosen[by_user]]
        return np.stack([user_codes[rows], item_codes[rows]], 1).astype(np.int32), rows

    train, train_rows = pairs(~(is_test | is_validation))
    test, test_rows = pairs(is_test)
    held, validation_rows = pairs(is_validation)
    extra = {f"{part}_{name}": values[rows] for name, values in columns.items()
             for part, rows in (("train", train_rows), ("test", test_rows), ("validation", validation_rows))
             if rows.size}
    vocabulary = None
    if all(part.texts is not None for part in parts):
        texts = np.concatenate([part.texts for part in parts])
        vocabulary, text_arrays = _encode_texts(texts, {"train": train_rows, "test": test_rows,
                                                        "validation": validation_rows}, max_words, skip_top, progress)
        extra |= text_arrays
    summary = {"input_rows": int(num_rows), "duplicates_dropped": int(num_rows - kept.size), "users_dropped": 0,
               "interactions_of_dropped_users": 0, "items_dropped": 0, **cold_counts(train, test)}
    protocol = _rating_protocol(test_data, test_fraction, validation, validation_fraction,
                                vocabulary is not None and {"max_words": max_words, "skip_top": skip_top})
    return Split(train=train, test=test, test_negatives=None, user_ids=user_ids, item_ids=item_ids,
                 titles={**(test_data.titles if test_data is not None else {}), **data.titles}, extra_arrays=extra,
                 counts=summary, protocol=protocol, validation=held if validation else None, vocabulary=vocabulary)


def _rating_held_out(kept, file_of, rng, test_data, test_fraction, validation_fraction, old=None):
    """(is_test, is_validation) bool masks over the rows of ``split_ratings``: the test file's rows, or a random
    ``test_fraction`` of the ``kept`` ones; then a random ``validation_fraction`` (0: none) of the rest. ``old`` (each
    row's part in a dataset being extended, as ``_held_out_rows``'s): the old rows keep their parts, and the held-out
    counts the fractions give all the kept rows are made up from the new ones, drawn at random."""
    is_test = np.zeros(file_of.size, dtype=bool)
    is_validation = np.zeros(file_of.size, dtype=bool)
    new = kept if old is None else kept[old[kept] == NEW]
    if old is not None:
        is_test[kept[old[kept] == OLD_TEST]] = True
        is_validation[kept[old[kept] == OLD_VALIDATION]] = True
    if test_data is None:
        shuffled = rng.permutation(new)
        num_test = int(np.clip(np.rint(test_fraction * kept.size), 1, kept.size - 1)) - int(is_test.sum())
        is_test[shuffled[:max(num_test, 0)]] = True
    else:
        is_test = file_of == 1
        if not is_test[kept].any() or is_test[kept].all():
            raise ConversionError(f"{test_data.source.get('path', 'the test file')}: the training or the test file "
                                  "has no rows; pass both files with rows")
    if validation_fraction:
        training = kept[~is_test[kept]]
        drawn = rng.permutation(new[~is_test[new]])
        wanted = int(np.rint(validation_fraction * training.size)) - int(is_validation.sum())
        is_validation[drawn[:max(wanted, 0)]] = True
    return is_test, is_validation


def _latest_rows(pair, timestamps):
    """The sorted rows that are the latest of their ``pair`` (a key per row: file, user and item), by time (None:
    all at once), then by row."""
    when = np.zeros(pair.size, dtype=np.int64) if timestamps is None else timestamps
    order = np.lexsort((np.arange(pair.size), when, pair))
    last = np.ones(pair.size, dtype=bool)
    last[:-1] = pair[order][1:] != pair[order][:-1]
    return np.sort(order[last])


def _rating_protocol(test_data, test_fraction, validation, validation_fraction, text):
    """metadata.json's protocol of ``split_ratings`` (``text``: the vocabulary's settings, or False)."""
    if test_data is None:
        split = f"random: {test_fraction:g} of all interactions drawn with the seed are test interactions"
    else:
        split = f"test file: the rows of {test_data.source.get('path', 'the test file')} are the test interactions"
    split += f"; then {validation_fraction:g} of the rest drawn as validation" if validation else ""
    protocol = {"split": split, "name": "random" if test_data is None else "test_file",
                "duplicates": "repeated (user, item) pairs within a file: the latest row kept, its rating as given",
                "min_interactions": 1, "validation": bool(validation)}
    if test_data is None:
        protocol["test_fraction"] = test_fraction
    if validation:
        protocol["validation_fraction"] = validation_fraction
    if text:
        protocol["text"] = {"tokens": "lower case, runs of letters and digits", "vocabulary": "the training reviews'",
                            **text}
    return protocol


def _encode_texts(texts, rows_of, max_words, skip_top, progress):
    """((words, counts), {part_text, part_text_offsets: arrays}): the vocabulary of the training reviews, and every
    part's reviews as word indices over it."""
    tokens = {part: [textdata.tokenise(texts[row]) for row in rows] for part, rows in rows_of.items() if rows.size}
    words, counts = textdata.build_vocabulary(tokens["train"], max_words, skip_top)
    index = {word: number for number, word in enumerate(words)}
    arrays, empty = {}, 0
    for part, part_tokens in tokens.items():
        arrays[f"{part}_text"], arrays[f"{part}_text_offsets"] = textdata.encode(part_tokens, index)
        empty += int((np.diff(arrays[f"{part}_text_offsets"]) == 0).sum())
    progress(f"kept {len(words):,} words of the training reviews; {empty:,} of {sum(map(len, tokens.values())):,} "
             "reviews have none of them")
    return (words, counts), arrays


def random_ranks(users, rng, num_users):
    """Each row's place (0, 1, ...) among the rows of its user (``users`` [n] indices below ``num_users``), in a
    random order drawn from ``rng``."""
    order = np.lexsort((rng.random(users.size), users))
    starts = np.concatenate(([0], np.cumsum(np.bincount(users, minlength=num_users))[:-1]))
    ranks = np.empty(users.size, dtype=np.int64)
    ranks[order] = np.arange(users.size) - starts[users[order]]
    return ranks


def hold_out_validation(split, fraction, seed):
    """``split`` (given test files without a validation set, such as NGCF/LightGCN's) with a random ``fraction`` of
    each user's training pairs held out as its validation set (drawn with ``seed``; at least one pair left to train
    on); the test set as given."""
    rng = np.random.default_rng(seed)
    train = split.train[np.lexsort((split.train[:, 1], split.train[:, 0]))]
    users = train[:, 0].astype(np.int64)
    counts = np.bincount(users, minlength=split.user_ids.size)
    position = random_ranks(users, rng, split.user_ids.size)
    held = np.clip(np.rint(fraction * counts), 0, np.maximum(counts - 1, 0))
    is_validation = position < held[users]
    protocol = {**split.protocol, "validation": True, "validation_fraction": fraction,
                "split": f"{split.protocol.get('split', 'as given')}; then the random {fraction:g} of each user's "
                         "training pairs (at least one left to train on) drawn with the seed as validation"}
    return dataclasses.replace(split, train=train[~is_validation], validation=train[is_validation],
                               validation_negatives=None, protocol=protocol,
                               counts={**split.counts, "validation_pairs": int(is_validation.sum())})


def _held_out_rows(users, counts, rng, split, test_fraction, validation, validation_fraction, old=None):
    """(is_test, is_validation) bool masks over the rows (sorted by user, then time).

    ``old`` (the part of each row in a dataset being extended: ``OLD_TRAIN``, ``OLD_VALIDATION``, ``OLD_TEST``, or
    ``NEW``; None: no such dataset): a pair the old dataset trained on stays a training pair, so a model warm-started
    from it is never tested on a pair it saw. Under the time protocols the held-out rows are the latest of the others
    (the old held-out pairs and the new ones); under ``ratio`` the old pairs keep their parts and each user's new
    pairs make up the held-out counts the protocol gives the user's pairs in all, drawn at random."""
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    per_user = counts[users]
    rows = np.arange(users.size)
    fixed = np.zeros(users.size, dtype=bool) if old is None else old != NEW
    if split == "ratio":  # a random order within each user, drawn with the seed (the user's new pairs last)
        order = np.lexsort((rng.random(users.size), ~fixed, users))
    else:  # the latest last (a pair the old dataset trained on first)
        order = rows if old is None else np.lexsort((rows, old != OLD_TRAIN, users))
    position = np.empty(users.size, dtype=np.int64)
    position[order] = rows - starts[users[order]]
    from_end = per_user - 1 - position
    if split == "leave_one_out":
        num_test = np.ones_like(counts)
        num_validation = np.full_like(counts, int(validation))
    else:
        num_test = np.clip(np.rint(test_fraction * counts), 1, counts - 1).astype(np.int64)
        num_validation = np.clip(np.rint(validation_fraction * (counts - num_test)), 0, counts - num_test - 1
                                 ).astype(np.int64) if validation else np.zeros_like(counts)
    if old is not None:
        if split == "ratio":  # what the old parts hold counts; the rest is drawn from the new pairs
            def held(part):
                return np.bincount(users[old == part], minlength=counts.size)
            free = np.bincount(users[~fixed], minlength=counts.size)
            num_test = np.clip(num_test - held(OLD_TEST), 0, free)
            num_validation = np.clip(num_validation - held(OLD_VALIDATION), 0, free - num_test)
        else:  # at most the pairs the old dataset did not train on
            free = np.bincount(users[old != OLD_TRAIN], minlength=counts.size)
            num_test = np.minimum(num_test, free)
            num_validation = np.minimum(num_validation, free - num_test)
    is_test = from_end < num_test[users]
    is_validation = ~is_test & (from_end < (num_test + num_validation)[users])
    if old is not None and split == "ratio":
        is_test |= old == OLD_TEST
        is_validation |= old == OLD_VALIDATION
    return is_test, is_validation


def _check_negatives_feasible(data, counts, user_ids, num_items, num_negatives):
    most = int(counts.max())
    if num_items - most < num_negatives:
        heaviest = user_ids[int(np.argmax(counts))]
        feasible = num_items - most
        raise ConversionError(
            f"{data.source.get('path', 'input')}: cannot draw {num_negatives} test negatives for user {heaviest}, "
            f"who interacted with {most:,} of the {num_items:,} items; pass --valid_negative {max(feasible, 0)} or less"
            + (" (or --min_interactions to drop such users)" if feasible < 1 else ""))


def _protocol(split, timed, min_interactions, test_fraction, validation, validation_fraction, test_negatives=True):
    """The metadata's description of a split."""
    if split == "leave_one_out":
        text = ("leave-one-out by time: each user's latest interaction is the test item; ties in time go to the row "
                "that comes later in the input" if timed else
                "leave-one-out at random (the input has no time column): the test item is drawn with the seed")
        text += "; the one before it is the validation item" if validation else ""
    else:
        which = "latest" if split == "time_ratio" and timed else "random"
        text = (f"{split}: the {which} {test_fraction:g} of each user's items (at least one, and one left to train) "
                "are test items" + (f"; then the {which} {validation_fraction:g} of the rest validation items"
                                    if validation else ""))
    protocol = {"split": text, "name": split, "duplicates": "repeated (user, item) pairs dropped, the earliest kept",
                "min_interactions": min_interactions, "validation": bool(validation)}
    if split != "leave_one_out":
        protocol |= {"test_fraction": test_fraction, **({"validation_fraction": validation_fraction}
                                                         if validation else {})}
    if split == "leave_one_out" and test_negatives:
        protocol["test_negatives"] = "uniform without repeats among items the user never interacted with"
    return protocol


def generated_interactions(shape=None, seed=0):
    """The built-in demo (``shape`` None) or a synthetic set of ``shape`` (users, items, interactions), as
    Interactions; deterministic in ``seed``."""
    sizes = DEMO_SHAPE if shape is None else dict(zip(("num_users", "num_items", "num_interactions"), shape))
    try:
        rows = synthetic_interactions(**sizes, seed=seed)
    except ValueError as error:
        raise ConversionError(f"--synthetic: {error}") from None
    return Interactions(users=rows["user"], items=rows["item"], timestamps=rows["timestamp"], ratings=rows["rating"],
                        source={"format": "demo" if shape is None else "synthetic", **sizes, "seed": seed})


def generated_split(shape=None, seed=0, num_negatives=100):
    """``generated_interactions`` split as ``convert.py --dataset demo`` (or ``--synthetic``) splits it, in memory:
    the built-in demo of ``ncf.py`` and the synthetic sets of the benchmarks."""
    return split_interactions(generated_interactions(shape, seed), 2, num_negatives, seed, lambda message: None)
