"""Evaluation metrics, returned as dicts keyed by their logged names (``hr@10``, ``ndcg@10``, ``validation_loss``).

Sampled ranking (NVIDIA's and the NCF paper's protocol): each test user's held-out item is ranked among its sampled
negatives.

    mask = candidate_mask(dataset.test_items, dataset.test_negatives)
    metrics = sampled_metrics(model, dataset, topk=10, users_per_batch=4096, autocast=contextlib.nullcontext,
                              mask=mask)
    metrics["hr@10"], metrics["ndcg@10"], metrics["validation_loss"]

Under torchrun each rank scores its share of the users and the sums are all-reduced once, so every rank gets the
figures of a single-process evaluation.
"""

import math
import time

import torch
import torch.distributed as dist


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
def sampled_sums(model, dataset, topk, users_per_batch, autocast, rank=0, world_size=1, mask=None, score=None):
    """This rank's sums over its share of the test users, as a float64 tensor [5] in the order of ``SAMPLED_SUMS``
    (hits, NDCG, BCE loss over the counted candidates, counted candidates, users): sums, so that ranks can
    all-reduce them and divide once.

    ``model.score(users [B], items [B, C])`` gives the logits of each user's candidates (see neumf.py); ``score``
    replaces it (a compiled form of it, say).
    """
    mask = candidate_mask(dataset.test_items, dataset.test_negatives) if mask is None else mask
    score = model.score if score is None else score
    num_users = dataset.test_users.numel()
    share = math.ceil(num_users / world_size)
    totals = torch.zeros(5, dtype=torch.float64, device=dataset.test_users.device)
    for start in range(rank * share, min(num_users, (rank + 1) * share), users_per_batch):
        stop = min(start + users_per_batch, (rank + 1) * share, num_users)
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


def sampled_metrics(model, dataset, topk, users_per_batch, autocast, mask=None, rank=0, world_size=1, score=None):
    """HR@k, NDCG@k and the mean BCE loss over the counted candidates, over every test user (all ranks together):
    ``{"hr@k", "ndcg@k", "validation_loss", "eval_samples"}``, the last being the candidates scored."""
    if model is not None:  # None: ``score`` alone scores (an ensemble's averaged logits, say)
        model.eval()
    totals = sampled_sums(model, dataset, topk, users_per_batch, autocast, rank, world_size, mask, score)
    if world_size > 1:
        dist.all_reduce(totals)
    sums = dict(zip(SAMPLED_SUMS, totals.tolist()))
    return {f"hr@{topk}": sums["hits"] / sums["users"], f"ndcg@{topk}": sums["ndcg"] / sums["users"],
            "validation_loss": sums["loss"] / sums["candidates"], "eval_samples": sums["candidates"]}


def timed(evaluate):
    """``evaluate()``'s metrics, with its wall time (``validation_epoch_time``) and the candidates it scored per
    second (``eval_throughput``) in place of their count."""
    started = time.perf_counter()
    metrics = evaluate()
    seconds = time.perf_counter() - started
    return metrics | {"eval_throughput": metrics.pop("eval_samples") / seconds, "validation_epoch_time": seconds}
