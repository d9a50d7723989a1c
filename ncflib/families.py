"""The model families and their registry: ``--model`` -> the family that trains, evaluates and serves it.

A family is one module exporting one ``Family`` object, and one line in ``BUILTIN`` (or one ``register`` call, for a
family defined elsewhere). The object bundles everything that differs between families: its model kinds and
constructors, its flag group, the settings it chooses from the data, its checks against a dataset, its batches, its
evaluation and the metric the best epoch is chosen on (with its direction), the settings a resumed run must share
with its checkpoint, and what ``recommend.py`` can do with its models. The training loop, checkpoints, logs and
``recommend.py`` ask the family; no module outside this one branches on a family's or a model's name.

    family = family_of("neumf")                   # the implicit family
    model = constructor("dotbias")(num_users=943, num_items=1682, factors=64)
    register(MyFamily())                          # a new family: its kinds join --model
"""

import importlib
import inspect
from typing import Protocol, runtime_checkable

import torch

from ncflib import training
from ncflib.defaults import DEFAULT_EPOCHS, DEMO_EPOCHS
from ncflib.errors import TaskError

# The built-in families: the module of each, which exports ``FAMILY``. Imported on first use, so that importing the
# registry imports no model code.
BUILTIN = ("ncflib.implicit", "ncflib.ratings", "ncflib.reviews", "ncflib.ease")

_REGISTERED = []  # Family objects, in registration order (--model lists their kinds in this order)


# ------------------------------------------------------------------------------------------------ what models offer


@runtime_checkable
class Model(Protocol):
    """What every model offers the training loop: ``forward(users, items, ...)`` (logits or ratings for pairs) and
    ``training_loss(**settings)``, the loss function ``training.fit`` calls as ``loss(model, inputs, autocast)`` ->
    (loss sum to report, loss sum to minimise). The settings it names are read from the run's configuration."""

    def forward(self, users: torch.Tensor, items: torch.Tensor, *args) -> torch.Tensor: ...

    def training_loss(self, **settings): ...


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

    def user_parameter_names(self) -> list: ...


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


# ------------------------------------------------------------------------------------------------ the family object


class Family:
    """What one model family does differently. Subclasses set ``name``, ``models`` and ``description`` and override
    what differs; the defaults here are those of a family that ranks nothing special and needs no extra flags.

    Methods that take ``kind`` get the ``--model`` value; ``config`` is the run's resolved configuration (an object
    with an attribute per flag) and ``args`` the flags as parsed.
    """

    name = "family"
    models = {}  # kind -> model constructor (num_users, num_items, then hyper-parameters by name)
    description = ""  # how --help describes the kinds
    shards_tables = True  # its tables can be sharded with --embedding_sharding
    ranks_items = True  # its evaluation ranks items (so --export_full needs --eval_protocol sampled)

    # --- flags and settings
    def add_arguments(self, parser):
        """Add the family's flag group to ncf.py's parser."""

    def flag_checks(self, args):
        """[(flag, value, rule)] of the family's flags, checked whatever --model is (rules: ncf.RULES)."""
        return []

    def flag_problem(self, kind, args):
        """A one-line problem with the flags given for a ``kind`` model, or None."""
        return

    def default_epochs(self, args):
        """-e when not given (``args``: the flags as parsed)."""
        return DEMO_EPOCHS if args.data is None else DEFAULT_EPOCHS

    def choose(self, kind, args, dataset):
        """The settings chosen from the data where the flags leave them open: (values by flag name, notes {what:
        (value, how chosen)} to print, a warning or None). Here the common optimizer settings, as given, else
        plain Adam's (batch 2^10 at most one epoch, rate 1e-3, betas 0.9 and 0.999, no weight decay, a constant
        rate); the families override it with the settings measured for their models."""
        plain = {"batch_size": min(2**10, max(dataset.num_train, 1)), "learning_rate": 1e-3, "beta1": 0.9,
                 "beta2": 0.999, "weight_decay": 0.0, "lr_schedule": "constant"}
        values = {name: plain[name] if getattr(args, name) is None else getattr(args, name) for name in plain}
        notes = {name.replace("_", " "): (values[name], "plain Adam's; set with its flag")
                 for name in plain if getattr(args, name) is None}
        return values, notes, None

    def describe(self, kind, config):
        """What ncf.py prints after the model's name (empty, or starting with a space)."""
        return ""

    # --- data and model
    def check(self, kind, dataset, config):
        """A TaskError when a ``kind`` model cannot be trained or evaluated on ``dataset`` with ``config``."""

    def data_settings(self, dataset):
        """Constructor arguments that come from the data rather than the flags."""
        return {}

    def prepare(self, model, kind, dataset, config):
        """A fresh model readied for training (data-dependent starting values, given tables)."""
        return model

    def training_loss(self, kind, model, settings):
        """``training.fit``'s loss function for ``model``: its own ``training_loss``, given the settings (a mapping
        such as the configuration) that method names."""
        return model.training_loss(**{name: settings[name] for name in inspect.signature(model.training_loss).parameters
                                      if name in settings})

    def optimizer(self, model, config):
        """The optimizer over ``model`` (the part the dense optimizer trains): --optimizer's, the family's
        ``undecayed`` parameters spared weight decay."""
        return training.make_optimizer(model, config.optimizer, self.undecayed(model), lr=config.learning_rate,
                                       betas=(config.beta1, config.beta2), eps=config.eps,
                                       weight_decay=config.weight_decay)

    def fit(self, *args, config=None, dataset=None, **options):
        """The training loop: ``training.fit`` (``config`` and ``dataset`` are for families with a loop of their
        own, such as a closed form)."""
        return training.fit(*args, **options)

    def undecayed(self, model):
        """The parameters weight decay leaves alone."""
        return []

    # --- training and evaluation
    def batches(self, kind, config, dataset, runtime):
        """A function epoch -> that epoch's training batches (``dataloading.Batch`` each, with ``len()``)."""
        raise NotImplementedError

    def evaluator(self, kind, config, dataset, model, autocast, runtime):
        """A function () -> metrics by logged name (``valid_``-prefixed for the validation set; ``eval_samples``
        for the throughput), evaluating ``model`` (the plain module)."""
        raise NotImplementedError

    def selection(self, kind, dataset, config):
        """The ``training.Selection`` (metric name and direction) the best epoch is chosen on."""
        raise NotImplementedError

    def resume_fields(self, kind, config):
        """(key, flag, value of checkpoints older than the flag, whether it applies) of the family's settings that a
        resumed run must share with its checkpoint (``checkpoint.check_resumable``)."""
        return []

    # --- recommend.py
    def tasks(self, kind, model):
        """What ``recommend.py`` can do with ``model`` (a subset of RECOMMEND_TASKS), from what it offers."""
        offered = set()
        if isinstance(model, (RanksAllItems, FastRanker)):
            offered |= {"top_k", "predict", "export"}
        if isinstance(model, HasItemVectors):
            offered |= {"similar", "plot"}
        if isinstance(model, HasItemWords):
            offered.add("words")
        if isinstance(model, HasItemBiases) and model.item_biases() is not None:
            offered.add("biases")
        return offered

    def refusal(self, kind):
        """Why recommend.py has no top-k lists for a ``kind`` model (when 'top_k' is not offered)."""
        return "ranks no items for users"

    def prediction(self, kind, model, value):
        """How ``recommend.py --predict`` states ``model``'s output ``value`` for one pair."""
        return f"score {value:.4f}"

    def export_output(self, kind, model):
        """What the exported ONNX model outputs, in words."""
        return "logit (float32 [N]); sigmoid(logit) is the probability"

    def export_formula(self, kind):
        """How the exported arrays give a score, in words, or None where they alone do not."""
        return


