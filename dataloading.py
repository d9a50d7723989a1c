"""Dataset directory -> device tensors, and the training batches, with negatives drawn on the device.

Data stays on the device: the dataset is loaded once, each epoch's order and negatives come from a seeded
``torch.Generator`` on the device, and batches are slices of device tensors. Nothing in the training loop copies
to the host or synchronises (no ``.item()``): the loop only queues work.

Loads the directory written by ``convert.py`` or by NVIDIA's DeepLearningExamples ``convert.py`` (its files are read
by ``ncflib.data.layout``, without pickle) and checks the arrays. The batch makers (``ImplicitBatches``,
``RatingBatches``) yield ``Batch``es, which the training loop takes whatever the model family.
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ncflib.data import layout
from ncflib.data.layout import split_fingerprint
from ncflib.errors import DatasetError
from ncflib.textdata import Ragged


def moved_to(data, device):
    """A copy of the dataclass ``data`` with every tensor field on ``device`` (and every field that is itself such
    a dataclass, moved the same way); host arrays and other values stay as they are."""
    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        return moved_to(value, device) if dataclasses.is_dataclass(value) else value

    return dataclasses.replace(data, **{field.name: move(getattr(data, field.name))
                                        for field in dataclasses.fields(data) if field.init})


def epoch_seed(seed, epoch):
    """The seed of an epoch's batches and dropout. Seeding by (seed, epoch) makes each epoch independent
    of what ran before, so a resumed run repeats an uninterrupted one exactly."""
    return seed * 1_000_003 + epoch * 7919


@dataclass(frozen=True)
class HeldOut:
    """Held-out interactions (a test or validation set): each listed user's items, and, when every user has exactly
    one, the sampled negatives it is ranked against (sampled evaluation)."""

    users: torch.Tensor  # [U] int64, strictly increasing: the users with held-out items
    offsets: torch.Tensor  # [U + 1] int64: user j's items are items[offsets[j]:offsets[j + 1]]
    items: torch.Tensor  # [T] int64
    negatives: torch.Tensor | None = None  # [U, K] int64, K >= 1; only with one item per user
    ratings: torch.Tensor | None = None  # [T] float32, each held-out item's rating, when the dataset has ratings
    text: Ragged | None = None  # each held-out item's review as word indices, when the dataset has review text

    @classmethod
    def from_pairs(cls, pairs, negatives=None, ratings=None, text=None):
        """From (user, item) rows [T, 2] sorted by user, optional negatives [U, K] and ratings [T] (numpy), and
        the rows' reviews (a ``textdata.Ragged``)."""
        users, counts = np.unique(pairs[:, 0], return_counts=True)
        offsets = np.concatenate(([0], np.cumsum(counts)))

        def tensor(array):
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))

        return cls(tensor(users), tensor(offsets), tensor(pairs[:, 1]),
                   None if negatives is None else tensor(negatives),
                   None if ratings is None else torch.from_numpy(np.asarray(ratings, dtype=np.float32)), text)

    @property
    def one_per_user(self):
        return self.items.numel() == self.users.numel()

    def to(self, device):
        return moved_to(self, device)


