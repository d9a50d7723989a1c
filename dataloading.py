"""Dataset directory -> device tensors; training batches with negatives drawn on the device; evaluation.

Data stays on the device: the dataset is loaded once, each epoch's order and negatives come from a seeded
``torch.Generator`` on the device, and batches are slices of device tensors. Nothing in the training loop copies
to the host or synchronises (no ``.item()``): the loop only queues work.

Reads the directory written by ``convert.py`` (``metadata.json`` + ``.npy`` arrays, loaded without pickle) and the
directory written by NVIDIA's DeepLearningExamples ``convert.py`` (``feature_spec.yaml`` + ``.pt`` tensors, loaded
with ``weights_only=True``).
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DatasetError(Exception):
    """A --data directory that cannot be used: the message names the file and the problem."""


@dataclass
class Dataset:
    num_users: int
    num_items: int
    train_users: torch.Tensor  # [N] int64
    train_items: torch.Tensor  # [N] int64
    test_users: torch.Tensor  # [U] int64
    test_items: torch.Tensor  # [U] int64
    test_negatives: torch.Tensor  # [U, K] int64
    fingerprint: str
    path: str
    train_timestamps: np.ndarray | None = None  # [N] int64, host memory only: read once, to weight by recency
    train_weights: torch.Tensor | None = None  # [N] float32, each positive's loss weight (--recency); None: all 1

    @property
    def num_train(self):
        return self.train_users.numel()

    def to(self, device):
        moved = {name: getattr(self, name).to(device) for name in
                 ("train_users", "train_items", "test_users", "test_items", "test_negatives")}
        weights = None if self.train_weights is None else self.train_weights.to(device)
        return Dataset(self.num_users, self.num_items, fingerprint=self.fingerprint, path=self.path,
                       train_timestamps=self.train_timestamps, train_weights=weights, **moved)


def load_dataset(path):
    """Load a dataset directory (ours or NVIDIA's) onto the CPU, checking shapes and ranges."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a directory; create a dataset with convert.py and pass it with --data")
    if (path / "metadata.json").is_file():
        return _load_ours(path)
    if (path / "feature_spec.yaml").is_file():
        return _load_nvidia(path)
    raise DatasetError(f"{path}: no metadata.json (convert.py) or feature_spec.yaml (NVIDIA) here; "
                       "create a dataset with convert.py")


def _load_array(file, mmap=False):
    try:
        return np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise DatasetError(f"{file}: missing; re-create the dataset with convert.py") from None
    except (ValueError, OSError, EOFError) as error:
        raise DatasetError(f"{file}: corrupted or not a .npy array ({str(error)[:80]}); re-create it with "
                           "convert.py") from None


def _load_ours(path):
    try:
        metadata = json.loads((path / "metadata.json").read_text())
        num_users, num_items = int(metadata["num_users"]), int(metadata["num_items"])
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path / 'metadata.json'}: unreadable or incomplete ({error})") from None
    train, test, negatives = (_load_array(path / f"{name}.npy") for name in ("train", "test", "test_negatives"))
    from convert import dataset_fingerprint  # the one definition of a dataset's identity

    # Mapped, not read: only --recency uses the times, and on ML-20M they are 160 MB.
    timestamps = (_load_array(path / "train_timestamps.npy", mmap=True) if (path / "train_timestamps.npy").is_file()
                  else None)
    return _checked(path, num_users, num_items, train, test, negatives,
                    metadata.get("fingerprint") or dataset_fingerprint(train, test, negatives), timestamps)


