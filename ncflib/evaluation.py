"""Evaluation metrics, returned as dicts keyed by their logged names (``hr@10``, ``ndcg@10``, ``test_loss``).

Sampled ranking (NVIDIA's and the NCF paper's protocol): each test user's held-out item is ranked among its sampled
negatives.

    mask = candidate_mask(dataset.test_items, dataset.test_negatives)
    metrics = sampled_metrics(model, dataset, topk=10, users_per_batch=4096, autocast=contextlib.nullcontext,
                              mask=mask)
    metrics["hr@10"], metrics["ndcg@10"], metrics["test_loss"]

Full ranking (NGCF/LightGCN's protocol): every item the user has not trained on is a candidate; HR@k, Recall@k,
NDCG@k and MRR@k over the user's held-out items, from one top-k routine (``top_k``).

    seen = [interactions_by_user(dataset.train_users, dataset.train_items, dataset.num_users)]
    metrics = full_metrics(model, dataset.test, seen, dataset.num_items, 20, 256, contextlib.nullcontext)

Under torchrun each rank scores its share of the users and the sums are all-reduced once, so every rank gets the
figures of a single-process evaluation.
"""

import collections
import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ncflib.protocols import DotProductScorer, FastRanker, RanksCandidates, SparseScorer, traits


@dataclass(frozen=True)
class Selection:
    """Which epoch is best: the one with the best value of ``metric``, higher or lower being better."""

    metric: str
    higher_is_better: bool = True

    @property
    def worst(self):
        return -math.inf if self.higher_is_better else math.inf

    def improves(self, value, best):
        return value > best if self.higher_is_better else value < best

    def reaches(self, value, target):
        """Whether ``value`` meets a target (``--threshold``): at least it, or at most it when lower is better."""
        return value >= target if self.higher_is_better else value <= target


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


SAMPLED_SUMS = ("hits", "ndcg", "loss", "candidates", "users")


@torch.no_grad()
def sampled_sums(model, held, topk, users_per_batch, autocast, rank=0, world_size=1, mask=None, score=None):
    """This rank's sums over its share of the users of ``held`` (a dataloading.HeldOut with negatives, or a Dataset
    for its test set), as a float64 tensor [5] in the order of ``SAMPLED_SUMS``
    (hits, NDCG, BCE loss over the counted candidates, counted candidates, users): sums, so that ranks can
    all-reduce them and divide once.

    ``model.score(users [B], items [B, C])`` gives the logits of each user's candidates (see neumf.py); ``score``
    replaces it (a compiled form of it, say); a model without ``score`` scores each pair through ``forward``. A model
    whose scoring is a collective (its traits' ``lockstep``: sharded tables) is called as many times on every rank:
    a rank with fewer users scores a spare batch it does not count.
    """
    held = getattr(held, "test", held)  # a Dataset stands for its test set
    mask = candidate_mask(held.items, held.negatives) if mask is None else mask
    score = score or (model.score if isinstance(model, RanksCandidates) else (
        lambda users, items: model(users[:, None].expand_as(items), items)))
    num_users = held.users.numel()
    share = math.ceil(num_users / world_size)
    totals = torch.zeros(5, dtype=torch.float64, device=held.users.device)
    starts = range(rank * share, min(num_users, (rank + 1) * share), users_per_batch)
    if traits(model).lockstep:
        for _ in range(math.ceil(share / users_per_batch) - len(starts)):  # rank 0's count of batches, the most
            score(held.users[:1], torch.cat([held.items[:1, None], held.negatives[:1]], dim=1))
    for start in starts:
        stop = min(start + users_per_batch, (rank + 1) * share, num_users)
        users = held.users[start:stop]
        items = torch.cat([held.items[start:stop, None], held.negatives[start:stop]], dim=1)
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


def sampled_metrics(model, held, topk, users_per_batch, autocast, mask=None, rank=0, world_size=1, score=None):
    """HR@k, NDCG@k and the mean BCE loss over the counted candidates, over every user of ``held`` (a HeldOut with
    negatives, or a Dataset for its test set; all ranks together):
    ``{"hr@k", "ndcg@k", "test_loss", "eval_samples"}``, the last being the candidates scored (``test_loss``: the
    BCE of ``held``'s candidates, whichever set it is; the evaluator names the validation set's ``valid_loss``)."""
    if model is not None:  # None: ``score`` alone scores (an ensemble's averaged logits, say)
        model.eval()
    totals = sampled_sums(model, held, topk, users_per_batch, autocast, rank, world_size, mask, score)
    if world_size > 1:
        dist.all_reduce(totals)
    sums = dict(zip(SAMPLED_SUMS, totals.tolist()))
    return {f"hr@{topk}": sums["hits"] / sums["users"], f"ndcg@{topk}": sums["ndcg"] / sums["users"],
            "test_loss": sums["loss"] / sums["candidates"], "eval_samples": sums["candidates"]}