@dataclass(frozen=True)
class Dataset:
    """An implicit-feedback dataset as tensors: the training pairs, the test set and, when the split has one, a
    validation set (``HeldOut``: per user the held-out items, and with one item per user its sampled negatives).
    Build one with ``Dataset.from_arrays`` (which checks it) or ``load_dataset``."""

    num_users: int
    num_items: int
    train_users: torch.Tensor  # [N] int64
    train_items: torch.Tensor  # [N] int64
    test: HeldOut
    fingerprint: str
    path: str
    validation: HeldOut | None = None
    # Host memory only (memory-mapped when loaded from files: only the options that use them read them).
    train_timestamps: np.ndarray | None = None  # [N] int64
    train_ratings: np.ndarray | None = None  # [N] float
    train_weights: torch.Tensor | None = None  # [N] float32, each positive's loss weight (--recency); None: all 1
    train_text: Ragged | None = None  # each training pair's review as word indices, when the dataset has text
    vocabulary: tuple | None = None  # (words, counts) of vocab.csv: what the word indices mean
    validation_timestamps: np.ndarray | None = None  # [V] int64, host memory: the validation pairs' times (--refit)

    @classmethod
    def from_arrays(cls, num_users, num_items, train, test, test_negatives, path, train_timestamps=None,
                    train_ratings=None, validation=None, validation_negatives=None, test_ratings=None,
                    validation_ratings=None, texts=None, vocabulary=None, validation_timestamps=None):
        """Check the arrays and build the dataset; a DatasetError naming ``path`` otherwise. ``train`` [N, 2] and
        ``test`` [T, 2] are (user, item) rows, the test rows sorted by user; ``test_negatives`` [U, K] (or None,
        for splits with several test items per user) holds each test user's sampled negatives; ``validation`` and
        ``validation_negatives`` the same for a validation set; ``texts`` {part: Ragged} the reviews of the
        parts' rows, with their ``vocabulary``. The fingerprint is computed from the arrays."""
        _check_arrays(path, num_users, num_items, train, test, test_negatives)
        if validation is not None:
            _check_arrays(path, num_users, num_items, train, validation, validation_negatives, "validation")
        for name, side, rows in (("train_timestamps", train_timestamps, train), ("train_ratings", train_ratings, train),
                                 ("test_ratings", test_ratings, test), ("validation_ratings", validation_ratings,
                                                                        validation),
                                 ("validation_timestamps", validation_timestamps, validation)):
            if side is not None and (rows is None or side.shape != (rows.shape[0],)):
                raise DatasetError(f"{path}: {name} has shape {side.shape}, expected one per "
                                   f"{name.split('_')[0]} pair; re-create the dataset with convert.py")
        if train_timestamps is not None:
            if not np.issubdtype(train_timestamps.dtype, np.integer):
                raise DatasetError(f"{path}: train_timestamps has shape {train_timestamps.shape} and type "
                                   f"{train_timestamps.dtype}, expected [{train.shape[0]}] integers (one per training "
                                   "pair); re-create the dataset with convert.py")
            train_timestamps = train_timestamps.astype(np.int64, copy=False)
        texts = texts or {}
        for part, rows in (("train", train), ("test", test), ("validation", validation)):
            if part in texts and (rows is None or len(texts[part]) != rows.shape[0]):
                raise DatasetError(f"{path}: {part}_text_offsets.npy holds {len(texts[part]):,} reviews, expected "
                                   f"one per {part} pair; re-create the dataset with convert.py")
        fingerprint = split_fingerprint(train, test, test_negatives, validation, validation_negatives)
        return cls(num_users, num_items, torch.from_numpy(np.ascontiguousarray(train[:, 0], dtype=np.int64)),
                   torch.from_numpy(np.ascontiguousarray(train[:, 1], dtype=np.int64)),
                   HeldOut.from_pairs(test, test_negatives, test_ratings, texts.get("test")), fingerprint, str(path),
                   None if validation is None else HeldOut.from_pairs(validation, validation_negatives,
                                                                      validation_ratings, texts.get("validation")),
                   train_timestamps, train_ratings, train_text=texts.get("train"), vocabulary=vocabulary,
                   validation_timestamps=None if validation_timestamps is None else
                   np.asarray(validation_timestamps).astype(np.int64, copy=False))

    # The leave-one-out test set as earlier versions held it: one item per test user, with its negatives.
    @property
    def test_users(self):
        return self.test.users

    @property
    def test_items(self):
        return self.test.items

    @property
    def test_negatives(self):
        return self.test.negatives

    @property
    def num_train(self):
        return self.train_users.numel()

    @property
    def candidates_per_user(self):
        """Candidates ranked per test user in sampled evaluation: the held-out item and its negatives (0 when the
        test set has no negatives), or every item in full ranking."""
        return 0 if self.test.negatives is None else 1 + self.test.negatives.shape[1]

    def description(self):
        """One line: where the dataset is, its sizes and its held-out sets."""
        test = (f"{self.test.negatives.shape[1]} test negatives per user" if self.test.negatives is not None else
                f"{self.test.items.numel():,} test items")
        validation = "" if self.validation is None else f", {self.validation.items.numel():,} validation items"
        return (f"{self.path} ({self.num_users:,} users, {self.num_items:,} items, {self.num_train:,} training pairs, "
                f"{test}){validation}")

    def to(self, device):
        return moved_to(self, device)

    def with_weights(self, weights):
        """The same dataset with each training pair's loss weight (``weights`` [N] float32, host or device)."""
        return dataclasses.replace(self, train_weights=torch.as_tensor(weights, device=self.train_users.device))

    def weighted_by_recency(self, weight, window):
        """The dataset with each training pair's loss weight 1 + weight * exp(-r / window), r counting the user's
        later training pairs (``recency_ranks``): --recency and --recency_window."""
        if self.train_timestamps is None:
            raise DatasetError(f"--recency needs the training pairs' timestamps, and {self.path} has none (NVIDIA's "
                               "format and convert.py's random splits keep none); convert timestamped data with "
                               "convert.py, or drop --recency")
        times = self.train_timestamps
        if times.min() == times.max():  # e.g. the reconstructed NCF ML-1M training file, whose times are all 0
            raise DatasetError(f"--recency: every training pair of {self.path} has the same timestamp ({times[0]}), "
                               "so none is more recent than another; drop --recency")
        ranks = recency_ranks(self.train_users.cpu().numpy(), times)
        return self.with_weights(recency_weights(ranks, weight, window))

    def with_validation_trained(self):
        """The dataset that a refit trains on (--refit): the validation pairs joined to the training pairs, with
        their ratings, times and reviews where the training pairs have them, and no validation set; the same test
        set and fingerprint (the refit model belongs to this dataset's folder). A DatasetError when the validation
        pairs lack a side the training pairs have."""
        held = self.validation
        if held is None:
            raise DatasetError(f"{self.path}: has no validation split to train on; convert it with --validation")
        users = torch.repeat_interleave(held.users, held.offsets.diff())

        def joined(name, train_side, held_side, join):
            if train_side is None:
                return None
            if held_side is None:
                raise DatasetError(f"{self.path}: the training pairs have {name} and the validation pairs none, so "
                                   "the two cannot be trained on together; re-create the dataset with convert.py")
            return join(train_side, held_side)

        def numpy_join(train_side, held_side):
            return np.concatenate([np.asarray(train_side), np.asarray(held_side).astype(np.asarray(train_side).dtype)])

        def text_join(train_side, held_side):
            return type(train_side)(torch.cat([train_side.values, held_side.values]),
                                    torch.cat([train_side.offsets, held_side.offsets[1:] + train_side.offsets[-1]]))

        return dataclasses.replace(
            self, train_users=torch.cat([self.train_users, users.to(self.train_users.device)]),
            train_items=torch.cat([self.train_items, held.items.to(self.train_items.device)]), validation=None,
            train_timestamps=joined("timestamps", self.train_timestamps, self.validation_timestamps, numpy_join),
            train_ratings=joined("ratings", self.train_ratings,
                                 None if held.ratings is None else held.ratings.cpu().numpy(), numpy_join),
            train_text=joined("review text", self.train_text, held.text, text_join),
            train_weights=None, validation_timestamps=None)

    def without_test(self):
        """The dataset as a --refit run's choice is evaluated on it: its validation set alone (the test set is
        evaluated once, by the refit)."""
        return dataclasses.replace(self, test=None)

    def indexed_counts(self):
        """{"num_users", "num_items"}: one more than the largest user and item index the arrays hold (convert.py
        indexes every user and item it keeps, so a dataset's counts are these: a larger count would size tables
        for users and items that do not exist)."""
        held = [self.test] + ([self.validation] if self.validation is not None else [])
        users = [self.train_users] + [part.users for part in held]
        items = [self.train_items] + [part.items for part in held] + [
            part.negatives.reshape(-1) for part in held if part.negatives is not None]
        return {"num_users": int(max(int(part.max()) for part in users if part.numel())) + 1,
                "num_items": int(max(int(part.max()) for part in items if part.numel())) + 1}

    def original_ids(self, kind):
        """(original ids, titles or None) of ``kind`` 'users' or 'items', by contiguous index, from convert.py's
        ``users.csv``/``items.csv``; (None, None) when the dataset has no id maps (NVIDIA's layout, the demo)."""
        return layout.read_id_map(Path(self.path) / f"{kind}.csv")


