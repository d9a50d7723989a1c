"""What differs between the model families when ncf.py trains one: the batches, the evaluation, the metric the best
epoch is chosen on, and the settings chosen from the data. ``train.py`` stays the same for every family.

- Implicit models (neumf.py: GMF, MLP, NeuMF): batches of positives with sampled negatives, HR/NDCG (sampled) or
  Recall/NDCG/MRR (full ranking), higher is better.
- Rating models (mf.py): batches of (user, item, rating), RMSE/MAE/MSE on the held-out ratings, lower is better.
"""

import numpy as np
import torch

import dataloading
import evaluation
import train
from mf import RATING_MODELS

# Per-family defaults of the flags whose default is None (a flag given on the command line always wins).
MODEL_DEFAULTS = {"layers": [256, 256, 128, 64], "dropout": 0.5}
RATING_DEFAULTS = {"embnn": {"layers": [100], "dropout": 0.0}}


class TaskError(Exception):
    """A model and a dataset (or flags) that do not go together: one line saying what to do."""


def add_rating_arguments(parser):
    """ncf.py's flags for the rating models (its parser checks their values)."""
    group = parser.add_argument_group("rating models (mf, biasmf, dotbias, embnn, dot)")
    group.add_argument("--y_range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                       help="dotbias and embnn: the range their sigmoid scales predictions into; default from the "
                            "training ratings, 1 below the lowest to 0.5 above the highest (0 to 5.5 for 1-5 stars)")
    group.add_argument("--l2", type=float, default=0.0,
                       help="rating models: L2 penalty times the squared norms of the embedding rows each batch "
                            "looks up (a course's regularisation; --weight_decay acts on every row)")
    group.add_argument("--binary", action="store_true", help="--model dot on 0/1 data: a logit trained with BCE")
    group.add_argument("--user_embeddings", metavar="FILE.npy",
                       help="rating models: start the user table from this array (users x factors; e.g. from "
                            "recommend.py --export)")
    group.add_argument("--item_embeddings", metavar="FILE.npy", help="the same for the item table")
    group.add_argument("--freeze_users", action="store_true", help="keep the user table as it starts")
    group.add_argument("--freeze_items", action="store_true", help="keep the item table as it starts")


def is_rating(kind):
    return kind in RATING_MODELS


def model_defaults(kind, layers, dropout):
    """--layers and --dropout as given, else the family's default (NeuMF's tower; EmbNN's one layer of 100)."""
    chosen = MODEL_DEFAULTS | RATING_DEFAULTS.get(kind, {})
    return (chosen["layers"] if layers is None else layers), (chosen["dropout"] if dropout is None else dropout)


def check(kind, dataset, protocol, topk, binary=False):
    """A TaskError when ``kind`` cannot train or be evaluated on ``dataset``."""
    if is_rating(kind):
        missing = [name for name, values in (("training", dataset.train_ratings), ("test", dataset.test.ratings))
                   if values is None]
        if missing:
            raise TaskError(f"{dataset.path}: has no {' or '.join(missing)} ratings, which --model {kind} predicts; "
                            "convert a source with a rating column (MovieLens files have one), e.g. with convert.py "
                            "--split random or --test_path")
        if binary and not np.isin(np.asarray(dataset.train_ratings), (0, 1)).all():
            raise TaskError(f"{dataset.path}: --binary trains on 0/1 labels, and these ratings are not all 0 or 1")
        return
    if binary:
        raise TaskError(f"--binary is SimpleCF's 0/1 variant of --model dot, not of --model {kind}")
    problem = evaluation.protocol_problem(dataset, protocol, topk)
    if problem:
        raise TaskError(problem)


def rating_notes(kind, dataset, y_range):
    """{what: (value, how chosen)}: the y range of the sigmoid models, from the data unless given (fastai's 0-5.5
    for 1-5 stars: a little beyond both ends, which a sigmoid never reaches)."""
    if kind not in ("dotbias", "embnn"):
        return {}, y_range
    if y_range is not None:
        return {"y range": (f"{y_range[0]:g} to {y_range[1]:g}", "given")}, y_range
    ratings = np.asarray(dataset.train_ratings)
    low, high = float(ratings.min()) - 1.0, float(ratings.max()) + 0.5
    return {"y range": (f"{low:g} to {high:g}", "from the ratings' range, fastai's margins; set with --y_range")}, \
        [low, high]