RECOMMEND_TASKS = ("top_k", "predict", "similar", "plot", "words", "biases", "fold_in", "export")


# ------------------------------------------------------------------------------------------------ the registry


def register(family):
    """Add ``family`` (a Family) to the registry; its kinds must be new. Returns it."""
    _load_builtin()
    taken = {kind for other in _REGISTERED for kind in other.models}
    clash = sorted(taken & set(family.models))
    if clash:
        raise ValueError(f"model kinds {clash} are registered already.")
    _REGISTERED.append(family)
    return family


def unregister(family):
    """Remove a family added by ``register`` (tests)."""
    _REGISTERED.remove(family)


_LOADED = []


def _load_builtin():
    if _LOADED:
        return
    _LOADED.append(True)
    for module in BUILTIN:
        _REGISTERED.append(importlib.import_module(module).FAMILY)


def all_families():
    _load_builtin()
    return list(_REGISTERED)


def model_kinds():
    """Every --model value, family by family."""
    return [kind for family in all_families() for kind in family.models]


def family_of(kind):
    """The family of a --model value; a TaskError for one no family has."""
    for family in all_families():
        if kind in family.models:
            return family
    raise TaskError(f"unknown model {str(kind)[:40]!r}; this tool knows {', '.join(model_kinds())}")


def constructor(kind):
    return family_of(kind).models[kind]


def kind_of(model):
    """The --model value of a model object (its constructor's kind)."""
    for family in all_families():
        for kind, made_by in family.models.items():
            if type(model) is made_by:
                return kind
    raise TaskError(f"a {type(model).__name__} is no model of a registered family")


def with_defaults(kind, model_args):
    """``model_args`` of a ``kind`` model with its constructor's defaults filled in where a checkpoint of an earlier
    version (before that argument existed) has none, so the two compare as the same model."""
    defaults = {name: parameter.default for name, parameter in inspect.signature(constructor(kind)).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    return {**defaults, **{name: list(value) if isinstance(value, tuple) else value
                           for name, value in model_args.items()}}


def hyper_parameters(kind):
    """The constructor arguments of a ``kind`` model besides the counts, by name."""
    return [name for name in inspect.signature(constructor(kind)).parameters if name not in ("num_users", "num_items")]
