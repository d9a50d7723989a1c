"""What differs between the model families when ncf.py trains one: the batches, the evaluation, the metric the best
epoch is chosen on, and the settings chosen from the data. ``train.py`` stays the same for every family.

- Implicit models (neumf.py: GMF, MLP, NeuMF): batches of positives with sampled negatives, HR/NDCG (sampled) or
  Recall/NDCG/MRR (full ranking), higher is better.
- Rating models (mf.py): batches of (user, item, rating), RMSE/MAE/MSE on the held-out ratings, lower is better.
- Review-text models (reviews.py): the same batches with each pair's review; ``textrating``, ``textprofile`` and
  ``textmf`` are measured as rating models (the first two reading the held-out review), ``textitem`` by its text
  loss on the held-out reviews, lower is better.
"""

import numpy as np
import torch

import dataloading
from ncflib import defaults, evaluation
from ncflib import training as train
from ncflib.ratings import RATING_MODELS
from ncflib.reviews import TEXT_BASES, TEXT_MODELS

# Per-family defaults of the flags whose default is None (a flag given on the command line always wins).
MODEL_DEFAULTS = {"layers": defaults.NVIDIA_LAYERS, "dropout": 0.5}
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
    group = parser.add_argument_group("review-text models (textrating, textprofile, textitem, textmf)")
    group.add_argument("--word_negatives", type=int, default=5,
                       help="textitem and textmf: words drawn against each word of a review in the text loss")
    group.add_argument("--text_weight", type=float, default=0.1,
                       help="textmf: the weight of the text loss beside the squared error (0: its base alone)")
    group.add_argument("--text_base", choices=TEXT_BASES, default="biasmf", help="textmf: the rating model under it")


READS_REVIEW = ("textrating", "textprofile")  # predict a rating from the held-out review itself: diagnostics


def reads_review(kind):
    return kind in READS_REVIEW


def is_text(kind):
    return kind in TEXT_MODELS


def is_implicit(kind):
    """The implicit-feedback models (GMF, MLP, NeuMF): ranked against sampled or all items."""
    return not (kind in RATING_MODELS or is_text(kind))


def is_rating(kind):
    """Measured by RMSE on held-out ratings (every rating model, and the text models except textitem)."""
    return kind in RATING_MODELS or (is_text(kind) and kind != "textitem")


def data_settings(dataset):
    """Constructor arguments that come from the data rather than the flags: the vocabulary's size."""
    return {} if dataset.vocabulary is None else {"num_words": max(len(dataset.vocabulary[0]), 1)}


LAYERS_DEFAULT = (f"NVIDIA's {' '.join(map(str, defaults.NVIDIA_LAYERS))}, halved to "
                  f"{' '.join(map(str, defaults.SMALL_LAYERS))} below {defaults.SMALL_DATA:,} training pairs "
                  "(printed at start)")


def model_defaults(kind, layers, dropout, num_train=None):
    """--layers and --dropout as given, else the family's default (NeuMF's and MLP's tower chosen for ``num_train``
    training pairs, NVIDIA's when None; EmbNN's one layer of 100), and notes {what: (value, how chosen)} to print."""
    chosen, notes = MODEL_DEFAULTS | RATING_DEFAULTS.get(kind, {}), {}
    if layers is None and kind in ("mlp", "neumf") and num_train is not None:
        layers = defaults.choose_layers(num_train)
        notes["MLP layers"] = (" ".join(map(str, layers)), f"chosen for {num_train:,} training pairs; set with "
                               "--layers")
    return (chosen["layers"] if layers is None else layers), (chosen["dropout"] if dropout is None else dropout), notes


def check(kind, dataset, protocol, topk, binary=False):
    """A TaskError when ``kind`` cannot train or be evaluated on ``dataset``."""
    if is_text(kind):
        if dataset.train_text is None:
            raise TaskError(f"{dataset.path}: has no review text, which --model {kind} learns from; convert reviews "
                            "with text (Amazon JSON lines, or --text_col) with convert.py --split random")
        if not dataset.vocabulary[0] or dataset.train_text.values.numel() == 0:
            raise TaskError(f"{dataset.path}: its training reviews have no words (the source had no review text, or "
                            f"--skip_top left none), so --model {kind} has nothing to learn from")
    if kind == "textitem":
        return
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
    if is_rating(kind) or kind == "textitem":
        prefix = "valid_" if dataset.validation is not None else ""
        return train.Selection(f"{prefix}{'rmse' if is_rating(kind) else 'text_loss'}", higher_is_better=False)
    return train.Selection(evaluation.selection_metric(dataset, protocol, topk))


