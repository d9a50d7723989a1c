"""Review-text models: what the words of reviews add to star ratings (Amazon review data).

Pure ``nn.Module``s, like the rating models, with their family object (``FAMILY``) at the end. Every model takes
(users, items, words, offsets): a batch's pairs and their reviews as ``nn.EmbeddingBag`` takes them (the words
joined, ``offsets`` each review's start; ``textdata.Ragged.take``).

- ``textrating``: a rating from the review's words alone (their embeddings averaged, then a linear layer).
- ``textprofile``: the same with the user's and the item's embeddings beside the words.
- ``textitem``: item vectors close (cosine) to the words of their reviews, far from randomly drawn words; no rating.
- ``textmf``: ``mf`` or ``biasmf`` (``text_base``) trained with ``textitem``'s text loss as well, weighted by
  ``text_weight``, through a linear map from its item factors to the word space; it predicts from user and item.

``textrating`` and ``textprofile`` read the held-out review to predict its rating: a review is written after the
item is consumed, so they are diagnostics of how much the words tell, not recommenders. ``textmf`` uses text only
as a training signal and predicts from user and item alone, as any rating model.

The text loss is word2vec's negative sampling with items in place of context words: a review adds
``-mean over its words of log sigmoid(s(item, word)) - sum over k drawn words of log sigmoid(-s(item, drawn))``,
s a scaled cosine (the scale learned), the k words drawn for the review from the training counts to the power 0.75
(the same expected loss as k drawn per word, at a fraction of the lookups); a review without known words adds
nothing.
"""

import torch
from torch import nn

from ncflib import evaluation
from ncflib.errors import TaskError
from ncflib.families import takes
from ncflib.protocols import Traits, traits
from ncflib.ratings import MF, BiasMF, RatingFamily, check_sizes, embedding_table, squared_error_loss

TEXT_BASES = ("mf", "biasmf")


def _bag(num_words, factors):
    bag = nn.EmbeddingBag(num_words, factors, mode="mean")
    nn.init.normal_(bag.weight, std=0.01)
    return bag


class WordSampler(nn.Module):
    """Draws negative words in proportion to their training counts to the power 0.75 (``set_counts``)."""

    def __init__(self, num_words):
        super().__init__()
        self.register_buffer("weights", torch.ones(num_words))

    def set_counts(self, counts):
        counts = torch.as_tensor(counts, dtype=torch.float32)
        if counts.shape != self.weights.shape or (counts < 0).any() or counts.sum() <= 0:
            raise ValueError(f"word counts must be {self.weights.numel()} non-negative numbers, not all 0.")
        self.weights.copy_(counts ** 0.75)
        return self

    def draw(self, shape, generator=None):
        drawn = torch.multinomial(self.weights, int(torch.tensor(shape).prod()), replacement=True,
                                  generator=generator)
        return drawn.view(*shape)


class Draws:
    """The random generator of a training loss's negative words, made on the device of the first batch (seed 0;
    the run's seed still varies the initialisation and the order)."""

    def __init__(self, seed=0):
        self.seed, self.generator = seed, None

    def __call__(self, device):
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device).manual_seed(self.seed)
        return self.generator


def review_index(offsets, total):
    """[total] the review each joined word belongs to, and [B] each review's length."""
    lengths = torch.diff(offsets, append=torch.tensor([total], device=offsets.device))
    return torch.repeat_interleave(torch.arange(offsets.numel(), device=offsets.device), lengths,
                                   output_size=total), lengths


def text_loss(item_vectors, word_table, scale, words, offsets, sampler, negatives, generator=None):
    """(summed loss of the reviews, how many have words): the negative-sampling loss of each review's words against
    its item's vector (``item_vectors`` [B, D], one per review), ``negatives`` words drawn per review."""
    if words.numel() == 0:
        return item_vectors.sum() * 0.0, 0
    owner, lengths = review_index(offsets, words.numel())
    items = nn.functional.normalize(item_vectors.float(), dim=-1)  # [B, D]
    positive = (items[owner] * nn.functional.normalize(word_table(words).float(), dim=-1)).sum(-1) * scale
    per_review = torch.zeros(offsets.numel(), device=words.device).index_add_(
        0, owner, -nn.functional.logsigmoid(positive))
    has_words = lengths > 0
    per_review = per_review[has_words] / lengths[has_words]
    drawn = sampler.draw((int(has_words.sum()), negatives), generator)
    negative = torch.einsum("bd,bkd->bk", items[has_words],
                            nn.functional.normalize(word_table(drawn).float(), dim=-1)) * scale
    return (per_review - nn.functional.logsigmoid(-negative).sum(-1)).sum(), int(has_words.sum())


