"""Rating models: matrix factorisation as fastai, a course's ClassicMF / KorenMF and SimpleCF write it.

Pure ``nn.Module``s, like neumf.py: no printing, logging or file I/O. ``forward(users, items)`` takes two index
tensors of the same shape and returns predicted ratings of that shape (for ``Dot(binary=True)``, logits).

    model = DotBias(num_users=943, num_items=1682, factors=50, y_range=(0.0, 5.5))
    model.set_mean(3.53)                       # mf and biasmf start from the training ratings' mean
    ratings = model(torch.tensor([0, 1]), torch.tensor([5, 7]))

| kind | prediction |
|---|---|
| ``mf`` | ``u . v + mean`` (ClassicMF: the dot product around the global mean) |
| ``biasmf`` | ``u . v + b_u + b_i + mean`` (KorenMF) |
| ``dotbias`` | ``sigmoid(u . v + b_u + b_i)`` scaled into ``y_range`` (fastai's ``DotProductBias``) |
| ``embnn`` | the joined embeddings through a ReLU tower, scaled into ``y_range`` (fastai's ``EmbeddingNN``) |
| ``dot`` | ``u . v`` (SimpleCF); with ``binary``, a logit for 0/1 data |

Embeddings start from N(0, 0.01) and biases from 0, as fastai's.
"""

import math

import torch
from torch import nn


def squared_error_loss(l2=0.0):
    """The training loss of the rating models (``train.fit``'s loss function): the summed squared error of the
    predictions against a batch's (users, items, ratings, weights, then what else the model reads), in float32,
    each sample counted ``weights`` times (once when None); to minimise, plus ``l2`` times the squared norms of the
    embedding rows the batch looked up (the course's L2 on the rows used, rather than weight decay over every
    row)."""

    def loss(model, inputs, autocast):
        users, items, ratings, weights, *side = inputs  # side: what else the model reads (a review's words)
        with autocast():
            predictions = model(users, items, *side)
        errors = (predictions.float() - ratings) ** 2
        total = errors.sum() if weights is None else (errors * weights).sum()
        if not l2:
            return total, total
        penalty = sum((table(index).float() ** 2).sum() for table, index in model.looked_up(users, items))
        return total, total + l2 * penalty

    return loss


def binary_loss(model, inputs, autocast):
    """SimpleCF's binary variant: summed BCE of the logits against 0/1 labels, reported and minimised alike."""
    users, items, labels, weights = inputs
    with autocast():
        logits = model(users, items)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, weights, reduction="sum")
    return loss, loss


def _check(num_users, num_items, factors, y_range=None, layers=None, dropout=0.0):
    if num_users < 1 or num_items < 1:
        raise ValueError(f"num_users and num_items must be positive, got {num_users} and {num_items}.")
    if factors < 1:
        raise ValueError(f"factors must be positive, got {factors}.")
    if y_range is not None and not (len(y_range) == 2 and math.isfinite(y_range[0]) and math.isfinite(y_range[1])
                                    and y_range[0] < y_range[1]):
        raise ValueError(f"y_range must be two finite numbers, low < high, got {list(y_range)}.")
    if layers is not None and any(size < 1 for size in layers):
        raise ValueError(f"layers must be positive sizes, got {list(layers)}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")


def _table(rows, width, std=0.01):
    table = nn.Embedding(rows, width)
    if std:
        nn.init.normal_(table.weight, std=std)
    else:
        nn.init.zeros_(table.weight)
    return table


def sigmoid_range(x, y_range):
    """``sigmoid(x)`` scaled into (low, high): every prediction strictly inside the range."""
    low, high = y_range
    return torch.sigmoid(x) * (high - low) + low


