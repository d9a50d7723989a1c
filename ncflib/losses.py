"""The implicit family's losses (``--loss``), on a batch's positive scores and their negatives' scores.

Each takes ``positive`` [B] (a positive pair's score) and ``negative`` [B, N] (its N negatives' scores, drawn per
positive or shared by the batch) and returns the loss summed over the batch's positives:

- ``bce``: binary cross-entropy of each score against its label (NVIDIA's, the paper's);
- ``bpr``: pairwise, -log sigmoid(positive - negative), averaged over each positive's negatives (Rendle et al. 2009);
- ``softmax``: sampled softmax, -log of the positive's share of exp(score / temperature) among itself and its
  negatives; with ``log_q`` (the log of each negative's expected draws, N q_j for N draws from q) the negatives'
  scaled scores are corrected by -log(N q_j) (the logQ correction of Yi et al., RecSys 2019), so the sum over the
  sample estimates the full softmax's over the catalogue;
- ``ccl``: SimpleX's cosine contrastive loss (Mao et al., CIKM 2021) on cosine scores: (1 - positive) plus
  ``negative_weight`` times the mean over negatives of max(0, negative - ``margin``).

    total = LOSSES["softmax"](positive, negative, weights=None, temperature=0.1)

``weights`` [B] (None: all 1) counts each positive's loss that many times (``--recency``).
"""

import torch
from torch import nn

LOSSES_HELP = "bce, bpr, softmax or ccl"


def _weighted_sum(per_positive, weights):
    return per_positive.sum() if weights is None else (per_positive * weights).sum()


def bce(positive, negative, weights=None, **_):
    """Summed BCE: each positive against 1, each of its negatives against 0."""
    per_positive = (nn.functional.softplus(-positive.float())
                    + nn.functional.softplus(negative.float()).sum(-1))
    return _weighted_sum(per_positive, weights)


def bpr(positive, negative, weights=None, **_):
    """Bayesian personalised ranking: -log sigmoid(positive - negative), the mean over each positive's negatives."""
    per_positive = nn.functional.softplus(negative.float() - positive.float()[:, None]).mean(-1)
    return _weighted_sum(per_positive, weights)


def softmax(positive, negative, weights=None, temperature=1.0, log_q=None, **_):
    """Sampled softmax: -log(exp(p / t) / (exp(p / t) + sum exp(n_j / t))); ``log_q`` [N] or [B, N] (the log of
    each negative's expected draws) is subtracted from the negatives' scaled scores (the logQ correction)."""
    negative = negative.float() if temperature == 1.0 else negative.float() / temperature
    if log_q is not None:
        negative = negative - log_q
    positive = positive.float() / temperature
    # log(exp(p) + sum exp(n_j)) - p without joining p to the [B, N] scores
    per_positive = torch.logaddexp(positive, torch.logsumexp(negative, dim=1)) - positive
    return _weighted_sum(per_positive, weights)


def ccl(positive, negative, weights=None, margin=0.8, negative_weight=1.0, **_):
    """SimpleX's cosine contrastive loss on cosine scores: (1 - positive) + w * mean_j max(0, negative_j - m)."""
    per_positive = (1.0 - positive.float()) + negative_weight * torch.relu(negative.float() - margin).mean(-1)
    return _weighted_sum(per_positive, weights)


LOSSES = {"bce": bce, "bpr": bpr, "softmax": softmax, "ccl": ccl}


def masked_hits(negative, positive_items, negative_items):
    """``negative`` [B, N] with the scores of shared negatives (``negative_items`` [N]) that are the row's own
    positive item set to -inf, which every loss here counts as no negative (a zero term). In place: the few
    (row, column) pairs are found by searching the sorted negatives, not by comparing every row with every one."""
    ordered, order = torch.sort(negative_items)
    first = torch.searchsorted(ordered, positive_items)
    counts = torch.searchsorted(ordered, positive_items, right=True) - first  # [B] how often each row's item was drawn
    if not bool(counts.any()):
        return negative
    rows = torch.repeat_interleave(torch.arange(positive_items.numel(), device=negative.device), counts)
    within = torch.arange(rows.numel(), device=negative.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts)
    negative[rows, order[first[rows] + within]] = float("-inf")
    return negative
