"""The implicit-feedback family: GMF, MLP and NeuMF (neumf.py) trained on positives and sampled negatives.

Batches of positives with negatives drawn on the device (``dataloading.ImplicitBatches``), binary cross-entropy
(the models' ``training_loss``), HR/NDCG against sampled negatives or Recall/NDCG/MRR over every item, higher being
better. ``FAMILY`` is the object the registry (``ncflib.families``) maps ``--model neumf|gmf|mlp`` to.
"""

import inspect

import torch

import dataloading
from ncflib import defaults
from ncflib.errors import CheckpointError, TaskError
from ncflib.families import Family, gradient_space, takes
from ncflib.losses import LOSSES, masked_hits
from ncflib.protocols import DotProductScorer, StartsFromPretrained
from neumf import GMF, MLP, NeuMF, grouping

LAYERS_DEFAULT = (f"NVIDIA's {' '.join(map(str, defaults.NVIDIA_LAYERS))}, halved to "
                  f"{' '.join(map(str, defaults.SMALL_LAYERS))} below {defaults.SMALL_DATA:,} training pairs "
                  "(printed at start)")

def _takes(constructor, name):
    return name in inspect.signature(constructor).parameters


def _trains_branches(constructor):
    """Whether the model's loss has NeuMF's branch losses (``--branch_loss``)."""
    return _takes(constructor.training_loss, "branch_loss")


def _has_towers(constructor):
    """Whether a model of ``constructor`` scores pairs as a dot product of a user and an item vector (``towers``):
    what --similarity cosine and shared negatives need."""
    return issubclass(constructor, DotProductScorer)


def _loss_options(config):
    return {"temperature": config["temperature"], "margin": config["margin"],
            "negative_weight": config["negative_weight"]}


def per_sample_loss(name, options):
    """``training.fit``'s loss function for --loss ``name`` on ``ImplicitInputs``: each positive's own negatives
    (the batch's 1 + n blocks) scored through the model's forward; returns the loss times 1 + n, so that the loop's
    division by the batch's samples leaves the mean over positives."""
    loss_of = LOSSES[name]

    def loss(model, inputs, autocast):
        users, items, labels, weights, *groups = inputs
        blocks = groups[0] if groups else 1
        with autocast():
            scores = model(users, items, **grouping(groups))
        scores = scores.float().view(blocks, -1)  # [1 + n, B]: the positives, then each round of negatives
        positive, negative = scores[0], scores[1:].T
        total = loss_of(positive, negative, None if weights is None else weights[:positive.numel()], **options)
        return total * blocks, total * blocks

    return loss


def shared_loss(name, options, correct=False):
    """``training.fit``'s loss function for --loss ``name`` on ``SharedInputs``: every user of the batch scores the
    batch's shared negatives in one product of its user vectors with theirs (``towers``); a negative that is the
    row's own positive counts for nothing. Returns the loss times 1 + N (the mean over positives after the loop's
    division by samples). With ``correct``, the negatives' log sampling probabilities go to the loss (``softmax``'s
    logQ correction)."""
    loss_of = LOSSES[name]
    # The softmax divides every score by its temperature: done to the user vectors (and the bias) before the
    # product, one [B, D] multiply instead of one over the [B, N] scores.
    scale = 1.0 / options["temperature"] if name == "softmax" else 1.0
    options = {**options, "temperature": 1.0} if name == "softmax" else options

    def loss(model, inputs, autocast):
        users, items, negatives, log_q, weights = inputs
        with autocast():
            user_vectors, item_vectors, bias = model(users, torch.cat([items, negatives]), towers=True)
            if scale != 1.0:
                user_vectors, bias = user_vectors * scale, bias * scale
            positive = (user_vectors * item_vectors[:items.numel()]).sum(-1) + bias
            negative = user_vectors @ item_vectors[items.numel():].T + bias  # [B, N]
        negative = masked_hits(negative.float(), items, negatives)
        total = loss_of(positive.float(), negative, weights, log_q=log_q if correct else None, **options) * (
            1 + negatives.numel())
        return total, total

    return loss


