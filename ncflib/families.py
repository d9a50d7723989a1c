"""The model families and their registry: ``--model`` -> the family bound to that model.

A family is a bundle of models that share flags, batches and evaluation: one module exporting one ``Family`` object,
and one line in ``BUILTIN`` (or one ``register`` call, for a family defined elsewhere). ``family_of(kind)`` gives
the family bound to one model (``.kind``, ``.model_class``), so no hook is given the model's name back.

The contract, for a newcomer. A model class is the unit that varies: what it can do is the protocols it implements
and its traits (``ncflib.protocols``): ``training_loss`` (trained by the epoch loop's gradient steps) or ``solve``
(fitted in closed form, one setting per epoch), ``score_all``, ``item_vectors``, ``export_arrays`` ... The
loop (``ncflib.training``), checkpoints and ``recommend.py``'s tasks (``ncflib.serving``) derive everything else from
those. A family overrides only what differs from the defaults here, which are those of a ranking model on implicit
feedback:

- flags: ``add_arguments(parser, flags)`` declares its flag group through ``flags.add`` (``ncflib.flags``), each
  flag with the models that read it and its valid range (another model given it stops in one line);
  ``check_flags(args)`` the rules between flags;
- settings: ``default_epochs(args)``, ``choose(args, dataset)`` (what the data decides), ``describe(config, dataset)``;
- data and model: ``check(dataset, config)``, ``training_data(dataset, config)``, ``data_settings(dataset)``,
  ``prepare(model, dataset, config, load_model)``;
- training: ``batches(config, dataset, runtime)`` and ``loss(model, settings)`` for a gradient-trained model,
  ``undecayed(model)``; ``settings(config)`` for one solved in closed form;
- evaluation: ``evaluator(config, dataset, model, autocast, runtime)`` and ``selection(dataset, config)``;
- resuming: ``resume_fields(config)``; serving: ``fold_in_loss(model, config)``.

    family = family_of("neumf")                   # the implicit family, bound to NeuMF
    family.model_class                            # neumf.NeuMF
    register(MyFamily())                          # a new family: its kinds join --model
"""

import copy
import dataclasses
import importlib
import inspect

from ncflib import evaluation, flags
from ncflib.defaults import DEFAULT_EPOCHS, DEMO_EPOCHS
from ncflib.errors import TaskError
from ncflib.optimizers import make_optimizer
from ncflib.protocols import SolvedInClosedForm, traits

# The built-in families: the module of each, which exports ``FAMILY``. Imported on first use, so that importing the
# registry imports no model code.
BUILTIN = ("ncflib.implicit", "ncflib.ratings", "ncflib.reviews", "ncflib.ease", "ncflib.rp3beta", "ncflib.gfcf")

_REGISTERED = []  # Family objects, in registration order (--model lists their kinds in this order)


# ------------------------------------------------------------------------------------------------ flags and readers


class Flags(flags.Flags):
    """``flags.Flags`` whose readers are this registry's models: a flag given to a model that does not read it stops
    in one line naming the models that do."""

    def __init__(self, parser):
        super().__init__(parser, model_kinds, constructor)


def takes(name):
    """A reader rule: the models whose constructor takes ``name`` (a hyper-parameter flag such as --factors)."""
    return lambda model_class: name in inspect.signature(model_class).parameters


def trained_by_gradient(model_class):
    """A reader rule: the models the epoch loop trains by gradient steps (not solved in closed form)."""
    return not issubclass(model_class, SolvedInClosedForm)