def load_dataset(path):
    """Load a dataset directory (ours or NVIDIA's: ``ncflib.data.layout`` reads it) onto the CPU, checking shapes,
    ranges and what its metadata records."""
    arrays, metadata = layout.read_dataset(path)
    dataset = Dataset.from_arrays(**arrays)
    if metadata is not None:
        layout.check_metadata(Path(path), metadata, {
            "num_train": dataset.num_train, "num_test_users": dataset.test.users.numel(),
            "num_test": dataset.test.items.numel(),
            "num_validation": 0 if dataset.validation is None else dataset.validation.items.numel(),
            "test_negatives": 0 if dataset.test.negatives is None else dataset.test.negatives.shape[1],
            "fingerprint": dataset.fingerprint, **dataset.indexed_counts()})
    return dataset


def load_dataset_or_demo(path):
    """The dataset at ``path``, or without one the built-in demo, generated in memory as ``convert.py --dataset
    demo`` writes it (its default seed: the demo is one fixed dataset, whatever a run's own seed)."""
    if path:
        return load_dataset(path)
    from ncflib.data.splits import generated_split  # only the demo needs the splits (and pandas)

    return dataset_from_split(generated_split(), "demo")


def dataset_from_split(split, name):
    """A Dataset straight from convert.py's in-memory Split (the built-in demo needs no files)."""
    return Dataset.from_arrays(split.user_ids.size, split.item_ids.size, split.train, split.test,
                               split.test_negatives, name, split.extra_arrays.get("train_timestamps"),
                               split.extra_arrays.get("train_ratings"), split.validation, split.validation_negatives,
                               split.extra_arrays.get("test_ratings"), split.extra_arrays.get("validation_ratings"),
                               validation_timestamps=split.extra_arrays.get("validation_timestamps"))