class Factorisation(nn.Module):
    """What the rating models share: a user and an item table of ``factors`` columns, optional biases, and the
    means to start the tables from given embeddings and to freeze them."""

    def __init__(self, num_users, num_items, factors, biases):
        super().__init__()
        self.user_embedding = _table(num_users, factors)
        self.item_embedding = _table(num_items, factors)
        self.user_bias = _table(num_users, 1, std=0) if biases else None
        self.item_bias = _table(num_items, 1, std=0) if biases else None

    def load_embeddings(self, users=None, items=None):
        """Copy given tables (arrays or tensors of the tables' shapes) into the user and item embeddings; a
        ValueError naming the table when a shape differs."""
        for name, values in (("user", users), ("item", items)):
            if values is None:
                continue
            table = getattr(self, f"{name}_embedding").weight
            values = torch.as_tensor(values, dtype=table.dtype)
            if tuple(values.shape) != tuple(table.shape):
                raise ValueError(f"{name} embeddings of shape {list(values.shape)} do not fit the model's "
                                 f"{list(table.shape)} ({name}s x factors).")
            with torch.no_grad():
                table.copy_(values)
        return self

    def freeze(self, users=False, items=False):
        """Stop training the user and/or item embeddings: the optimizer never sees them, so they stay bit-identical."""
        self.user_embedding.weight.requires_grad_(not users)
        self.item_embedding.weight.requires_grad_(not items)
        return self

    def looked_up(self, users, items):
        """(table, indices) pairs of the rows a batch uses, for the L2 penalty on looked-up rows."""
        pairs = [(self.user_embedding, users), (self.item_embedding, items)]
        if self.user_bias is not None:
            pairs += [(self.user_bias, users), (self.item_bias, items)]
        return pairs

    def dot(self, users, items):
        return (self.user_embedding(users) * self.item_embedding(items)).sum(-1)

    def bias(self, users, items):
        return self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)

    def all_dot(self, users):
        """``dot`` of users [B] with every item [B, num_items] (one product with the item table)."""
        return self.user_embedding(users) @ self.item_embedding.weight.T

    def all_bias(self, users):
        return self.user_bias(users) + self.item_bias.weight.T

    def training_loss(self, l2=0.0):
        """The loss function ``train.fit`` trains this model with."""
        return squared_error_loss(l2)

    def item_vectors(self):
        """{what it is: [num_items, D]}: the item representations ``recommend.py --similar_to`` compares."""
        return {"item factors": self.item_embedding.weight.detach()}

    def user_parameter_names(self):
        """The parameters with one row per user: what a fold-in fits for a new user."""
        return ["user_embedding.weight"] + (["user_bias.weight"] if self.user_bias is not None else [])


class MF(Factorisation):
    """ClassicMF: the dot product around the global mean of the training ratings (``set_mean``)."""

    def __init__(self, num_users, num_items, factors=64):
        _check(num_users, num_items, factors)
        super().__init__(num_users, num_items, factors, biases=False)
        self.register_buffer("mean", torch.zeros(()))

    def set_mean(self, value):
        """Set the global mean the dot product is centred on (the training ratings' mean)."""
        self.mean.fill_(float(value))
        return self

    def forward(self, users, items):
        return self.dot(users, items) + self.mean

    def score_all(self, users):
        return self.all_dot(users) + self.mean


class BiasMF(MF):
    """KorenMF: the dot product, a bias per user and per item, and the global mean."""

    def __init__(self, num_users, num_items, factors=64):
        _check(num_users, num_items, factors)
        Factorisation.__init__(self, num_users, num_items, factors, biases=True)
        self.register_buffer("mean", torch.zeros(()))

    def forward(self, users, items):
        return self.dot(users, items) + self.bias(users, items) + self.mean

    def score_all(self, users):
        return self.all_dot(users) + self.all_bias(users) + self.mean


class DotBias(Factorisation):
    """fastai's DotProductBias: the dot product and both biases through a sigmoid scaled into ``y_range``."""

    def __init__(self, num_users, num_items, factors=64, y_range=(0.0, 5.5)):
        _check(num_users, num_items, factors, y_range)
        super().__init__(num_users, num_items, factors, biases=True)
        self.y_range = tuple(float(value) for value in y_range)

    def forward(self, users, items):
        return sigmoid_range(self.dot(users, items) + self.bias(users, items), self.y_range)

    def score_all(self, users):
        return sigmoid_range(self.all_dot(users) + self.all_bias(users), self.y_range)


class Dot(Factorisation):
    """SimpleCF: a plain dot product; with ``binary``, a logit trained with BCE on 0/1 data."""

    def __init__(self, num_users, num_items, factors=64, binary=False):
        _check(num_users, num_items, factors)
        super().__init__(num_users, num_items, factors, biases=False)
        self.binary = bool(binary)

    def forward(self, users, items):
        return self.dot(users, items)

    def score_all(self, users):
        return self.all_dot(users)

    def training_loss(self, l2=0.0):
        return binary_loss if self.binary else squared_error_loss(l2)


class EmbNN(Factorisation):
    """fastai's EmbeddingNN: the user and item embeddings joined, through Linear-ReLU(-Dropout) layers, to one
    output scaled into ``y_range``."""

    def __init__(self, num_users, num_items, factors=64, layers=(100,), dropout=0.0, y_range=(0.0, 5.5)):
        _check(num_users, num_items, factors, y_range, layers, dropout)
        super().__init__(num_users, num_items, factors, biases=False)
        widths = [2 * factors] + list(layers)
        tower = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            tower += [nn.Linear(width_in, width_out), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        self.tower = nn.Sequential(*tower, nn.Linear(widths[-1], 1))
        self.y_range = tuple(float(value) for value in y_range)

    def forward(self, users, items):
        joined = torch.cat([self.user_embedding(users), self.item_embedding(items)], dim=-1)
        return sigmoid_range(self.tower(joined).squeeze(-1), self.y_range)

    def score_all(self, users):
        every = torch.arange(self.item_embedding.num_embeddings, device=users.device)
        return self(users[:, None].expand(-1, every.numel()), every.expand(users.numel(), -1))


RATING_MODELS = {"mf": MF, "biasmf": BiasMF, "dotbias": DotBias, "embnn": EmbNN, "dot": Dot}
