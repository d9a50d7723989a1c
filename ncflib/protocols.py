"""What a model can do, declared once: the protocols its class implements, and one traits record.

The training loop, evaluation, checkpoints and ``recommend.py``'s tasks know a model only through these. A protocol
is a method the model class has (``isinstance(model, RanksAllItems)``); ``traits(model)`` gives the facts that are not
methods (what its output means, whether its scoring is a collective). Nothing reads a model's attributes by name
elsewhere.

    if isinstance(model, RanksAllItems):
        scores = model.score_all(users)           # [B, num_items]
    traits(model).output                          # 'logit', 'rating', 'score' or None

How a model is fitted:
- ``TrainedByGradient``: ``training_loss(**settings)`` gives the loss function the one epoch loop
  (``ncflib.training.fit``) minimises, as ``loss(model, inputs, autocast) -> (reported, minimised)``.
- ``SolvedInClosedForm``: ``solve(users, items, setting)`` fits the training pairs with one setting; the loop takes
  one setting per epoch (EASE: one L2 weight) and trains nothing.
"""

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Traits:
    """The facts about a model that are not methods.

    ``output``: what ``forward`` returns: 'logit' (sigmoid gives a probability), 'rating', 'score' (a ranking score
    with no scale), or None (a model that predicts nothing for a pair, trained for its item vectors).
    ``lockstep``: its scoring is a collective (sharded tables): every rank calls it as often as the others.
    ``large_chunks``: scoring every item costs no work per (user, item) beyond a sum, so full ranking takes large
    chunks of users (a dot product, EASE's sums of rows).
    ``reads_review``: it reads the held-out review to predict its rating (a diagnostic, not a recommender).
    ``shards``: its tables are user and item tables that ``--embedding_sharding`` can shard.
    ``formula``: how its exported arrays give a score, in words (None where they alone do not).
    """

    output: str | None = "logit"
    lockstep: bool = False
    large_chunks: bool = False
    reads_review: bool = False
    shards: bool = True
    formula: str | None = None


DEFAULT_TRAITS = Traits()


def traits(model):
    """The ``Traits`` of a model or a model class (``traits`` on it, else the defaults)."""
    return getattr(model, "traits", DEFAULT_TRAITS)


@runtime_checkable
class TrainedByGradient(Protocol):
    """A model trained by the epoch loop's gradient steps."""

    def training_loss(self, **settings):
        """The loss function ``loss(model, inputs, autocast) -> (loss sum to report, loss sum to minimise)``, given
        the settings (a mapping such as the run's configuration) this method names."""


@runtime_checkable
class SolvedInClosedForm(Protocol):
    """A model fitted in closed form, one setting at a time (each setting is an epoch record of the loop)."""

    def solve(self, users: torch.Tensor, items: torch.Tensor, setting) -> dict:
        """Fit the training pairs (users, items [N]) with ``setting``; returns what the epoch's record adds."""


@runtime_checkable
class RanksAllItems(Protocol):
    """A model that scores every item for a user: full-ranking evaluation and ``recommend.py``'s top-k use it."""

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """[B, num_items] scores of users [B] for every item (higher is better)."""


@runtime_checkable
class RanksCandidates(Protocol):
    """A model that scores each user's own candidates at once (sampled evaluation), cheaper than pair by pair."""

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, C] scores of users [B] for their candidates items [B, C], as ``forward`` for every pair."""


@runtime_checkable
class FastRanker(Protocol):
    """A model that, with its weights fixed, prepares a faster all-item scorer than ``score_all``."""

    def all_item_scorer(self):
        """A function users [B] -> float32 scores [B, num_items]."""


@runtime_checkable
class SparseScorer(Protocol):
    """A model whose scores are zero but for a few items per user (RP3beta's sums of neighbour rows): full ranking
    reads only those, never a users x items matrix, so a catalogue of millions costs what its scores hold."""

    def score_entries(self, users: torch.Tensor):
        """(rows, items, scores) [n]: each user's listed items and scores, a user's entries together, users in
        order; every item not listed scores 0, and no listed score is below 0."""


@runtime_checkable
class DotProductScorer(Protocol):
    """A model whose score is the dot product of a user vector and an item vector (plus a bias): shared negatives
    and --similarity cosine need it, and full ranking scores it in large chunks."""

    def towers(self, users: torch.Tensor, items: torch.Tensor):
        """(user vectors [..., D], item vectors [..., D], bias)."""


@runtime_checkable
class HasItemVectors(Protocol):
    """A model with item representations: ``recommend.py --similar_to`` compares them, ``--plot_items`` draws them."""

    def item_vectors(self) -> dict:
        """{what it is: [num_items, D]}."""


@runtime_checkable
class HasUserRows(Protocol):
    """A model whose users are rows of tables: a fold-in fits those rows for a new user, all else frozen."""

    def user_parameter_names(self) -> list:
        """The names of the parameters with one row per user."""


@runtime_checkable
class HasItemWords(Protocol):
    """A model whose item vectors live in the word space of reviews (``recommend.py --words``)."""

    def item_words(self, items: torch.Tensor) -> torch.Tensor:
        """[n, num_words] similarity of each item with every word."""


@runtime_checkable
class ScoresHistory(Protocol):
    """A model that scores every item for a user from their items alone (``recommend.py --history``, no fold-in)."""

    def score_history(self, items: torch.Tensor) -> torch.Tensor:
        """[num_items] scores of a user who interacted with ``items``."""


@runtime_checkable
class HasItemBiases(Protocol):
    """A model with a learned bias per item (``recommend.py --biases``)."""

    def item_biases(self) -> torch.Tensor | None:
        """[num_items] the biases, or None when this configuration has none."""


@runtime_checkable
class ExportsArrays(Protocol):
    """A model that names the arrays ``recommend.py --export`` writes (a model without it exports its embedding
    tables, biases and buffers)."""

    def export_arrays(self) -> dict:
        """{file stem: tensor} of the arrays that describe the model."""


@runtime_checkable
class StartsFromMean(Protocol):
    """A model whose predictions start from the training ratings' mean."""

    def set_mean(self, value: float): ...


@runtime_checkable
class HasTables(Protocol):
    """A model whose user and item tables can start from given arrays and be frozen."""

    def load_embeddings(self, users=None, items=None): ...

    def freeze(self, users=False, items=False): ...


@runtime_checkable
class StartsFromPretrained(Protocol):
    """A model that starts from trained models of its parts (NeuMF from GMF and MLP)."""

    def load_pretrained(self, gmf, mlp, alpha: float): ...