def _check_arrays(path, num_users, num_items, train, held, negatives, name="test"):
    """One-line errors for arrays that do not make a dataset: ``held`` is the test (or validation) rows."""
    if num_users < 1 or num_items < 2:
        raise DatasetError(f"{path}: needs at least one user and two items (has {num_users} and {num_items})")
    for part, array in (("train", train), (name, held), (f"{name}_negatives", negatives)):
        if array is not None and not np.issubdtype(array.dtype, np.integer):
            raise DatasetError(f"{path}: the {part} array holds {array.dtype} values, expected integer indices; "
                               "re-create the dataset with convert.py")
    for part, array in (("train", train), (name, held)):
        if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
            raise DatasetError(f"{path}: {part} array has shape {array.shape}, expected [rows > 0, 2]")
    for part, array, limit in (("train users", train[:, 0], num_users), ("train items", train[:, 1], num_items),
                               (f"{name} users", held[:, 0], num_users), (f"{name} items", held[:, 1], num_items),
                               (f"{name} negatives", negatives, num_items)):
        if array is not None and array.size and (array.min() < 0 or array.max() >= limit):
            raise DatasetError(f"{path}: {part} lie outside [0, {limit}); the dataset is corrupted or its "
                               "metadata does not match it")
    steps = np.diff(held[:, 0])
    if negatives is not None:
        if negatives.ndim != 2 or negatives.shape[0] != held.shape[0] or negatives.shape[1] == 0:
            raise DatasetError(f"{path}: {name}_negatives has shape {negatives.shape}, expected [{held.shape[0]}, K] "
                               f"with K >= 1 (sampled evaluation ranks each {name} item among its negatives)")
        if not (steps > 0).all():
            raise DatasetError(f"{path}: {name} rows must hold one user each, in increasing user order (row u: user "
                               "u), and some are repeated or out of order; re-create the dataset with convert.py")
    elif not (steps >= 0).all():
        raise DatasetError(f"{path}: {name} rows must be sorted by user, and some are out of order; re-create the "
                           "dataset with convert.py")


def recency_ranks(users, timestamps):
    """For each training pair, how many of the same user's training pairs are strictly later (0: the user's latest;
    pairs at the same time share a rank, so the stored row order does not matter)."""
    users, timestamps = np.asarray(users, dtype=np.int64), np.asarray(timestamps, dtype=np.int64)
    order = np.lexsort((-timestamps, users))  # by user, latest first
    sorted_users, sorted_times = users[order], timestamps[order]
    position = np.arange(users.size)
    starts = np.ones(users.size, dtype=bool)
    starts[1:] = sorted_users[1:] != sorted_users[:-1]
    new_time = starts.copy()
    new_time[1:] |= sorted_times[1:] != sorted_times[:-1]
    user_start = np.maximum.accumulate(np.where(starts, position, 0))
    time_start = np.maximum.accumulate(np.where(new_time, position, 0))
    ranks = np.empty(users.size, dtype=np.int64)
    ranks[order] = time_start - user_start
    return ranks


def recency_weights(ranks, weight, window):
    """Loss weight of each training pair: 1 + weight * exp(-rank / window), rank counting back from the user's latest
    pair (``recency_ranks``)."""
    return (1.0 + weight * np.exp(-np.asarray(ranks, dtype=np.float64) / window)).astype(np.float32)