def _load_nvidia(path):
    """NVIDIA's layout: feature_spec.yaml naming torch tensors for the train and test channels."""
    import yaml

    try:
        spec = yaml.safe_load((path / "feature_spec.yaml").read_text())
        features = spec["feature_spec"]
        user_name, item_name = spec["channel_spec"]["user_ch"][0], spec["channel_spec"]["item_ch"][0]
        num_users = int(features[user_name]["cardinality"])
        num_items = int(features[item_name]["cardinality"])
        sources = spec["source_spec"]
    except (yaml.YAMLError, KeyError, TypeError, IndexError, ValueError) as error:
        raise DatasetError(f"{path / 'feature_spec.yaml'}: not a feature spec this tool understands ({error})") \
            from None

    def read(mapping):
        columns = {}
        for chunk in sources[mapping]:
            if chunk.get("type") != "torch_tensor":
                raise DatasetError(f"{path / 'feature_spec.yaml'}: {mapping} source type {chunk.get('type')!r} is "
                                   "not supported (only torch_tensor)")
            tensors = []
            for file in chunk["files"]:
                try:
                    tensors.append(torch.load(path / file, map_location="cpu", weights_only=True))
                except (OSError, RuntimeError, EOFError) as error:
                    raise DatasetError(f"{path / file}: cannot load ({str(error)[:80]})") from None
            data = torch.cat(tensors)  # [rows, features]: one column per feature
            if data.dim() == 1:
                data = data[:, None]
            if data.shape[1] != len(chunk["features"]):
                raise DatasetError(f"{path / chunk['files'][0]}: has {data.shape[1]} columns for features "
                                   f"{chunk['features']}")
            for index, name in enumerate(chunk["features"]):
                columns[name] = data[:, index]
        return columns

    train_columns, test_columns = read("train"), read("test")
    # NVIDIA's test channel holds one series of test_samples_per_series consecutive rows per user: the positive
    # (label 1, last in their converter's output) and the user's negatives.
    per_user = int((spec.get("metadata") or {}).get("test_samples_per_series", 0))
    test_users, test_items = test_columns[user_name].reshape(-1), test_columns[item_name].reshape(-1)
    if per_user < 2 or test_users.numel() % per_user:
        raise DatasetError(f"{path / 'feature_spec.yaml'}: metadata.test_samples_per_series must be at least 2 and "
                           f"divide the {test_users.numel()} test rows")
    users, items = test_users.view(-1, per_user), test_items.view(-1, per_user)
    label_name = spec["channel_spec"].get("label_ch", [None])[0]
    if label_name in test_columns:
        labels = test_columns[label_name].reshape(-1, per_user)
        if not torch.equal((labels > 0).sum(1), torch.ones(labels.shape[0], dtype=torch.long)):
            raise DatasetError(f"{path}: every test series needs exactly one positive (label 1)")
        positive = labels.argmax(1)
    else:
        positive = torch.full((users.shape[0],), per_user - 1)
    rows = torch.arange(users.shape[0])
    others = torch.ones_like(items, dtype=torch.bool)
    others[rows, positive] = False
    negatives = items[others].view(-1, per_user - 1)
    test = torch.stack([users[rows, positive], items[rows, positive]], 1)
    order = torch.argsort(test[:, 0])
    if not torch.equal(test[order, 0], torch.arange(num_users)):
        raise DatasetError(f"{path}: this tool needs exactly one test series per user")
    train = torch.stack([train_columns[user_name].reshape(-1), train_columns[item_name].reshape(-1)], 1).numpy()
    test, negatives = test[order].numpy(), negatives[order].numpy()
    from convert import dataset_fingerprint

    return _checked(path, num_users, num_items, train, test, negatives, dataset_fingerprint(train, test, negatives))


def dataset_from_split(split, name):
    """A Dataset straight from convert.py's in-memory Split (the built-in demo needs no files)."""
    from convert import dataset_fingerprint

    fingerprint = dataset_fingerprint(split.train, split.test, split.test_negatives)
    return _checked(name, split.user_ids.size, split.item_ids.size, split.train, split.test, split.test_negatives,
                    fingerprint, split.extra_arrays.get("train_timestamps"))


def _checked(path, num_users, num_items, train, test, negatives, fingerprint, train_timestamps=None):
    if num_users < 1 or num_items < 2:
        raise DatasetError(f"{path}: needs at least one user and two items (has {num_users} and {num_items})")
    for name, array, columns in (("train", train, 2), ("test", test, 2)):
        if array.ndim != 2 or array.shape[1] != columns or array.shape[0] == 0:
            raise DatasetError(f"{path}: {name} array has shape {array.shape}, expected [rows > 0, 2]")
    if negatives.ndim != 2 or negatives.shape[0] != test.shape[0]:
        raise DatasetError(f"{path}: test_negatives has shape {negatives.shape}, expected [{test.shape[0]}, K]")
    for name, array, limit in (("train users", train[:, 0], num_users), ("train items", train[:, 1], num_items),
                               ("test users", test[:, 0], num_users), ("test items", test[:, 1], num_items),
                               ("test negatives", negatives, num_items)):
        if array.size and (array.min() < 0 or array.max() >= limit):
            raise DatasetError(f"{path}: {name} lie outside [0, {limit}); the dataset is corrupted or its "
                               "metadata does not match it")
    if train_timestamps is not None:
        if train_timestamps.shape != (train.shape[0],) or not np.issubdtype(train_timestamps.dtype, np.integer):
            raise DatasetError(f"{path}: train_timestamps has shape {train_timestamps.shape} and type "
                               f"{train_timestamps.dtype}, expected [{train.shape[0]}] integers (one per training "
                               "pair); re-create the dataset with convert.py")
        train_timestamps = train_timestamps.astype(np.int64, copy=False)

    def tensor(array):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))

    return Dataset(num_users, num_items, tensor(train[:, 0]), tensor(train[:, 1]), tensor(test[:, 0]),
                   tensor(test[:, 1]), tensor(negatives), fingerprint, str(path), train_timestamps)


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