class TextRating(nn.Module):
    """A rating from the review's words: their embeddings averaged, a linear layer, plus the training mean."""

    # Reads the held-out review itself to predict its rating: a diagnostic, not a recommender. Its word table is
    # looked up by review words, which --embedding_sharding does not shard.
    traits = Traits(output="rating", reads_review=True, shards=False)

    def __init__(self, num_users, num_items, num_words, factors=64):
        check_sizes(num_users, num_items, factors)
        super().__init__()
        self.words = _bag(num_words, factors)
        self.output = nn.Linear(factors, 1)
        self.register_buffer("mean", torch.zeros(()))

    def set_mean(self, value):
        self.mean.fill_(float(value))
        return self

    def features(self, users, items, words, offsets):
        return self.words(words, offsets)

    def forward(self, users, items, words, offsets):
        return self.output(self.features(users, items, words, offsets)).squeeze(-1) + self.mean

    def training_loss(self, l2=0.0):
        return squared_error_loss(l2)

    def looked_up(self, users, items):
        return []


class TextProfile(TextRating):
    """``textrating`` with the user's and the item's embeddings joined to the averaged words before the layer."""

    def __init__(self, num_users, num_items, num_words, factors=64):
        super().__init__(num_users, num_items, num_words, factors)
        self.user_embedding = embedding_table(num_users, factors)
        self.item_embedding = embedding_table(num_items, factors)
        self.output = nn.Linear(3 * factors, 1)

    def features(self, users, items, words, offsets):
        return torch.cat([self.user_embedding(users), self.item_embedding(items), self.words(words, offsets)], -1)

    def looked_up(self, users, items):
        return [(self.user_embedding, users), (self.item_embedding, items)]

    def item_vectors(self):
        return {"item factors": self.item_embedding.weight.detach()}


class TextItem(nn.Module):
    """Item vectors trained to sit close to the words of their reviews (the text loss alone); no rating."""

    traits = Traits(output=None, shards=False)  # predicts nothing for a pair: trained for its item vectors

    def __init__(self, num_users, num_items, num_words, factors=64, word_negatives=5):
        check_sizes(num_users, num_items, factors)
        if word_negatives < 1:
            raise ValueError(f"word_negatives must be at least 1, got {word_negatives}.")
        super().__init__()
        self.item_embedding = embedding_table(num_items, factors, std=0.1)
        self.word_embedding = embedding_table(num_words, factors, std=0.1)
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.sampler = WordSampler(num_words)
        self.word_negatives = word_negatives

    def item_text_vectors(self, items=None):
        """[n, D] the vectors compared with the words: every item's, or those of ``items``."""
        return self.item_embedding.weight if items is None else self.item_embedding(items)

    def item_words(self, items):
        """[n, num_words] the cosine of each of ``items``' text vectors with every word's embedding."""
        vectors = nn.functional.normalize(self.item_text_vectors(items).float(), dim=-1)
        return vectors @ nn.functional.normalize(self.word_embedding.weight.float(), dim=-1).T

    def text_loss(self, items, words, offsets, generator=None):
        return text_loss(self.item_text_vectors(items), self.word_embedding, self.scale, words, offsets,
                         self.sampler, self.word_negatives, generator)

    def training_loss(self):
        draws = Draws()

        def loss(model, inputs, autocast):
            _, items, _, _, words, offsets = inputs
            total, _ = model.text_loss(items, words, offsets, draws(words.device))
            return total, total

        return loss

    def looked_up(self, users, items):
        return [(self.item_embedding, items)]

    def item_vectors(self):
        return {"item text vectors": self.item_embedding.weight.detach()}


class TextMF(nn.Module):
    """``mf`` or ``biasmf`` (``base``) whose item factors, through a linear map to the word space, are also trained
    with the text loss, weighted by ``text_weight``. Predicts from user and item alone."""

    traits = Traits(output="rating", shards=False)

    def __init__(self, num_users, num_items, num_words, factors=64, text_base="biasmf", text_weight=0.1,
                 word_negatives=5):
        if text_base not in TEXT_BASES:
            raise ValueError(f"text_base must be one of {TEXT_BASES}, got {text_base!r}.")
        if text_weight < 0 or word_negatives < 1:
            raise ValueError(f"text_weight must be 0 or more and word_negatives at least 1, got {text_weight} and "
                             f"{word_negatives}.")
        super().__init__()
        self.rating = {"mf": MF, "biasmf": BiasMF}[text_base](num_users, num_items, factors)
        self.to_words = nn.Linear(factors, factors, bias=False)
        self.word_embedding = embedding_table(num_words, factors, std=0.1)
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.sampler = WordSampler(num_words)
        self.text_weight, self.word_negatives = float(text_weight), word_negatives

    def set_mean(self, value):
        self.rating.set_mean(value)
        return self

    def forward(self, users, items, words=None, offsets=None):
        return self.rating(users, items)

    def score_all(self, users):
        return self.rating.score_all(users)

    def item_text_vectors(self, items=None):
        table = self.rating.item_embedding
        return self.to_words(table.weight if items is None else table(items))

    item_words = TextItem.item_words

    def text_loss(self, items, words, offsets, generator=None):
        return text_loss(self.item_text_vectors(items), self.word_embedding, self.scale, words, offsets,
                         self.sampler, self.word_negatives, generator)

    def training_loss(self, l2=0.0):
        draws, ratings_loss = Draws(), squared_error_loss(l2)

        def loss(model, inputs, autocast):
            users, items, ratings, weights, words, offsets = inputs
            squared, minimised = ratings_loss(model.rating, (users, items, ratings, weights), autocast)
            if not model.text_weight:
                return squared, minimised
            text, _ = model.text_loss(items, words, offsets, draws(words.device))
            return squared, minimised + model.text_weight * text

        return loss

    def looked_up(self, users, items):
        return self.rating.looked_up(users, items)

    def item_vectors(self):
        return self.rating.item_vectors()

    def user_parameter_names(self):
        return [f"rating.{name}" for name in self.rating.user_parameter_names()]

    def item_biases(self):
        return self.rating.item_biases()