def describe_recency(weights, weight, window):
    """One line on what --recency WEIGHT --recency_window WINDOW make of the training pairs' loss weights."""
    return (f"recency: a user's latest pairs count {1 + weight:g} times, those {window:g} pairs earlier "
            f"{1 + weight * math.exp(-1):.3g} times; {float((weights > 2).float().mean()):.0%} of the pairs count "
            f"more than twice (mean weight {float(weights.mean()):.3g})")


# ------------------------------------------------------------------------------------------------------ training


class Batch(NamedTuple):
    """One training batch as the training loop takes it, whatever the family."""

    inputs: tuple  # what the loss function takes
    samples: int  # samples in this rank's part of the batch
    global_samples: int  # samples in the whole batch, every rank's part together


class PositiveSet:
    """Membership test for the training positives, used to draw exact negatives.

    A dense bitmap of num_users x num_items bytes when that is small (ML-1M: 22 MB; a lookup is one gather), sorted
    ``user * num_items + item`` keys otherwise (ML-20M would need 3.7 GB of bitmap; a lookup is a binary search).
    """

    def __init__(self, users, items, num_users, num_items, max_bitmap_bytes=2**28):
        self.num_items = num_items
        keys = users * num_items + items
        if num_users * num_items <= max_bitmap_bytes:
            self.bitmap = torch.zeros(num_users * num_items, dtype=torch.bool, device=keys.device)
            self.bitmap[keys] = True
            self.sorted_keys = None
        else:
            self.bitmap = None
            self.sorted_keys = torch.sort(keys).values

    def contains(self, users, items):
        keys = users * self.num_items + items
        if self.bitmap is not None:
            return self.bitmap[keys]
        where = torch.searchsorted(self.sorted_keys, keys).clamp_(max=self.sorted_keys.numel() - 1)
        return self.sorted_keys[where] == keys


def draw_negatives(users, num_items, generator, positives=None, max_rounds=20):
    """One uniform item per entry of ``users`` (any shape); with ``positives`` (a PositiveSet), never a positive of
    that user: colliding draws are redrawn, round after round, only where they collide.

    Each round costs one host sync (to learn which draws still collide), which is why callers draw for a block of
    batches at once. A user who has nearly every item as a positive could collide forever, so after ``max_rounds``
    the remaining collisions stay; at 20 rounds that needs a user with over 40% of all items to leave even one in
    10^8 draws colliding.
    """
    items = torch.randint(0, num_items, users.shape, generator=generator, device=users.device)
    if positives is None or items.numel() == 0:
        return items
    flat_users, flat_items = users.reshape(-1), items.view(-1)
    pending = torch.arange(flat_items.numel(), device=items.device)
    for _ in range(max_rounds):
        pending = pending[positives.contains(flat_users[pending], flat_items[pending])]
        if pending.numel() == 0:
            break
        flat_items[pending] = torch.randint(0, num_items, pending.shape, generator=generator, device=items.device)
    return items