def selection(kind, dataset, protocol, topk):
    """The metric the best epoch is chosen on, and its direction."""
    if is_rating(kind):
        prefix = "valid_" if dataset.validation is not None else ""
        return train.Selection(f"{prefix}rmse", higher_is_better=False)
    return train.Selection(evaluation.selection_metric(dataset, protocol, topk))


def prepare(model, kind, dataset, user_embeddings=None, item_embeddings=None, freeze_users=False, freeze_items=False):
    """A fresh rating model readied for training: the training ratings' mean for ``mf``/``biasmf``, tables loaded
    from .npy files (read without pickle) and frozen as asked. Implicit models are returned as they are."""
    if not is_rating(kind):
        return model
    if hasattr(model, "set_mean"):
        model.set_mean(float(np.asarray(dataset.train_ratings, dtype=np.float64).mean()))
    tables = {}
    for name, file in (("users", user_embeddings), ("items", item_embeddings)):
        if file:
            try:
                tables[name] = np.load(file, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise TaskError(f"{file}: not a readable .npy array ({str(error)[:80]})") from None
    try:
        model.load_embeddings(**tables)
    except ValueError as error:
        raise TaskError(f"--{'user' if 'user' in str(error) else 'item'}_embeddings: {error}") from None
    return model.freeze(users=freeze_users, items=freeze_items)


def undecayed(model, kind):
    """The parameters weight decay leaves alone: for the rating models every bias (as fastai, whose default
    ``wd_bn_bias=False`` does the same; on ML-100k's random split it took dotbias's test MSE from 0.824 to 0.812);
    none for the implicit models."""
    if not is_rating(kind):
        return []
    return [parameter for name, parameter in model.named_parameters() if name.endswith("bias") or "_bias." in name]


def batches(config, dataset, runtime):
    """A function epoch -> that epoch's training batches."""
    if is_rating(config.model):
        ratings = torch.from_numpy(np.array(dataset.train_ratings, dtype=np.float32)).to(runtime.device)
        return lambda epoch: dataloading.RatingBatches(dataset.train_users, dataset.train_items, ratings,
                                                       config.batch_size, train.epoch_seed(config.seed, epoch))
    positives = (dataloading.PositiveSet(dataset.train_users, dataset.train_items, dataset.num_users,
                                         dataset.num_items) if config.negative_sampling == "exact" else None)
    return lambda epoch: dataloading.ImplicitBatches(dataset, config.batch_size, config.negative_samples,
                                                     train.epoch_seed(config.seed, epoch), positives, runtime.rank,
                                                     runtime.world_size)


def evaluator(config, dataset, model, autocast, runtime):
    """The evaluation of ``model`` (the plain module): its metrics on the test set, and on the validation set
    (``valid_`` prefixed) when there is one."""
    if not is_rating(config.model):
        return evaluation.evaluator(model, dataset, config.eval_protocol, config.topk, config.valid_batch_size,
                                    autocast, runtime.rank, runtime.world_size, config.compile)
    sets = [("", dataset.test)] + ([("valid_", dataset.validation)] if dataset.validation is not None else [])
    # SimpleCF's binary variant outputs logits: its errors are those of the probabilities against the 0/1 labels.
    predict = (lambda users, items: torch.sigmoid(model(users, items))) if getattr(model, "binary", False) else model

    def evaluate():
        metrics, scored = {}, 0.0
        model.eval()
        for prefix, held in sets:
            users = torch.repeat_interleave(held.users, held.offsets.diff())
            result = evaluation.rating_metrics(predict, users, held.items, held.ratings, config.valid_batch_size,
                                               autocast)
            scored += result.pop("eval_samples")
            metrics.update({prefix + key: value for key, value in result.items()})
        return metrics | {"eval_samples": scored}

    return evaluate