def _pretrainable(constructor):
    """Whether a model of ``constructor`` starts from trained GMF and MLP models (``load_pretrained``)."""
    return issubclass(constructor, StartsFromPretrained)


def effective_loss(args, towers):
    """(--loss, shared negatives per batch) a run of these flags trains with, before the data is read: as given,
    else the full-ranking default (a sampled softmax over shared negatives) for a dot-product model under full
    ranking or with shared negatives, else BCE over each positive's own negatives."""
    full = args.eval_protocol == "full" and towers
    loss = args.loss or (defaults.FULL_RANKING["loss"] if args.shared_negatives or full else "bce")
    if args.shared_negatives is not None or not towers:
        return loss, args.shared_negatives or 0
    return loss, defaults.FULL_RANKING["shared_negatives"] if loss != "bce" or full else 0


# Flags read by one loss only: (flag, attribute, the losses that read it).
LOSS_FLAGS = (("--temperature", "temperature", ("softmax",)), ("--margin", "margin", ("ccl",)),
              ("--negative_weight", "negative_weight", ("ccl",)))


DEFAULT_OF = {"margin": 0.8}  # the defaults of the flags above that have one


class ImplicitFamily(Family):
    name = "implicit"
    models = {"neumf": NeuMF, "gmf": GMF, "mlp": MLP}
    description = "neumf, gmf or mlp on implicit feedback (HR/NDCG)"

    def add_arguments(self, parser, flags):
        group = parser.add_argument_group("implicit-feedback models (neumf, gmf, mlp)")
        kinds = tuple(self.models)
        towers = [kind for kind, made_by in self.models.items() if _has_towers(made_by)]
        flags.add(group, "-n", "--negative_samples", type=int, default=None, readers=kinds, rule="0 or more",
                  help="negatives drawn per positive, each epoch; default: chosen from the dataset size (printed at "
                       "start): NVIDIA's 4, up to 16 on small datasets (the built-in demo keeps 4)")
        flags.add(group, "--negative_sampling", choices=["exact", "uniform"], default="exact", readers=kinds,
                  help="'exact' never draws a user's own positives as negatives; 'uniform' draws from all items as "
                       "NVIDIA does (faster, slightly less accurate)")
        flags.add(group, "--loss", choices=list(LOSSES), default=None, readers=kinds,
                  help="the training loss: 'bce' (NVIDIA's, the paper's) of each score against its label; 'bpr' "
                       "pairwise; 'softmax' sampled softmax over each positive and its negatives (--temperature); "
                       "'ccl' SimpleX's cosine contrastive loss (--margin, --negative_weight; needs --similarity "
                       "cosine). Default: bce for sampled evaluation, the full-ranking default under --eval_protocol "
                       "full (printed at start)")
        flags.add(group, "--similarity", choices=["dot", "cosine"], default=None, readers=tuple(towers),
                  help="gmf: score a pair by the weighted dot product of its embeddings (NCF's) or by their cosine "
                       "(SimpleX's MF); default cosine for ccl, else dot")
        # (A scaled score beyond about +-1000 makes the softmax a hard maximum whose loss overflows float32's
        # exponent range in its gradient; below about 0.001 the scores are flat and nothing is learned.)
        flags.add(group, "--temperature", type=float, default=None, readers=kinds, rule="in [1e-3, 1e3]",
                  help="--loss softmax: the scores are divided by it; default 1 for dot, for cosine chosen from the "
                       "catalogue's size (lower for more items; printed)")
        flags.add(group, "--margin", type=float, default=0.8, readers=kinds, rule="in [-1, 1)",
                  help="--loss ccl: negatives count only when their cosine exceeds this (a cosine lies in [-1, 1], "
                       "so a margin of 1 or more would count none)")
        flags.add(group, "--negative_weight", type=float, default=None, readers=kinds, rule="0 or more",
                  help="--loss ccl: the weight of the mean negative term; default (printed) chosen on validation")
        flags.add(group, "--shared_negatives", type=int, default=None, metavar="N", readers=tuple(towers),
                  rule="0 or more",
                  help="draw N negatives per batch, scored by every user of the batch in one product (gmf only; -b "
                       "then counts positives); 0: -n negatives drawn for each positive, exactly as NVIDIA's (the "
                       "default for bce)")
        flags.add(group, "--negative_popularity", type=float, default=0.0, metavar="BETA", readers=tuple(towers),
                  rule="0 or more",
                  help="shared negatives drawn in proportion to each item's training count to the power BETA (0: "
                       "uniformly)")
        flags.add(group, "--logq", action="store_true", readers=tuple(towers),
                  help="--loss softmax over shared negatives: subtract from each negative's scaled score the log of "
                       "its expected draws per batch, log(N q_j), so the sampled softmax estimates the full one (the "
                       "logQ correction); for uniform draws the constant log(N / items)")
        flags.add(group, "--pretrain_gmf", readers=_pretrainable,
                  help="GMF checkpoint to initialise NeuMF from (with --pretrain_mlp)")
        flags.add(group, "--pretrain_mlp", readers=_pretrainable,
                  help="MLP checkpoint to initialise NeuMF from (with --pretrain_gmf)")
        flags.add(group, "--alpha", type=float, default=0.5, readers=_pretrainable, rule="in [0, 1]",
                  help="weight of the GMF output layer when mixing pre-trained output layers (the paper's 0.5; "
                       "bench/alpha_sweep.py scores each alpha before fine-tuning)")
        flags.add(group, "--branch_loss", type=float, default=1.0, metavar="WEIGHT", readers=_trains_branches,
                  rule="0 or more",
                  help="NeuMF only: each branch (the GMF and the MLP inside NeuMF) also scores every training pair "
                       "through its own output layer, and those two losses, times WEIGHT, are added to NeuMF's, so "
                       "each branch learns to be a model of its own, as pre-training makes it, in one run "
                       "(docs/history.md); 0 trains NeuMF's joint output alone, as the paper and NVIDIA do")
        flags.add(group, "--recency", type=float, default=0.0, metavar="WEIGHT", readers=kinds, rule="0 or more",
                  help="weight each user's recent training pairs up: a pair's loss (and its negatives') counts 1 + "
                       "WEIGHT * exp(-r / --recency_window) times, r being how many of the user's training pairs are "
                       "later; the test item is each user's latest, and recent tastes predict it best "
                       "(docs/history.md). Needs the dataset's timestamps (convert.py keeps them); 0: off, every "
                       "pair counts once, as in the paper and NVIDIA's tool")
        flags.add(group, "--recency_window", type=float, default=10.0, metavar="PAIRS", readers=kinds,
                  rule="positive",
                  help="with --recency: how many of a user's latest pairs get most of the extra weight (the extra "
                       "falls by e each PAIRS pairs further back)")

    def tuned_by_default(self, protocol):
        # (A model scored by one dot product ranks every item fast; NeuMF's and MLP's MLP towers do not.)
        return _has_towers(self.model_class) or protocol == "sampled"

    def search_space(self, trial, protocol, timed=False):
        kind = self.kind
        flags = gradient_space(trial, kind, self.model_class, (3e-4, 1e-2), (1e-4, 0.3), (10, 20, 30, 40),
                               (32, 64, 128))
        if protocol == "full" and _has_towers(self.model_class):  # its full-ranking default: a sampled softmax
            flags += ["--temperature", f"{trial.suggest_float(f'{kind}.temperature', 0.05, 0.5, log=True):.4g}"]
        else:
            flags += ["-n", str(trial.suggest_categorical(f"{kind}.negatives", [4, 8, 16]))]
        if takes("dropout")(self.model_class):
            flags += ["--dropout", f"{trial.suggest_float(f'{kind}.dropout', 0.0, 0.5):.3g}"]
        if timed and protocol == "sampled":  # (leave-one-out holds out each user's latest item: recent pairs matter)
            flags += ["--recency", str(trial.suggest_categorical(f"{kind}.recency", [0, 2, 4, 8, 16]))]
        return flags

    def check_flags(self, args):
        if bool(args.pretrain_gmf) != bool(args.pretrain_mlp):
            return "--pretrain_gmf and --pretrain_mlp go together"
        if args.pretrain_gmf and args.load_checkpoint_path:
            return "--pretrain_gmf/--pretrain_mlp start a fresh model; drop --load_checkpoint_path"
        if args.loss == "ccl" and args.similarity == "dot":
            return "--loss ccl is a loss on cosines: use --similarity cosine (its default)"
        if args.layers and args.layers[0] % 2:
            return (f"--layers: the first size is the user and item embeddings concatenated, so it must be even, got "
                    f"{args.layers[0]}")
        loss, shared = effective_loss(args, _has_towers(self.model_class))
        for flag, name, readers in LOSS_FLAGS:
            if getattr(args, name) not in (None, DEFAULT_OF.get(name)) and loss not in readers:
                return f"{flag} is used by --loss {' '.join(readers)}; --loss {loss} does not read it"
        if args.logq and not (loss == "softmax" and shared):
            return (f"--logq corrects a sampled softmax over shared negatives (--loss softmax --shared_negatives N); "
                    f"this run trains --loss {loss} over " + ("shared negatives" if shared else "-n negatives per "
                                                               "positive"))
        if args.negative_popularity and not shared:
            return "--negative_popularity draws shared negatives; add --shared_negatives N"
        return None

    def default_epochs(self, args):
        if args.eval_protocol == "full" and _has_towers(self.model_class):
            return defaults.FULL_RANKING["epochs"]
        return super().default_epochs(args)

    def choose(self, args, dataset):
        if args.shared_negatives and args.shared_negatives > dataset.num_items:  # (the default draws with repeats)
            raise TaskError(f"--shared_negatives {args.shared_negatives:,} draws more negatives per batch than "
                            f"{dataset.path} has items ({dataset.num_items:,}); pass --shared_negatives "
                            f"{dataset.num_items:,} or fewer")
        if args.recency and args.mode == "train":  # before anything is written: the weights need the pairs' times
            dataset.weighted_by_recency(args.recency, args.recency_window)
        towers = _has_towers(self.model_class)
        contrastive = (args.loss not in (None, "bce") or bool(args.shared_negatives)
                       or (args.eval_protocol == "full" and towers and args.loss is None))
        if contrastive:
            values, notes, warning = defaults.choose_contrastive(
                dataset.num_train, dataset.num_items, args.loss, args.similarity, args.temperature,
                args.negative_weight,
                args.shared_negatives if towers else 0, args.batch_size, args.learning_rate, args.beta1, args.beta2,
                args.weight_decay, args.lr_schedule)
            values["negative_samples"] = (defaults.choose_negatives(dataset.num_train)
                                          if args.negative_samples is None else args.negative_samples)
        else:
            given = (args.negative_samples, args.batch_size, args.learning_rate, args.beta1, args.beta2,
                     args.weight_decay, args.lr_schedule)
            values, notes, warning = defaults.choose_sizes(dataset.num_train, dataset.num_items, args.data is None,
                                                           *given)
            values |= {"loss": "bce", "similarity": args.similarity or "dot", "shared_negatives": 0,
                       "temperature": args.temperature or 1.0, "negative_weight": args.negative_weight or 1.0}
        if args.eval_protocol == "full" and not towers:
            notes["full ranking"] = (f"{self.kind} scores every user-item pair through its tower, slow on large "
                                     "catalogues", "--model gmf ranks with one product")
        layers = args.layers
        if layers is None and _takes(self.model_class, "layers"):
            layers = defaults.choose_layers(dataset.num_train)
            notes["MLP layers"] = (" ".join(map(str, layers)), f"chosen for {dataset.num_train:,} training pairs; "
                                   "set with --layers")
        values["layers"] = defaults.NVIDIA_LAYERS if layers is None else layers
        values["dropout"] = defaults.IMPLICIT_DROPOUT if args.dropout is None else args.dropout
        return values, notes, warning

    def describe(self, config, dataset):
        if _trains_branches(self.model_class) and config.branch_loss:
            return f" (branch losses x {config.branch_loss:g})"
        return ""

    def training_data(self, dataset, config):
        """The dataset with --recency's loss weights on its training pairs, when asked for."""
        return dataset.weighted_by_recency(config.recency, config.recency_window) if config.recency else dataset

    def prepare(self, model, dataset, config, load_model):
        """NeuMF from pre-trained GMF and MLP checkpoints (output layers mixed by --alpha) when they are given."""
        if not config.pretrain_gmf:
            return model
        gmf, mlp = (load_model(path, dataset, expected) for path, expected in
                    ((config.pretrain_gmf, "gmf"), (config.pretrain_mlp, "mlp")))
        if gmf.user_embedding.embedding_dim != config.factors or mlp.layer_sizes != list(config.layers):
            raise CheckpointError("--pretrain_gmf/--pretrain_mlp: their sizes differ from --factors/--layers")
        return model.load_pretrained(gmf, mlp, config.alpha)

    def batches(self, config, dataset, runtime):
        if config.shared_negatives:
            distribution = (dataloading.negative_distribution(dataset.train_items, dataset.num_items,
                                                              config.negative_popularity)
                            if config.negative_popularity else None)
            return lambda epoch: dataloading.SharedNegativeBatches(
                dataset, config.batch_size, config.shared_negatives, dataloading.epoch_seed(config.seed, epoch),
                distribution, runtime.rank, runtime.world_size)
        positives = (dataloading.PositiveSet(dataset.train_users, dataset.train_items, dataset.num_users,
                                             dataset.num_items) if config.negative_sampling == "exact" else None)
        return lambda epoch: dataloading.ImplicitBatches(dataset, config.batch_size, config.negative_samples,
                                                         dataloading.epoch_seed(config.seed, epoch), positives,
                                                         runtime.rank, runtime.world_size)

    def loss(self, model, settings):
        """The model's own loss (NVIDIA's BCE, NeuMF's branch losses) for bce with each positive's own negatives;
        else --loss over each positive's negatives, or over the batch's shared negatives."""
        if settings["shared_negatives"]:
            return shared_loss(settings["loss"], _loss_options(settings), correct=settings["logq"])
        if settings["loss"] == "bce":
            return super().loss(model, settings)
        return per_sample_loss(settings["loss"], _loss_options(settings))

    def fold_in_loss(self, model, config):
        """The loss the checkpoint's run trained with (shared negatives: the candidates shared by the history's
        items; --logq's correction left out, as the fold-in weighs every candidate rather than drawing them); the
        model's own for a checkpoint that records no loss (written before --loss existed)."""
        if "loss" not in config:
            return super().loss(model, config), "pairs"
        if config.get("shared_negatives"):
            return shared_loss(config["loss"], _loss_options(config)), "shared"
        if config.get("loss", "bce") == "bce":
            return super().loss(model, config), "pairs"
        return per_sample_loss(config["loss"], _loss_options(config)), "blocks"

    def resume_fields(self, config):
        return [("loss", "--loss", "bce", True), ("similarity", "--similarity", "dot", True),
                ("shared_negatives", "--shared_negatives", 0, True), ("temperature", "--temperature", None, True),
                ("negative_popularity", "--negative_popularity", 0.0, True),
                ("negative_samples", "-n", None, True), ("recency", "--recency", 0.0, True),
                ("recency_window", "--recency_window", 10.0, bool(config["recency"])),
                ("branch_loss", "--branch_loss", 0.0, _trains_branches(self.model_class))]


FAMILY = ImplicitFamily()