def gradient_space(trial, kind, model_class, rates, decays, epochs, factors):
    """The ncf.py flags of a gradient-trained model's common settings in one tuning trial (``Family.search_space``):
    the learning rate and weight decay in the (low, high) ranges ``rates`` and ``decays`` (log scale), the epochs
    from ``epochs``, and the factors from ``factors`` where the model takes them; each named ``<kind>.<setting>``."""
    flags = ["-l", f"{trial.suggest_float(f'{kind}.learning_rate', *rates, log=True):.4g}",
             "--weight_decay", f"{trial.suggest_float(f'{kind}.weight_decay', *decays, log=True):.4g}",
             "-e", str(trial.suggest_categorical(f"{kind}.epochs", list(epochs)))]
    if takes("factors")(model_class):
        flags += ["-f", str(trial.suggest_categorical(f"{kind}.factors", list(factors)))]
    return flags


def ranks_items(model_class):
    """A reader rule: the models evaluated by ranking items (not by predicted ratings or a text loss)."""
    return traits(model_class).output in ("logit", "score")


# ------------------------------------------------------------------------------------------------ the family object


class Family:
    """What one model family does differently (see the module's docstring). Subclasses set ``name``, ``models`` and
    ``description`` and override what differs. ``config`` is the run's resolved configuration (an attribute per
    flag), ``args`` the flags as parsed. A bound family (``family_of``) has ``kind`` and ``model_class``."""

    name = "family"
    models = {}  # kind -> model class (num_users, num_items, then hyper-parameters by name)
    description = ""  # how --help describes the kinds
    kind, model_class = None, None

    def bind(self, kind):
        """This family bound to its ``kind`` model."""
        bound = copy.copy(self)
        bound.kind, bound.model_class = kind, self.models[kind]
        return bound

    # --- flags and settings
    def add_arguments(self, parser, flags):
        """Add the family's flag group to ncf.py's parser, each flag through ``flags.add`` with its readers."""

    def check_flags(self, args):
        """A one-line problem with the flags given together (for this bound model), or None."""
        return

    def default_epochs(self, args):
        """-e when not given (``args``: the flags as parsed); one solve for a model solved in closed form."""
        if not trained_by_gradient(self.model_class):
            return 1
        return DEMO_EPOCHS if args.data is None else DEFAULT_EPOCHS

    def choose(self, args, dataset):
        """The settings chosen from the data where the flags leave them open: (values by flag name, notes {what:
        (value, how chosen)} to print, a warning or None). Here the common optimizer settings, as given, else
        plain Adam's (batch 2^10 at most one epoch, rate 1e-3, betas 0.9 and 0.999, no weight decay, a constant
        rate); the families override it with the settings measured for their models."""
        if not trained_by_gradient(self.model_class):
            return {}, {}, None
        plain = {"batch_size": min(2**10, max(dataset.num_train, 1)), "learning_rate": 1e-3, "beta1": 0.9,
                 "beta2": 0.999, "weight_decay": 0.0, "lr_schedule": "constant"}
        values = {name: plain[name] if getattr(args, name) is None else getattr(args, name) for name in plain}
        notes = {name.replace("_", " "): (values[name], "plain Adam's; set with its flag")
                 for name in plain if getattr(args, name) is None}
        return values, notes, None

    def describe(self, config, dataset):
        """What ncf.py prints after the model's name (empty, or starting with a space)."""
        return ""

    # --- data and model
    def training_data(self, dataset, config):
        """The dataset as the model trains on it (here as it is; the implicit family weighs pairs by recency)."""
        return dataset

    def check(self, dataset, config):
        """A TaskError when the model cannot be trained or evaluated on ``dataset`` with ``config``: here, when the
        evaluation protocol cannot rank its held-out items."""
        problem = evaluation.protocol_problem(dataset, config.eval_protocol, config.topk)
        if problem:
            raise TaskError(problem)

    def data_settings(self, dataset):
        """Constructor arguments that come from the data rather than the flags."""
        return {}

    def prepare(self, model, dataset, config, load_model):
        """A fresh model readied for training (data-dependent starting values, given tables); ``load_model(path,
        dataset, kind)`` loads a checkpoint's model."""
        return model

    # --- training
    def loss(self, model, settings):
        """The loss function of a gradient-trained model: its own ``training_loss``, given the settings (a mapping
        such as the configuration) that method names."""
        return model.training_loss(**{name: settings[name] for name in inspect.signature(model.training_loss).parameters
                                      if name in settings})

    def optimizer(self, model, config):
        """The optimizer over ``model`` (the part the dense optimizer trains): --optimizer's, the family's
        ``undecayed`` parameters spared weight decay."""
        return make_optimizer(model, config.optimizer, self.undecayed(model), lr=config.learning_rate,
                              betas=(config.beta1, config.beta2), eps=config.eps, weight_decay=config.weight_decay)

    def undecayed(self, model):
        """The parameters weight decay leaves alone."""
        return []

    def batches(self, config, dataset, runtime):
        """A function epoch -> that epoch's training batches (``dataloading.Batch`` each, with ``len()``)."""
        raise NotImplementedError(f"the {self.name} family makes no batches for --model {self.kind}")

    def settings(self, config):
        """The settings a model solved in closed form is fitted with, one per epoch: here the epochs' numbers."""
        return list(range(config.epochs))

    def refit_plan(self, config, chosen_epoch):
        """(the configuration a refit on training plus validation pairs runs with, the epochs it runs, what was
        chosen in words) for --refit, given the epoch chosen on validation. Here, a model trained by gradient reruns
        epochs 0 to the chosen one under the same configuration, so that each epoch has the learning rate it had in
        the run that chose it; a model solved in closed form solves once with the chosen epoch's setting."""
        if not trained_by_gradient(self.model_class):
            setting = self.settings(config)[chosen_epoch]
            return dataclasses.replace(config, epochs=1), 1, f"setting {chosen_epoch} ({setting})"
        return config, chosen_epoch + 1, f"{chosen_epoch + 1} epoch{'s' if chosen_epoch else ''}"

    # --- evaluation
    def evaluator(self, config, dataset, model, autocast, runtime):
        """A function () -> metrics by logged name (``valid_``-prefixed for the validation set; ``eval_samples``
        for the throughput), evaluating ``model`` (the plain module): here, ranking the held-out items."""
        batch_size = config.valid_batch_size or evaluation.default_batch_samples(runtime.device)
        return evaluation.evaluator(model, dataset, config.eval_protocol, config.topk, batch_size, autocast,
                                    runtime.rank, runtime.world_size, config.compile)

    def selection(self, dataset, config):
        """The ``evaluation.Selection`` (metric name and direction) the best epoch is chosen on."""
        return evaluation.Selection(evaluation.selection_metric(dataset, config.eval_protocol, config.topk))

    # --- tuning (``ncflib.tune``)
    def tuned_by_default(self, protocol):
        """Whether the tuner tries this model when --models is not given, under evaluation ``protocol``."""
        return False

    def search_space(self, trial, protocol, timed=False):
        """The ncf.py flags of one tuning trial of this model: an Optuna ``trial``'s suggestions, each named
        ``<model>.<setting>``, under evaluation ``protocol``, on data whose training pairs have distinct times
        when ``timed``. The defaults' own choices (batch size, schedule)
        stay as the data chooses them."""
        raise NotImplementedError(f"--model {self.kind} declares no search space")

    # --- resuming and serving
    def resume_fields(self, config):
        """(key, flag, value of checkpoints older than the flag, whether it applies) of the family's settings that a
        resumed run must share with its checkpoint (``checkpoint.check_resumable``)."""
        return []

    def fold_in_loss(self, model, config):
        """(the loss function a new user's rows are fitted with, and how it is laid out: 'pairs' (users, items,
        labels, weights), 'blocks' (the positives, then rounds of negatives) or 'shared' (positives and one set of
        negatives)), as the checkpoint's run (``config``) trained it."""
        return self.loss(model, config), "pairs"


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
    """The family of a --model value, bound to that model; a TaskError for one no family has."""
    for family in all_families():
        if kind in family.models:
            return family.bind(kind)
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