def epoch_batches(dataset, batch_size, negatives_per_positive, generator, positives=None, rank=0, world_size=1,
                  block_samples=2**22, negative_generator=None):
    """Yield (users, items, labels, weights) batches for one epoch, labels float; weights are each sample's loss
    weight (a negative takes its positive's) when the dataset has ``train_weights``, else None.

    ``batch_size`` counts samples (positives and negatives together, as in NVIDIA's tool). Positives are shuffled and
    split into chunks of ``batch_size / (1 + n)``; each chunk is followed by its ``n`` negatives per positive, in
    ``n`` blocks laid out as the chunk, so that a batch's users are ``1 + n`` copies of the chunk's
    (``ImplicitInputs``). The last chunk may be smaller. With several ranks, each takes its own slice of every global
    batch: ``generator`` (which orders the positives) must then be seeded alike on every rank, and
    ``negative_generator`` (default ``generator``) differently, so that each rank draws its own negatives.

    Negatives are drawn for a block of consecutive batches at once (about ``block_samples`` samples): drawing per
    batch costs some 150 small kernel launches per step, which dominated small-batch training (measured 5.8 ms per
    step on an H100 at batch 2048), while materialising the whole augmented epoch costs memory in proportion to the
    data (NVIDIA keeps 5x the training set on the device). A block bounds both.
    """
    device = dataset.train_users.device
    positives_per_batch = max(1, batch_size // (1 + negatives_per_positive))
    batches_per_block = max(1, block_samples // (positives_per_batch * (1 + negatives_per_positive)))
    order = torch.randperm(dataset.num_train, generator=generator, device=device)
    negative_generator = generator if negative_generator is None else negative_generator
    full_share = math.ceil(positives_per_batch / world_size)
    full_labels = torch.zeros(full_share * (1 + negatives_per_positive), device=device)
    full_labels[:full_share] = 1.0
    for block_start in range(0, dataset.num_train, positives_per_batch * batches_per_block):
        block = order[block_start:block_start + positives_per_batch * batches_per_block]
        chunks = []
        for start in range(0, block.numel(), positives_per_batch):
            chunk = block[start:start + positives_per_batch]
            share = math.ceil(chunk.numel() / world_size)
            chunks.append(chunk[rank * share:(rank + 1) * share])
        mine = torch.cat(chunks)
        users, items = dataset.train_users[mine], dataset.train_items[mine]
        weights = None if dataset.train_weights is None else dataset.train_weights[mine]
        negatives = draw_negatives(users.expand(negatives_per_positive, -1), dataset.num_items,
                                   negative_generator, positives)  # [n, positives in this rank's part of the block]
        offset = 0
        for chunk in chunks:
            stop = offset + chunk.numel()
            batch_users = users[offset:stop]
            if batch_users.numel() == full_share:
                batch_labels = full_labels
            else:
                batch_labels = torch.zeros(batch_users.numel() * (1 + negatives_per_positive), device=device)
                batch_labels[:batch_users.numel()] = 1.0
            yield (torch.cat([batch_users, batch_users.repeat(negatives_per_positive)]),
                   torch.cat([items[offset:stop], negatives[:, offset:stop].reshape(-1)]), batch_labels,
                   None if weights is None else weights[offset:stop].repeat(1 + negatives_per_positive))
            offset = stop


class ImplicitInputs(NamedTuple):
    """One implicit-feedback training batch as the loss functions take it. ``users``, ``items``, ``labels`` and
    ``weights`` as ``epoch_batches`` yields them; ``groups`` says how the batch repeats its users: ``users`` is
    ``groups`` back-to-back copies of its first ``len(users) / groups`` entries (one block for the positives and one
    per negative drawn for each), so a model may look each user up once and broadcast it (1: no such promise)."""
    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None
    groups: int = 1


class ImplicitBatches:
    """One epoch of training batches for the implicit models, as ``training.fit`` takes them: ``len()`` batches, each
    a ``Batch`` whose inputs are ``ImplicitInputs``: (users, items, labels, weights) from ``epoch_batches``, and
    the 1 + n blocks its users repeat in.

    ``seed`` is the epoch's seed (``training.epoch_seed``): the order of the positives comes from it alike on every
    rank (each rank takes its slice of every global batch), the negatives from it and the rank.
    """

    def __init__(self, dataset, batch_size, negatives_per_positive, seed, positives=None, rank=0, world_size=1):
        device = dataset.train_users.device
        self.dataset, self.batch_size, self.negatives = dataset, batch_size, negatives_per_positive
        self.positives, self.rank, self.world_size = positives, rank, world_size
        self.order_generator = torch.Generator(device).manual_seed(seed)
        self.negative_generator = torch.Generator(device).manual_seed(seed + 104_729 * (rank + 1))
        self.positives_per_batch = max(1, batch_size // (1 + negatives_per_positive))

    def __len__(self):
        return math.ceil(self.dataset.num_train / self.positives_per_batch)

    def __iter__(self):
        batches = epoch_batches(self.dataset, self.batch_size, self.negatives, self.order_generator, self.positives,
                                self.rank, self.world_size, negative_generator=self.negative_generator)
        for step, (users, items, labels, weights) in enumerate(batches):
            # The global batch's samples (every rank's slice), known without asking the other ranks.
            global_positives = min(self.positives_per_batch, self.dataset.num_train - step * self.positives_per_batch)
            yield Batch(ImplicitInputs(users, items, labels, weights, 1 + self.negatives), labels.numel(),
                        global_positives * (1 + self.negatives))


class SharedInputs(NamedTuple):
    """A batch of positives whose users all score the same drawn negatives (``SharedNegativeBatches``)."""
    users: torch.Tensor  # [B] the positives' users
    items: torch.Tensor  # [B] their items
    negatives: torch.Tensor  # [N] items every user of the batch scores as negatives
    log_q: torch.Tensor  # [N] log of each negative's expected draws per batch, N q_j (the logQ correction's)
    weights: torch.Tensor | None  # [B] each positive's loss weight (--recency), None: all 1


def negative_distribution(train_items, num_items, beta):
    """[num_items] the probability of drawing each item as a shared negative: its training count to the power
    ``beta`` (0: uniform), every item at least a count of one so that none is never drawn."""
    counts = torch.bincount(train_items, minlength=num_items).double().clamp(min=1.0)
    weights = counts ** beta
    return (weights / weights.sum()).float()


class SharedNegativeBatches:
    """One epoch of batches of ``positives_per_batch`` positives, each with ``negatives`` items drawn once for the
    whole batch (uniformly, or from ``distribution`` [num_items] with replacement), which every user of the batch
    scores: hundreds to thousands of negatives per positive for the cost of one matrix product. Each batch is a
    ``Batch`` of ``SharedInputs`` whose samples are the scored pairs, positives x (1 + negatives).

    ``seed`` is the epoch's seed: the order from it alike on every rank (each takes its share of every global
    batch), the negatives from it and the rank."""

    def __init__(self, dataset, positives_per_batch, negatives, seed, distribution=None, rank=0, world_size=1):
        device = dataset.train_users.device
        self.dataset, self.positives_per_batch, self.negatives = dataset, positives_per_batch, negatives
        self.rank, self.world_size = rank, world_size
        self.order_generator = torch.Generator(device).manual_seed(seed)
        self.negative_generator = torch.Generator(device).manual_seed(seed + 104_729 * (rank + 1))
        self.distribution = distribution
        # log(N q_j): how many times a batch's N draws are expected to hold item j (log(N / items) when uniform)
        self.log_q = (math.log(negatives / dataset.num_items) if distribution is None else
                      (distribution.double() * negatives).log().float())

    def __len__(self):
        return math.ceil(self.dataset.num_train / self.positives_per_batch)

    def draw(self):
        device, num_items = self.dataset.train_users.device, self.dataset.num_items
        if self.distribution is None:
            drawn = torch.randint(num_items, (self.negatives,), generator=self.negative_generator, device=device)
            return drawn, torch.full((self.negatives,), self.log_q, device=device)
        drawn = torch.multinomial(self.distribution, self.negatives, replacement=True,
                                  generator=self.negative_generator)
        return drawn, self.log_q[drawn]

    def __iter__(self):
        dataset = self.dataset
        order = torch.randperm(dataset.num_train, generator=self.order_generator, device=dataset.train_users.device)
        for start in range(0, dataset.num_train, self.positives_per_batch):
            chunk = order[start:start + self.positives_per_batch]
            share = math.ceil(chunk.numel() / self.world_size)
            mine = chunk[self.rank * share:(self.rank + 1) * share]
            negatives, log_q = self.draw()
            weights = None if dataset.train_weights is None else dataset.train_weights[mine]
            yield Batch(SharedInputs(dataset.train_users[mine], dataset.train_items[mine], negatives, log_q, weights),
                        mine.numel() * (1 + self.negatives), chunk.numel() * (1 + self.negatives))


class RatingBatches:
    """One epoch of training batches for the rating models, as ``training.fit`` takes them: the training pairs and
    their ratings in an order drawn from ``seed`` (the epoch's seed), ``batch_size`` at a time; each a
    ``Batch`` whose inputs are (users, items, ratings, None), followed, with ``text`` (a
    ``textdata.Ragged`` of the pairs' reviews), by the batch's words and bag offsets for ``nn.EmbeddingBag``."""

    def __init__(self, users, items, ratings, batch_size, seed, text=None):
        self.users, self.items, self.ratings, self.batch_size = users, items, ratings.float(), batch_size
        self.text = text
        self.generator = torch.Generator(users.device).manual_seed(seed)

    def __len__(self):
        return math.ceil(self.users.numel() / self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.users.numel(), generator=self.generator, device=self.users.device)
        for start in range(0, order.numel(), self.batch_size):
            chosen = order[start:start + self.batch_size]
            side = () if self.text is None else self.text.take(chosen)
            yield Batch((self.users[chosen], self.items[chosen], self.ratings[chosen], None, *side), chosen.numel(),
                        chosen.numel())
