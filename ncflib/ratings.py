"""Rating models: matrix factorisation as fastai, a course's ClassicMF / KorenMF and SimpleCF write it.

Pure ``nn.Module``s, like neumf.py: no printing, logging or file I/O; the family object (``FAMILY``) at the
end. ``forward(users, items)`` takes two index
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

import inspect
import math

import numpy as np
import torch
from torch import nn

import dataloading
from ncflib import evaluation
from ncflib.defaults import IMPLICIT_DROPOUT, NVIDIA_LAYERS, RATING_EPOCHS, choose_rating_sizes
from ncflib.errors import TaskError
from ncflib.families import Family, gradient_space, takes
from ncflib.protocols import HasTables, StartsFromMean, TrainedByGradient, Traits, traits


def squared_error_loss(l2=0.0):
    """The training loss of the rating models (``training.fit``'s loss function): the summed squared error of the
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


def check_sizes(num_users, num_items, factors, y_range=None, layers=None, dropout=0.0):
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


def embedding_table(rows, width, std=0.01):
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

    traits = Traits(output="rating")  # Dot(binary=True) outputs logits

    def __init__(self, num_users, num_items, factors, biases):
        super().__init__()
        self.user_embedding = embedding_table(num_users, factors)
        self.item_embedding = embedding_table(num_items, factors)
        self.user_bias = embedding_table(num_users, 1, std=0) if biases else None
        self.item_bias = embedding_table(num_items, 1, std=0) if biases else None

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
        """The loss function ``training.fit`` trains this model with."""
        return squared_error_loss(l2)

    def item_vectors(self):
        """{what it is: [num_items, D]}: the item representations ``recommend.py --similar_to`` compares."""
        return {"item factors": self.item_embedding.weight.detach()}

    def item_biases(self):
        """[num_items] the learned item biases, or None for a model without them."""
        return None if self.item_bias is None else self.item_bias.weight.detach().squeeze(1)

    def user_parameter_names(self):
        """The parameters with one row per user: what a fold-in fits for a new user."""
        return ["user_embedding.weight"] + (["user_bias.weight"] if self.user_bias is not None else [])


class MF(Factorisation):
    """ClassicMF: the dot product around the global mean of the training ratings (``set_mean``)."""

    def __init__(self, num_users, num_items, factors=64):
        check_sizes(num_users, num_items, factors)
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
        check_sizes(num_users, num_items, factors)
        Factorisation.__init__(self, num_users, num_items, factors, biases=True)
        self.register_buffer("mean", torch.zeros(()))

    def forward(self, users, items):
        return self.dot(users, items) + self.bias(users, items) + self.mean

    def score_all(self, users):
        return self.all_dot(users) + self.all_bias(users) + self.mean


class DotBias(Factorisation):
    """fastai's DotProductBias: the dot product and both biases through a sigmoid scaled into ``y_range``."""

    def __init__(self, num_users, num_items, factors=64, y_range=(0.0, 5.5)):
        check_sizes(num_users, num_items, factors, y_range)
        super().__init__(num_users, num_items, factors, biases=True)
        self.y_range = tuple(float(value) for value in y_range)

    def forward(self, users, items):
        return sigmoid_range(self.dot(users, items) + self.bias(users, items), self.y_range)

    def score_all(self, users):
        return sigmoid_range(self.all_dot(users) + self.all_bias(users), self.y_range)


class Dot(Factorisation):
    """SimpleCF: a plain dot product; with ``binary``, a logit trained with BCE on 0/1 data."""

    def __init__(self, num_users, num_items, factors=64, binary=False):
        check_sizes(num_users, num_items, factors)
        super().__init__(num_users, num_items, factors, biases=False)
        self.binary = bool(binary)
        self.traits = Traits(output="logit" if self.binary else "rating")

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
        check_sizes(num_users, num_items, factors, y_range, layers, dropout)
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


# ------------------------------------------------------------------------------------------------ the family


def is_bias(name):
    """Whether a parameter is a bias (spared weight decay, as fastai's ``wd_bn_bias=False``)."""
    return name.endswith("bias") or "_bias." in name or name == "scale"


def _check_finite(table, file, name):
    """A TaskError naming ``file`` and its first row holding NaN or an infinity (or a non-numeric table): such a
    table would train to a NaN loss."""
    if not (np.issubdtype(table.dtype, np.number) or table.dtype == bool):
        raise TaskError(f"--{name[:-1]}_embeddings {file}: holds {table.dtype} values, expected numbers")
    if np.issubdtype(table.dtype, np.integer) or table.dtype == bool:
        return
    finite = np.isfinite(table).reshape(len(table), -1).all(1) if table.ndim else np.isfinite(table)[None]
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise TaskError(f"--{name[:-1]}_embeddings {file}: row {row} holds NaN or an infinite value "
                        f"({(~finite).sum():,} such rows); every value must be a finite number")


class RatingFamily(Family):
    """Star-rating models (``RATING_MODELS``): batches of (user, item, rating), squared error (or SimpleCF's BCE),
    RMSE/MAE/MSE on the held-out ratings, lower being better. ``FAMILY`` is the registry's object."""

    name = "ratings"
    models = RATING_MODELS
    description = "mf, biasmf, dotbias, embnn or dot on ratings (RMSE; docs/ratings.md)"
    weight_decay = {EmbNN: 0.1}  # the factorisations: 0.2; chosen on ML-100k's validation ratings, 3 seeds
    model_defaults = {EmbNN: {"layers": [100], "dropout": 0.0}}

    def search_space(self, trial, protocol, timed=False):
        return gradient_space(trial, self.kind, self.model_class, (1e-3, 3e-2), (1e-3, 0.5), (3, 5, 8, 12),
                              (16, 32, 64, 128))

    def add_arguments(self, parser, flags):
        group = parser.add_argument_group("rating models (mf, biasmf, dotbias, embnn, dot)")
        flags.add(group, "--y_range", nargs=2, type=float, metavar=("LOW", "HIGH"), readers=takes("y_range"),
                  rule="finite",
                  help="dotbias and embnn: the range their sigmoid scales predictions into; default from the "
                       "training ratings, 1 below the lowest to 0.5 above the highest (0 to 5.5 for 1-5 stars)")
        flags.add(group, "--l2", type=float, default=0.0, readers=takes_l2, rule="0 or more",
                  help="rating models: L2 penalty times the squared norms of the embedding rows each batch looks up "
                       "(a course's regularisation; --weight_decay acts on every row)")
        flags.add(group, "--binary", action="store_true", readers=takes("binary"),
                  help="--model dot on 0/1 data: a logit trained with BCE")
        given = lambda model_class: issubclass(model_class, HasTables)  # noqa: E731
        flags.add(group, "--user_embeddings", metavar="FILE.npy", readers=given,
                  help="rating models: start the user table from this array (users x factors; e.g. from "
                       "recommend.py --export)")
        flags.add(group, "--item_embeddings", metavar="FILE.npy", readers=given,
                  help="the same for the item table")
        flags.add(group, "--freeze_users", action="store_true", readers=given, help="keep the user table as it starts")
        flags.add(group, "--freeze_items", action="store_true", readers=given, help="keep the item table as it starts")

    def check_flags(self, args):
        if args.y_range and args.y_range[0] >= args.y_range[1]:
            return f"--y_range LOW HIGH needs LOW < HIGH, got {args.y_range[0]:g} {args.y_range[1]:g}"
        return None

    def default_epochs(self, args):
        return RATING_EPOCHS

    def choose(self, args, dataset):
        constructor = self.model_class
        given = (args.batch_size, args.learning_rate, args.beta1, args.beta2, args.weight_decay, args.lr_schedule)
        values, notes, warning = choose_rating_sizes(dataset.num_train, self.kind,
                                                     self.weight_decay.get(constructor, 0.2),
                                                     *given)
        chosen = {"layers": NVIDIA_LAYERS, "dropout": IMPLICIT_DROPOUT} | self.model_defaults.get(constructor, {})
        values["layers"] = chosen["layers"] if args.layers is None else args.layers
        values["dropout"] = chosen["dropout"] if args.dropout is None else args.dropout
        values["y_range"] = args.y_range
        if "y_range" in inspect.signature(constructor).parameters:
            notes |= self._y_range(dataset, args.y_range, values)
        return values, notes | self._cold_rows(dataset), warning

    @staticmethod
    def _cold_rows(dataset):
        """{what: (count, how scored)} for held-out rows whose user or item has no training rating (MovieLens'
        u1.test has such items): counted in the metrics, scored from rows training never moved, so about the mean
        plus the known side's bias (the global mean for a model without biases)."""
        seen_users = torch.bincount(dataset.train_users.cpu(), minlength=dataset.num_users) > 0
        seen_items = torch.bincount(dataset.train_items.cpu(), minlength=dataset.num_items) > 0
        notes = {}
        for prefix, held in evaluation.held_out_sets(dataset):
            users = torch.repeat_interleave(held.users, held.offsets.diff()).cpu()
            cold = ~(seen_users[users] & seen_items[held.items.cpu()])
            if cold.any():
                name = "validation" if prefix else "test"
                notes[f"cold {name} rows"] = (
                    f"{int(cold.sum()):,} of {cold.numel():,}",
                    "a user or item with no training rating; kept in the metrics, predicted from the known side "
                    "(its untrained rows stay near their start)")
        return notes

    @staticmethod
    def _y_range(dataset, y_range, values):
        """{what: (value, how chosen)}: the y range of the sigmoid models, from the data unless given (fastai's
        0-5.5 for 1-5 stars: a little beyond both ends, which a sigmoid never reaches); sets values["y_range"]."""
        if y_range is not None:
            return {"y range": (f"{y_range[0]:g} to {y_range[1]:g}", "given")}
        ratings = np.asarray(dataset.train_ratings)
        low, high = float(ratings.min()) - 1.0, float(ratings.max()) + 0.5
        values["y_range"] = [low, high]
        return {"y range": (f"{low:g} to {high:g}", "from the ratings' range, fastai's margins; set with --y_range")}

    def check(self, dataset, config):
        missing = [name for name, values in (("training", dataset.train_ratings), ("test", dataset.test.ratings))
                   if values is None]
        if missing:
            raise TaskError(f"{dataset.path}: has no {' or '.join(missing)} ratings, which --model {self.kind} "
                            "predicts; convert a source with a rating column (MovieLens files have one), e.g. with "
                            "convert.py --split random or --test_path")
        if config.binary and not np.isin(np.asarray(dataset.train_ratings), (0, 1)).all():
            raise TaskError(f"{dataset.path}: --binary trains on 0/1 labels, and these ratings are not all 0 or 1")

    def prepare(self, model, dataset, config, load_model):
        """The training ratings' mean for the models that start from it, tables loaded from .npy files (read
        without pickle) and frozen as asked."""
        if isinstance(model, StartsFromMean):
            model.set_mean(float(np.asarray(dataset.train_ratings, dtype=np.float64).mean()))
        tables = {}
        for name, file in (("users", config.user_embeddings), ("items", config.item_embeddings)):
            if file:
                try:
                    tables[name] = np.load(file, allow_pickle=False)
                except (OSError, ValueError) as error:
                    raise TaskError(f"{file}: not a readable .npy array ({str(error)[:80]})") from None
                _check_finite(tables[name], file, name)
        if not isinstance(model, HasTables):  # (--flags.add refuses those flags for such a model)
            return model
        try:
            model.load_embeddings(**tables)
        except ValueError as error:
            raise TaskError(f"--{'user' if 'user' in str(error) else 'item'}_embeddings: {error}") from None
        return model.freeze(users=config.freeze_users, items=config.freeze_items)

    def undecayed(self, model):
        return [parameter for name, parameter in model.named_parameters() if is_bias(name)]

    def batches(self, config, dataset, runtime, text=None):
        ratings = (torch.zeros(dataset.num_train) if dataset.train_ratings is None else
                   torch.from_numpy(np.array(dataset.train_ratings, dtype=np.float32))).to(runtime.device)
        return lambda epoch: dataloading.RatingBatches(dataset.train_users, dataset.train_items, ratings,
                                                       config.batch_size, dataloading.epoch_seed(config.seed, epoch),
                                                       text)

    def evaluator(self, config, dataset, model, autocast, runtime, reads_review=False):
        """RMSE, MAE and MSE of the held-out ratings (``valid_``-prefixed for the validation set); ``reads_review``:
        the model reads each held-out pair's review."""
        batch_size = config.valid_batch_size or evaluation.default_batch_samples(runtime.device)
        # SimpleCF's binary variant outputs logits: its errors are those of the probabilities against the 0/1 labels.
        predict = (lambda users, items: torch.sigmoid(model(users, items))) if traits(model).output == "logit" \
            else model

        def evaluate():
            metrics, scored = {}, 0.0
            model.eval()
            for prefix, held in evaluation.held_out_sets(dataset):
                users = torch.repeat_interleave(held.users, held.offsets.diff())
                result = evaluation.rating_metrics(predict, users, held.items, held.ratings, batch_size, autocast,
                                                   held.text if reads_review else None)
                scored += result.pop("eval_samples")
                metrics.update({prefix + key: value for key, value in result.items()})
            return metrics | {"eval_samples": scored}

        return evaluate

    def selection(self, dataset, config):
        return evaluation.Selection(f"{'valid_' if dataset.validation is not None else ''}rmse",
                                    higher_is_better=False)

    def resume_fields(self, config):
        return [("l2", "--l2", 0.0, True)]


def takes_l2(model_class):
    """A reader rule: the models whose training loss takes --l2 (an L2 penalty on the rows a batch looks up)."""
    return issubclass(model_class, TrainedByGradient) and "l2" in inspect.signature(
        model_class.training_loss).parameters


FAMILY = RatingFamily()