def timed(evaluate):
    """``evaluate()``'s metrics, with its wall time (``validation_epoch_time``) and the candidates it scored per
    second (``eval_throughput``) in place of their count."""
    started = time.perf_counter()
    metrics = evaluate()
    seconds = time.perf_counter() - started
    return metrics | {"eval_throughput": metrics.pop("eval_samples") / seconds, "validation_epoch_time": seconds}


# -------------------------------------------------------------------------------------------------- full ranking


FULL_SUMS = ("hr", "recall", "ndcg", "mrr", "users")


def interactions_by_user(users, items, num_users):
    """(offsets [num_users + 1], items [N]) of (user, item) pairs grouped by user: user u's items are
    ``items[offsets[u]:offsets[u + 1]]``. What full ranking excludes from a user's candidates."""
    order = torch.argsort(users, stable=True)
    counts = torch.bincount(users, minlength=num_users)
    offsets = torch.zeros(num_users + 1, dtype=torch.int64, device=users.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets, items[order]


def ragged_rows(offsets, starts, ends):
    """(row of each element, flat positions) of the slices ``[starts[j], ends[j])`` of a flat array, row j."""
    lengths = ends - starts
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(rows.numel(), device=rows.device) - first[rows] + starts[rows]
    return rows, positions


def exclude_seen(scores, users, seen):
    """Set to -inf, in place, the scores [B, I] of the items each of ``users`` [B] has in ``seen`` (an
    ``interactions_by_user`` pair): those items are not candidates."""
    offsets, items = seen
    rows, positions = ragged_rows(offsets, offsets[users], offsets[users + 1])
    scores[rows, items[positions]] = -math.inf
    return scores


def top_k(scores, k):
    """(scores [B, k], items [B, k]) of the k best candidates of each row, best first: the top-k routine of full
    ranking and of recommendations. Excluded candidates carry -inf."""
    return torch.topk(scores, min(k, scores.shape[1]), dim=1)


def full_rank_sums(scores, held_items, rows, counts, topk):
    """Sums of HR@k, Recall@k, NDCG@k and MRR@k over the users of ``scores`` [B, I] (excluded items at -inf),
    whose held-out items are ``held_items`` [T] (row ``rows`` [T]; ``counts`` [B] items per user).

    A held-out item's position is the number of other candidates scoring at least as high (ties count against
    it, so a constant model scores 0); it is a hit when that is below k. Recall@k is hits over the user's held-out
    items, NDCG@k's ideal DCG is over min(k, those items), MRR@k is 1 / (first hit's position + 1). Only the top
    k + 1 and, where the k-th score is tied beyond them, that score's ties are looked at, never a sort of every
    candidate.
    """
    # One candidate past k: a tie at the k-th score outside the top k shows there, so only the rows that have one
    # (rare with real-valued scores) are counted over every candidate.
    wide_scores, wide_items = top_k(scores, topk + 1)
    top_scores, top_items = wide_scores[:, :topk], wide_items[:, :topk]
    kth = top_scores[:, -1]
    ties_outside = torch.zeros(kth.shape, dtype=torch.int64, device=scores.device)
    if wide_scores.shape[1] > top_scores.shape[1]:
        tied = (wide_scores[:, -1] == kth).nonzero().squeeze(1)
        if tied.numel():
            ties_outside[tied] = ((scores[tied] == kth[tied, None]).sum(1)
                                  - (top_scores[tied] == kth[tied, None]).sum(1))
    held_scores = scores[rows, held_items]  # [T]
    in_top = (top_items[rows] == held_items[:, None]).any(1)
    ahead = (top_scores[rows] >= held_scores[:, None]).sum(1) - in_top.long()
    ahead = ahead + torch.where(held_scores == kth[rows], ties_outside[rows] - (~in_top).long(), 0)
    hit = (held_scores >= kth[rows]) & (ahead < topk) & (held_scores > -math.inf)
    batch = scores.shape[0]
    hits = torch.zeros(batch, dtype=torch.float64, device=scores.device).index_add_(0, rows, hit.double())
    gains = torch.where(hit, 1.0 / torch.log2(ahead.double() + 2.0), torch.zeros((), dtype=torch.float64,
                                                                                  device=scores.device))
    dcg = torch.zeros(batch, dtype=torch.float64, device=scores.device).index_add_(0, rows, gains)
    discounts = 1.0 / torch.log2(torch.arange(topk, dtype=torch.float64, device=scores.device) + 2.0)
    ideal = torch.cumsum(discounts, 0)[counts.clamp(max=topk) - 1]
    first = torch.full((batch,), topk, dtype=torch.int64, device=scores.device).scatter_reduce(
        0, rows, torch.where(hit, ahead, topk), "amin")
    reciprocal = torch.where(first < topk, 1.0 / (first.double() + 1.0), 0.0)
    return torch.stack([(hits > 0).double().sum(), (hits / counts).sum(), (dcg / ideal).sum(), reciprocal.sum(),
                        torch.tensor(float(batch), dtype=torch.float64, device=scores.device)])


def all_item_scorer(model, score=None):
    """A function users [B] -> logits [B, num_items] for every item, for one pass with ``model``'s weights fixed:
    ``score`` when given (a compiled ``score_all``), else the model's ``all_item_scorer()`` (which prepares its item
    side once; call it under the pass's autocast) when it has one, else ``model.score_all``."""
    if score is not None:
        return score
    return model.all_item_scorer() if isinstance(model, FastRanker) else model.score_all


DOT_PRODUCT_SCORES = 2**21  # a chunk of a dot-product model's scores (docs/training.md, "Full ranking")


def ranks_in_large_chunks(model):
    """Whether ``model``'s scores cost no features per (user, item): one product of user and item vectors
    (a DotProductScorer), or a model whose traits say so (``large_chunks``, as EASE's sums of rows)."""
    return isinstance(model, DotProductScorer) or traits(model).large_chunks


def users_per_full_chunk(num_items, device, max_scores=2**20, model=None):
    """How many users to score against every item at once: chunks of at most ``max_scores`` scores, and of 2^16
    on a CPU, where a tower's features per score make larger chunks slower (ML-1M's NeuMF); a model that
    ``ranks_in_large_chunks`` takes chunks of at least ``DOT_PRODUCT_SCORES``, as on a large catalogue a chunk of
    one or two users spends its time on the per-chunk work instead."""
    if model is not None and ranks_in_large_chunks(model):
        return max(1, max(max_scores, DOT_PRODUCT_SCORES) // num_items)
    cap = 2**16 if torch.device(device).type == "cpu" else 2**20
    return max(1, min(max_scores, cap) // num_items)


@contextlib.contextmanager
def product_threads():
    """(a pool of threads for sparse products, how many): as many as torch's threads (scipy's products let go of
    the GIL), with torch's own threads down to one meanwhile (two pools of busy threads on the same cores slow each
    other: OpenMP's threads spin while they wait)."""
    count = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, count)) as pool:
            yield pool, max(1, count)
    finally:
        torch.set_num_threads(count)


def ahead(pool, work, items, window=2):
    """``work(item)`` for each of ``items``, in order, computed on ``pool`` up to ``window`` items ahead of the
    one yielded."""
    running = collections.deque()
    for item in items:
        running.append(pool.submit(work, item))
        if len(running) > window:
            yield running.popleft().result()
    while running:
        yield running.popleft().result()


COMPACT_ENTRIES = 2**24  # users x items of a chunk of full ranking from listed scores: its listed entries at most


class CompactScores:
    """Full ranking of a ``SparseScorer``, a chunk of users at a time, without a users x items matrix. Each user's
    compact row holds every listed candidate scoring at least the user's cut (the (k + 1 + s)-th largest listed
    score, s the user's seen items: at least k + 1 candidates score that much, so every candidate of the top k and
    every tie of the k-th is there), the held-out items among them, and, for a user whose row holds every listed
    score (or whose cut is 0), their held-out items that are not listed and k + 1 of their other candidates, all
    scoring 0. A held-out item left out scores below k candidates, never a hit: it points at a -inf column. So
    ``full_rank_sums`` of the compact rows equals that of the dense rows. Candidates are every item but those in
    ``seen``."""

    def __init__(self, num_items, seen, topk):
        self.num_items, self.seen, self.topk = num_items, seen, topk
        self.users = max(1, COMPACT_ENTRIES // num_items)

    def __call__(self, entries, users, held_rows, held_items):
        """(scores [B, L] with -inf beyond each row's candidates, the held-out items' columns [T]) of the chunk's
        ``users`` [B], given their ``entries`` (``score_entries``) and held-out pairs (held_rows, held_items)."""
        rows, items, values = entries
        batch, device = users.numel(), users.device
        seen_rows, seen_items = [], []
        for offsets, part in self.seen:
            owners, positions = ragged_rows(offsets, offsets[users], offsets[users + 1])
            seen_rows.append(owners)
            seen_items.append(part[positions])
        seen_rows, seen_items = torch.cat(seen_rows), torch.cat(seen_items)
        seen_counts = torch.bincount(seen_rows, minlength=batch)
        cut = _cuts(rows, values, batch, self.topk + 1 + seen_counts)
        kept = values >= cut[rows]
        rows, items, values = rows[kept], items[kept], values[kept]
        keys = rows * self.num_items + items
        candidate = ~torch.isin(keys, seen_rows * self.num_items + seen_items)
        rows, keys, values = rows[candidate], keys[candidate], values[candidate]
        listed = torch.bincount(rows, minlength=batch)
        columns = torch.arange(rows.numel(), device=device) - (torch.cumsum(listed, 0) - listed)[rows]
        # The held-out items' places: found among the kept keys (sorted once), else a column of 0 or of -inf.
        ordered, order = torch.sort(keys)
        held_keys = held_rows * self.num_items + held_items
        place = torch.searchsorted(ordered, held_keys).clamp(max=max(ordered.numel() - 1, 0))
        found = (ordered[place] == held_keys) if ordered.numel() else torch.zeros_like(held_keys, dtype=torch.bool)
        held_columns = torch.where(found, columns[order[place]] if ordered.numel() else held_keys, -1)
        complete = cut <= 0  # every listed score is in the row: unlisted candidates score 0, as its lowest
        zero_held = ~found & complete[held_rows]
        extra_rows = held_rows[zero_held]
        extra = torch.bincount(extra_rows, minlength=batch)
        held_columns[zero_held] = listed[extra_rows] + torch.arange(extra_rows.numel(), device=device) - (
            torch.cumsum(extra, 0) - extra)[extra_rows]
        others = torch.where(complete, (self.num_items - seen_counts - listed - extra).clamp(min=0, max=self.topk + 1),
                             0)
        filled = listed + extra + others
        width = int(filled.max()) + 1 if batch else 1  # (one -inf column at least, for held-out items left out)
        held_columns[held_columns < 0] = width - 1
        scores = torch.full((batch, width), -math.inf, device=device)
        scores[rows, columns] = values.float()
        span = torch.arange(width, device=device)[None, :]
        scores[(span >= listed[:, None]) & (span < filled[:, None])] = 0.0
        return scores, held_columns


def _cuts(rows, values, batch, need):
    """[B] each row's ``need``-th largest value among its entries (rows given grouped, in order), or -inf for a
    row with no more than ``need`` entries."""
    counts = torch.bincount(rows, minlength=batch)
    cut = torch.full((batch,), -math.inf, dtype=values.dtype, device=values.device)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    for members, best, _ in tops_of_rows(offsets, values, (counts > need).nonzero().squeeze(1), need):
        cut[members] = best.gather(1, (need[members] - 1)[:, None]).squeeze(1)
    return cut


def tops_of_rows(offsets, values, rows, take):
    """The ``take`` largest values of each of ``rows`` [R] of a ragged array (row r's entries at
    ``offsets[r]:offsets[r + 1]`` of ``values``), each row having more than that: for each group of rows of similar
    length (one ``topk`` per power of two of length, so no row is padded to more than twice its length), yields
    (the group's rows [m], their best values [m, t], best first, and those values' positions in ``values``
    [m, t]), t being ``take`` (an int) or the group's largest of ``take`` (a tensor over all rows)."""
    counts = offsets[rows + 1] - offsets[rows]
    sizes = torch.ceil(torch.log2(counts.double())).long()
    for size in sizes.unique().tolist():
        group = sizes == size
        members, lengths = rows[group], counts[group]
        span = torch.arange(int(lengths.max()), device=values.device)
        index = (offsets[members][:, None] + span).clamp(max=values.numel() - 1)
        padded = torch.where(span < lengths[:, None], values[index], -math.inf)
        best, where = padded.topk(take if isinstance(take, int) else int(take[members].max()), dim=1)
        yield members, best, index.gather(1, where)


@torch.no_grad()
def full_sums(model, held, seen, topk, users_per_chunk, autocast, rank=0, world_size=1, score=None):
    """This rank's sums over its share of ``held``'s users (a dataloading.HeldOut), in the order of ``FULL_SUMS``:
    every item is a candidate but those in ``seen`` (``interactions_by_user`` of the training pairs, and of the
    validation pairs when testing). Chunked over users: never a users x items matrix."""
    num_users = held.users.numel()
    share = math.ceil(num_users / world_size)
    totals = torch.zeros(len(FULL_SUMS), dtype=torch.float64, device=held.users.device)
    if score is None and isinstance(model, SparseScorer) and held.users.device.type == "cpu":
        compact = CompactScores(model.num_items, seen, topk)
        chunks = [(start, min(start + compact.users, (rank + 1) * share, num_users))
                  for start in range(rank * share, min(num_users, (rank + 1) * share), compact.users)]
        with product_threads() as (pool, threads):  # (the next chunks' scores are summed while this one is ranked)
            listed = ahead(pool, lambda chunk: model.score_entries(held.users[chunk[0]:chunk[1]]), chunks,
                           window=threads)
            for (start, stop), entries in zip(chunks, listed):
                starts, ends = held.offsets[start:stop], held.offsets[start + 1:stop + 1]
                rows, positions = ragged_rows(held.offsets, starts, ends)
                scores, columns = compact(entries, held.users[start:stop], rows, held.items[positions])
                totals += full_rank_sums(scores, columns, rows, ends - starts, topk)
        return totals
    with autocast():
        score = all_item_scorer(model, score)
    for start in range(rank * share, min(num_users, (rank + 1) * share), users_per_chunk):
        stop = min(start + users_per_chunk, (rank + 1) * share, num_users)
        users = held.users[start:stop]
        with autocast():
            scores = score(users).float()  # [B, I]
        for part in seen:
            exclude_seen(scores, users, part)
        starts, ends = held.offsets[start:stop], held.offsets[start + 1:stop + 1]
        rows, positions = ragged_rows(held.offsets, starts, ends)
        totals += full_rank_sums(scores, held.items[positions], rows, ends - starts, topk)
    return totals


def full_metrics(model, held, seen, num_items, topk, users_per_chunk, autocast, rank=0, world_size=1, score=None):
    """HR@k, Recall@k, NDCG@k and MRR@k over every user of ``held`` (all ranks together), as a dict; plus
    ``eval_samples``, the (user, item) pairs scored."""
    if model is not None:
        model.eval()
    totals = full_sums(model, held, seen, topk, users_per_chunk, autocast, rank, world_size, score)
    if world_size > 1:
        dist.all_reduce(totals)
    sums = dict(zip(FULL_SUMS, totals.tolist()))
    users = max(sums["users"], 1.0)
    return {f"hr@{topk}": sums["hr"] / users, f"recall@{topk}": sums["recall"] / users,
            f"ndcg@{topk}": sums["ndcg"] / users, f"mrr@{topk}": sums["mrr"] / users,
            "eval_samples": sums["users"] * num_items}


RATING_SUMS = ("squared_error", "absolute_error", "count")


@torch.no_grad()
def rating_metrics(model, users, items, ratings, batch_size, autocast, text=None):
    """RMSE, MAE and MSE of ``model``'s predictions for the pairs (``users``, ``items``) against ``ratings`` (1-d
    tensors), in batches of ``batch_size``, accumulated in float64; ``eval_samples``, the pairs predicted. With
    ``text`` (a ``textdata.Ragged`` of the pairs' reviews), the model is given each batch's words as well."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    sums = torch.zeros(len(RATING_SUMS), dtype=torch.float64, device=users.device)
    for start in range(0, users.numel(), batch_size):
        rows = torch.arange(start, min(start + batch_size, users.numel()), device=users.device)
        side = () if text is None else text.take(rows)
        with autocast():
            predicted = model(users[rows], items[rows], *side)
        errors = predicted.double() - ratings[start:start + batch_size].double()
        sums += torch.stack([(errors ** 2).sum(), errors.abs().sum(), torch.tensor(errors.numel(), dtype=torch.float64,
                                                                                   device=errors.device)])
    squared, absolute, count = sums.tolist()
    count = max(count, 1.0)
    return {"rmse": math.sqrt(squared / count), "mae": absolute / count, "mse": squared / count,
            "eval_samples": sums[2].item()}


# ------------------------------------------------------------------------------------------------ one evaluation


PROTOCOLS = ("sampled", "full")


def protocol_problem(dataset, protocol, topk):
    """Why ``protocol`` at k cannot evaluate ``dataset`` (one line), or None."""
    sampled = protocol == "sampled"
    if sampled and dataset.test.negatives is None:
        return (f"{dataset.path}: has {dataset.test.items.numel():,} test items for {dataset.test.users.numel():,} "
                "users and no sampled negatives, which sampled evaluation needs (one test item per user); pass "
                "--eval_protocol full")
    candidates = dataset.candidates_per_user if sampled else dataset.num_items
    if topk >= candidates:
        return (f"-k/--topk {topk} is not below the {candidates} candidates ranked per test user, so every user "
                "would count as a hit; pass a smaller -k")
    return None


def selection_metric(dataset, protocol, topk):
    """The metric a run selects its best epoch on: HR@k (sampled) or Recall@k (full) of the validation set when the
    dataset has one (``valid_`` prefixed), else of the test set."""
    return f"{'valid_' if dataset.validation is not None else ''}{'hr' if protocol == 'sampled' else 'recall'}@{topk}"


def default_batch_samples(device):
    """``--valid_batch_size``'s default: NVIDIA's 2^20 samples a batch on a GPU, 2^14 on a CPU, where a batch's
    activations then stay in the caches (faster than larger batches there; docs/history.md)."""
    return 2**14 if torch.device(device).type == "cpu" else 2**20


def held_out_sets(dataset):
    """[(metric prefix, HeldOut)]: the test set (unless the dataset is ``without_test``), then the validation set
    when the dataset has one."""
    return ([("", dataset.test)] if dataset.test is not None else []) + (
        [("valid_", dataset.validation)] if dataset.validation is not None else [])


def evaluator(model, dataset, protocol, topk, batch_samples, autocast, rank=0, world_size=1, compile_mode=None):
    """A function returning the metrics of ``model`` (the plain module) as one dict: the test set's under their
    names, the validation set's (when there is one) prefixed ``valid_``, and ``eval_samples``, the pairs scored.

    ``protocol`` 'sampled' ranks each held-out item among its negatives (``batch_samples`` candidates a batch);
    'full' ranks every item the user has not trained on (for the test set, nor held out for validation), in chunks
    of users of at most ``batch_samples`` scores (capped at 2^16 on a CPU, 2^20 on a GPU). ``compile_mode``:
    torch.compile the scoring. ``batch_samples`` None: ``default_batch_samples``.
    """
    batch_samples = batch_samples or default_batch_samples(dataset.train_users.device)
    sets = held_out_sets(dataset)
    if protocol == "sampled":
        score = torch.compile(model.score, mode=compile_mode) if compile_mode else None
        runs = [(prefix, _sampled_run(model, held, topk, batch_samples, autocast, rank, world_size, score))
                for prefix, held in sets]
    else:
        score = torch.compile(model.score_all, mode=compile_mode) if compile_mode else None
        train = interactions_by_user(dataset.train_users, dataset.train_items, dataset.num_users)
        seen = {"": [train], "valid_": [train]}
        if dataset.validation is not None:  # the test set's candidates exclude the validation items too
            validation = dataset.validation
            validation_users = torch.repeat_interleave(validation.users, validation.offsets.diff())
            seen[""].append(interactions_by_user(validation_users, validation.items, dataset.num_users))
        users_per_chunk = users_per_full_chunk(dataset.num_items, dataset.train_users.device, batch_samples, model)
        runs = [(prefix, lambda held=held, prefix=prefix: full_metrics(
            model, held, seen[prefix], dataset.num_items, topk, users_per_chunk, autocast, rank, world_size, score))
            for prefix, held in sets]

    def evaluate():
        metrics, scored = {}, 0.0
        for prefix, run in runs:
            result = run()
            scored += result.pop("eval_samples")
            metrics.update({"valid_loss" if prefix and key == "test_loss" else prefix + key: value
                            for key, value in result.items()})
        return metrics | {"eval_samples": scored}

    return evaluate


def _sampled_run(model, held, topk, batch_samples, autocast, rank, world_size, score):
    mask = candidate_mask(held.items, held.negatives)
    users_per_batch = max(1, batch_samples // (1 + held.negatives.shape[1]))
    return lambda: sampled_metrics(model, held, topk, users_per_batch, autocast, mask, rank, world_size, score)