# ------------------------------------------------------------------------------------------------------ training


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
    split into chunks of ``batch_size / (1 + n)``; each chunk is followed by its ``n`` negatives per positive. The
    last chunk may be smaller. With several ranks, each takes its own slice of every global batch: ``generator``
    (which orders the positives) must then be seeded alike on every rank, and ``negative_generator`` (default
    ``generator``) differently, so that each rank draws its own negatives.

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


# ---------------------------------------------------------------------------------------------------- evaluation


def candidate_mask(test_items, test_negatives):
    """[U, K] bool: negatives that count when ranking. A negative equal to the held-out item, or repeating an
    earlier negative of the same user, is ignored (the NCF paper's ML-1M file has 156 of the former)."""
    mask = test_negatives != test_items[:, None]
    sorted_negatives, order = torch.sort(test_negatives, dim=1, stable=True)
    repeat = torch.zeros_like(mask)
    repeat.scatter_(1, order[:, 1:], sorted_negatives[:, 1:] == sorted_negatives[:, :-1])
    return mask & ~repeat


def rank_metrics(positive_scores, negative_scores, mask, topk):
    """HR@k and NDCG@k sums from scores. ``positive_scores`` [B], ``negative_scores`` [B, K], ``mask`` [B, K].

    The rank (0-based) of the positive is the number of counted negatives scoring at least as high, so a tie counts
    against the positive and a constant model scores 0. Returns (hits, ndcg) as 0-d tensors (sums over the batch).
    """
    rank = ((negative_scores >= positive_scores[:, None]) & mask).sum(dim=1)
    hit = rank < topk
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.double() + 2.0), torch.zeros((), dtype=torch.double,
                                                                                  device=rank.device))
    return hit.sum(), ndcg.sum()


@torch.no_grad()
def evaluate(model, dataset, topk, batch_users, autocast, rank=0, world_size=1, mask=None, score=None):
    """HR@k, NDCG@k and the mean BCE loss over all candidates, for this rank's share of the test users.

    ``model.score(users [B], items [B, C])`` gives the logits of each user's candidates (see neumf.py); ``score``
    replaces it (a compiled form of it, say).

    Returns sums (hits, ndcg, loss sum, candidates, users) as a float64 tensor [5], so ranks can all-reduce them
    and divide once: the result equals a single-process evaluation.
    """
    mask = candidate_mask(dataset.test_items, dataset.test_negatives) if mask is None else mask
    score = model.score if score is None else score
    num_users = dataset.test_users.numel()
    share = math.ceil(num_users / world_size)
    totals = torch.zeros(5, dtype=torch.float64, device=dataset.test_users.device)
    for start in range(rank * share, min(num_users, (rank + 1) * share), batch_users):
        stop = min(start + batch_users, (rank + 1) * share, num_users)
        users = dataset.test_users[start:stop]
        items = torch.cat([dataset.test_items[start:stop, None], dataset.test_negatives[start:stop]], dim=1)
        with autocast():
            logits = score(users, items).float()  # [B, 1 + K]
        batch_mask = mask[start:stop]
        hits, ndcg = rank_metrics(logits[:, 0], logits[:, 1:], batch_mask, topk)
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        weight = torch.cat([torch.ones_like(logits[:, :1]), batch_mask.float()], dim=1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=weight, reduction="sum")
        totals += torch.stack([hits.double(), ndcg, loss.double(), weight.sum().double(),
                               torch.tensor(stop - start, dtype=torch.float64, device=totals.device)])
    return totals