TEXT_MODELS = {"textrating": TextRating, "textprofile": TextProfile, "textitem": TextItem, "textmf": TextMF}


# ------------------------------------------------------------------------------------------------ the family


class TextFamily(RatingFamily):
    """The review-text models (``TEXT_MODELS``): the rating family's batches with each pair's review; the models that
    rate are measured as rating models (RMSE), ``textitem`` by its text loss on the held-out reviews, lower being
    better. ``FAMILY`` is the registry's object."""

    name = "reviews"
    models = TEXT_MODELS
    description = "textrating, textprofile, textitem or textmf on reviews with text (docs/reviews.md)"
    weight_decay, model_defaults = {}, {}

    def add_arguments(self, parser, flags):
        group = parser.add_argument_group("review-text models (textrating, textprofile, textitem, textmf)")
        flags.add(group, "--word_negatives", type=int, default=5, readers=takes("word_negatives"), rule="at least 1",
                  help="textitem and textmf: words drawn against each word of a review in the text loss")
        flags.add(group, "--text_weight", type=float, default=0.1, readers=takes("text_weight"), rule="0 or more",
                  help="textmf: the weight of the text loss beside the squared error (0: its base alone)")
        flags.add(group, "--text_base", choices=TEXT_BASES, default="biasmf", readers=takes("text_base"),
                  help="textmf: the rating model under it")

    def check_flags(self, args):
        return None

    def describe(self, config, dataset):
        if traits(self.model_class).reads_review:
            return " (reads the held-out review to predict its rating: a diagnostic, not a recommender)"
        return ""

    def check(self, dataset, config):
        if dataset.train_text is None:
            raise TaskError(f"{dataset.path}: has no review text, which --model {self.kind} learns from; convert "
                            "reviews with text (Amazon JSON lines, or --text_col) with convert.py --split random")
        if not dataset.vocabulary[0] or dataset.train_text.values.numel() == 0:
            raise TaskError(f"{dataset.path}: its training reviews have no words (the source had no review text, or "
                            f"--skip_top left none), so --model {self.kind} has nothing to learn from")
        if self._rates():
            super().check(dataset, config)

    def _rates(self):
        return traits(self.model_class).output == "rating"

    def data_settings(self, dataset):
        return {"num_words": max(len(dataset.vocabulary[0]), 1)}

    def prepare(self, model, dataset, config, load_model):
        if isinstance(model, (TextItem, TextMF)):
            model.sampler.set_counts(dataset.vocabulary[1])
        return super().prepare(model, dataset, config, load_model)

    def batches(self, config, dataset, runtime, text=None):
        return super().batches(config, dataset, runtime, dataset.train_text)

    def evaluator(self, config, dataset, model, autocast, runtime, reads_review=False):
        if self._rates():
            return super().evaluator(config, dataset, model, autocast, runtime, traits(model).reads_review)
        return text_evaluator(dataset, model, autocast,
                              config.valid_batch_size or evaluation.default_batch_samples(runtime.device))

    def selection(self, dataset, config):
        if self._rates():
            return super().selection(dataset, config)
        return evaluation.Selection(f"{'valid_' if dataset.validation is not None else ''}text_loss",
                                    higher_is_better=False)


def text_evaluator(dataset, model, autocast, batch_size):
    """``textitem``'s evaluation: the mean text loss of the held-out reviews (``text_loss``, and ``valid_text_loss``
    with a validation set), its negative words drawn the same way at every evaluation."""

    def evaluate():
        metrics, scored = {}, 0
        model.eval()
        for prefix, held in evaluation.held_out_sets(dataset):
            users = torch.repeat_interleave(held.users, held.offsets.diff())
            generator = torch.Generator(users.device).manual_seed(0)
            total, reviews = 0.0, 0
            with torch.no_grad():
                for start in range(0, users.numel(), batch_size):
                    rows = torch.arange(start, min(start + batch_size, users.numel()), device=users.device)
                    with autocast():
                        loss, count = model.text_loss(held.items[rows], *held.text.take(rows), generator)
                    total, reviews = total + float(loss), reviews + count
            metrics[prefix + "text_loss"] = total / max(reviews, 1)
            scored += users.numel()
        return metrics | {"eval_samples": scored}

    return evaluate


FAMILY = TextFamily()