def prepare(model, kind, dataset, user_embeddings=None, item_embeddings=None, freeze_users=False, freeze_items=False):
    """A fresh rating model readied for training: the training ratings' mean for ``mf``/``biasmf``, tables loaded
    from .npy files (read without pickle) and frozen as asked. Implicit models are returned as they are."""
    if not (is_rating(kind) or is_text(kind)):
        return model
    if is_text(kind) and hasattr(model, "sampler"):
        model.sampler.set_counts(dataset.vocabulary[1])
    if hasattr(model, "set_mean"):
        model.set_mean(float(np.asarray(dataset.train_ratings, dtype=np.float64).mean()))
    tables = {}
    for name, file in (("users", user_embeddings), ("items", item_embeddings)):
        if file:
            try:
                tables[name] = np.load(file, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise TaskError(f"{file}: not a readable .npy array ({str(error)[:80]})") from None
    if (tables or freeze_users or freeze_items) and not hasattr(model, "load_embeddings"):
        raise TaskError(f"--user_embeddings, --item_embeddings and --freeze_users/--freeze_items are for the rating "
                        f"models with embedding tables (mf, biasmf, dotbias, embnn, dot), not --model {kind}")
    if not hasattr(model, "load_embeddings"):
        return model
    try:
        model.load_embeddings(**tables)
    except ValueError as error:
        raise TaskError(f"--{'user' if 'user' in str(error) else 'item'}_embeddings: {error}") from None
    return model.freeze(users=freeze_users, items=freeze_items)


def undecayed(model, kind):
    """The parameters weight decay leaves alone: for the rating models every bias (as fastai, whose default
    ``wd_bn_bias=False`` does the same; on ML-100k's random split it took dotbias's test MSE from 0.824 to 0.812);
    none for the implicit models."""
    if not (is_rating(kind) or is_text(kind)):
        return []
    return [parameter for name, parameter in model.named_parameters()
            if name.endswith("bias") or "_bias." in name or name == "scale"]


def batches(config, dataset, runtime):
    """A function epoch -> that epoch's training batches."""
    if is_rating(config.model) or is_text(config.model):
        ratings = (torch.zeros(dataset.num_train) if dataset.train_ratings is None else
                   torch.from_numpy(np.array(dataset.train_ratings, dtype=np.float32))).to(runtime.device)
        text = dataset.train_text if is_text(config.model) else None
        return lambda epoch: dataloading.RatingBatches(dataset.train_users, dataset.train_items, ratings,
                                                       config.batch_size, train.epoch_seed(config.seed, epoch), text)
    positives = (dataloading.PositiveSet(dataset.train_users, dataset.train_items, dataset.num_users,
                                         dataset.num_items) if config.negative_sampling == "exact" else None)
    return lambda epoch: dataloading.ImplicitBatches(dataset, config.batch_size, config.negative_samples,
                                                     train.epoch_seed(config.seed, epoch), positives, runtime.rank,
                                                     runtime.world_size)


def evaluator(config, dataset, model, autocast, runtime):
    """The evaluation of ``model`` (the plain module): its metrics on the test set, and on the validation set
    (``valid_`` prefixed) when there is one."""
    batch_size = config.valid_batch_size or evaluation.default_batch_samples(runtime.device)
    if config.model == "textitem":
        return text_evaluator(dataset, model, autocast, batch_size)
    if not is_rating(config.model):
        return evaluation.evaluator(model, dataset, config.eval_protocol, config.topk, batch_size, autocast,
                                    runtime.rank, runtime.world_size, config.compile)
    sets = [("", dataset.test)] + ([("valid_", dataset.validation)] if dataset.validation is not None else [])
    # SimpleCF's binary variant outputs logits: its errors are those of the probabilities against the 0/1 labels.
    predict = (lambda users, items: torch.sigmoid(model(users, items))) if getattr(model, "binary", False) else model

    def evaluate():
        metrics, scored = {}, 0.0
        model.eval()
        for prefix, held in sets:
            users = torch.repeat_interleave(held.users, held.offsets.diff())
            result = evaluation.rating_metrics(predict, users, held.items, held.ratings, batch_size,
                                               autocast, held.text if config.model in READS_REVIEW else None)
            scored += result.pop("eval_samples")
            metrics.update({prefix + key: value for key, value in result.items()})
        return metrics | {"eval_samples": scored}

    return evaluate


def text_evaluator(dataset, model, autocast, batch_size):
    """``textitem``'s evaluation: the mean text loss of the held-out reviews (``text_loss``, and ``valid_text_loss``
    with a validation set), its negative words drawn the same way at every evaluation."""
    sets = [("", dataset.test)] + ([("valid_", dataset.validation)] if dataset.validation is not None else [])

    def evaluate():
        metrics, scored = {}, 0
        model.eval()
        for prefix, held in sets:
            users = torch.repeat_interleave(held.users, held.offsets.diff())
            generator = torch.Generator(users.device).manual_seed(0)
            total, reviews = 0.0, 0
            with torch.no_grad():
                for start in range(0, users.numel(), batch_size):
                    rows = torch.arange(start, min(start + batch_size, users.numel()),
                                        device=users.device)
                    with autocast():
                        loss, count = model.text_loss(held.items[rows], *held.text.take(rows), generator)
                    total, reviews = total + float(loss), reviews + count
            metrics[prefix + "text_loss"] = total / max(reviews, 1)
            scored += users.numel()
        return metrics | {"eval_samples": scored}

    return evaluate
