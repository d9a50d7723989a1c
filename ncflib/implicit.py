"""The implicit-feedback family: GMF, MLP and NeuMF (neumf.py) trained on positives and sampled negatives.

Batches of positives with negatives drawn on the device (``dataloading.ImplicitBatches``), binary cross-entropy
(the models' ``training_loss``), HR/NDCG against sampled negatives or Recall/NDCG/MRR over every item, higher being
better. ``FAMILY`` is the object the registry (``ncflib.families``) maps ``--model neumf|gmf|mlp`` to.
"""

import inspect
import math

import torch

import dataloading
from ncflib import defaults, evaluation
from ncflib import training as train
from ncflib.checkpoint import load_model
from ncflib.errors import CheckpointError, TaskError
from ncflib.families import DotProductScorer, Family
from ncflib.losses import LOSSES, masked_hits
from neumf import GMF, MLP, NeuMF, _grouping

LAYERS_DEFAULT = (f"NVIDIA's {' '.join(map(str, defaults.NVIDIA_LAYERS))}, halved to "
                  f"{' '.join(map(str, defaults.SMALL_LAYERS))} below {defaults.SMALL_DATA:,} training pairs "
                  "(printed at start)")

# What recommend.py --export says of the exported arrays, for the models whose score has a closed form over them.
EXPORT_FORMULAS = {
    GMF: "logit = (user_embedding[u] * item_embedding[i]) @ output_weight[0] + output_bias[0]",
    NeuMF: "GMF branch: (gmf_user_embedding[u] * gmf_item_embedding[i]) @ output_weight[0, :factors]; the logit "
           "adds the MLP branch (see model.onnx) and output_bias[0]"}


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
            scores = model(users, items, **_grouping(groups))
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
    return callable(getattr(constructor, "load_pretrained", None))


class ImplicitFamily(Family):
    name = "implicit"
    models = {"neumf": NeuMF, "gmf": GMF, "mlp": MLP}
    description = "neumf, gmf or mlp on implicit feedback (HR/NDCG)"

    def add_arguments(self, parser):
        group = parser.add_argument_group("implicit-feedback models (neumf, gmf, mlp)")
        group.add_argument("--negative_sampling", choices=["exact", "uniform"], default="exact",
                           help="'exact' never draws a user's own positives as negatives; 'uniform' draws from all "
                                "items as NVIDIA does (faster, slightly less accurate)")
        group.add_argument("--loss", choices=list(LOSSES), default=None,
                           help="the training loss: 'bce' (NVIDIA's, the paper's) of each score against its label; "
                                "'bpr' pairwise; 'softmax' sampled softmax over each positive and its negatives "
                                "(--temperature); 'ccl' SimpleX's cosine contrastive loss (--margin, "
                                "--negative_weight; needs --similarity cosine). Default: bce for sampled evaluation, "
                                "the full-ranking default under --eval_protocol full (printed at start)")
        group.add_argument("--similarity", choices=["dot", "cosine"], default=None,
                           help="gmf: score a pair by the weighted dot product of its embeddings (NCF's) or by their "
                                "cosine (SimpleX's MF); default cosine for ccl, else dot")
        group.add_argument("--temperature", type=float, default=None,
                           help="softmax: the scores are divided by it; default 1 for dot, for cosine chosen from "
                                "the catalogue's size (lower for more items; printed)")
        group.add_argument("--margin", type=float, default=0.8,
                           help="ccl: negatives count only when their cosine exceeds this")
        group.add_argument("--negative_weight", type=float, default=None,
                           help="ccl: the weight of the mean negative term; default (printed) chosen on validation")
        group.add_argument("--shared_negatives", type=int, default=None, metavar="N",
                           help="draw N negatives per batch, scored by every user of the batch in one product "
                                "(gmf only; -b then counts positives); 0: -n negatives drawn for each positive, "
                                "exactly as NVIDIA's (the default for bce)")
        group.add_argument("--negative_popularity", type=float, default=0.0, metavar="BETA",
                           help="shared negatives drawn in proportion to each item's training count to the power "
                                "BETA (0: uniformly)")
        group.add_argument("--logq", action="store_true",
                           help="softmax over shared negatives: subtract from each negative's scaled score the log "
                                "of its expected draws per batch, log(N q_j), so the sampled softmax estimates the "
                                "full one (the logQ correction); for uniform draws the constant log(N / items)")
        group.add_argument("--pretrain_gmf", help="GMF checkpoint to initialise NeuMF from (with --pretrain_mlp)")
        group.add_argument("--pretrain_mlp", help="MLP checkpoint to initialise NeuMF from (with --pretrain_gmf)")
        group.add_argument("--alpha", type=float, default=0.5,
                           help="weight of the GMF output layer when mixing pre-trained output layers (the paper's "
                                "0.5; bench/alpha_sweep.py scores each alpha before fine-tuning)")
        group.add_argument("--branch_loss", type=float, default=1.0, metavar="WEIGHT",
                           help="NeuMF only: each branch (the GMF and the MLP inside NeuMF) also scores every "
                                "training pair through its own output layer, and those two losses, times WEIGHT, "
                                "are added to NeuMF's, so each branch learns to be a model of its own, as "
                                "pre-training makes it, in one run (docs/history.md); 0 trains NeuMF's joint "
                                "output alone, as the paper and NVIDIA do")
        group.add_argument("--recency", type=float, default=0.0, metavar="WEIGHT",
                           help="weight each user's recent training pairs up: a pair's loss (and its negatives') "
                                "counts 1 + WEIGHT * exp(-r / --recency_window) times, r being how many of the "
                                "user's training pairs are later; the test item is each user's latest, and recent "
                                "tastes predict it best (docs/history.md). Needs the dataset's timestamps "
                                "(convert.py keeps them); 0: off, every pair counts once, as in the paper and "
                                "NVIDIA's tool")
        group.add_argument("--recency_window", type=float, default=10.0, metavar="PAIRS",
                           help="with --recency: how many of a user's latest pairs get most of the extra weight (the "
                                "extra falls by e each PAIRS pairs further back)")

    def flag_checks(self, args):
        return [("--temperature", args.temperature, "positive"), ("--margin", args.margin, "finite"),
                ("--negative_weight", args.negative_weight, "0 or more"),
                ("--shared_negatives", args.shared_negatives, "0 or more"),
                ("--negative_popularity", args.negative_popularity, "0 or more"),
                ("--branch_loss", args.branch_loss, "0 or more"), ("--recency", args.recency, "0 or more"),
                ("--recency_window", args.recency_window, "positive"), ("--alpha", args.alpha, "in [0, 1]")]

    def flag_problem(self, kind, args):
        if bool(args.pretrain_gmf) != bool(args.pretrain_mlp):
            return "--pretrain_gmf and --pretrain_mlp go together"
        pretrainable = [name for name, made_by in self.models.items() if _pretrainable(made_by)]
        if args.pretrain_gmf and kind not in pretrainable:
            return f"--pretrain_gmf/--pretrain_mlp initialise --model {' or '.join(pretrainable)}"
        if args.pretrain_gmf and args.load_checkpoint_path:
            return "--pretrain_gmf/--pretrain_mlp start a fresh model; drop --load_checkpoint_path"
        if kind not in self.models:
            return None
        towers = [name for name, made_by in self.models.items() if _has_towers(made_by)]
        if (args.similarity == "cosine" or args.shared_negatives) and kind not in towers:
            return (f"--similarity cosine and --shared_negatives need a model that scores by a dot product of user and "
                    f"item vectors: --model {' or '.join(towers)}")
        if args.loss == "ccl" and args.similarity == "dot":
            return "--loss ccl is a loss on cosines: use --similarity cosine (its default)"
        if args.layers and args.layers[0] % 2:
            return (f"--layers: the first size is the user and item embeddings concatenated, so it must be even, got "
                    f"{args.layers[0]}")
        return None

    def default_epochs(self, args):
        if args.eval_protocol == "full" and _has_towers(self.models.get(args.model, NeuMF)):
            return defaults.FULL_RANKING["epochs"]
        return super().default_epochs(args)

    def choose(self, kind, args, dataset):
        towers = _has_towers(self.models[kind])
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
            notes["full ranking"] = (f"{kind} scores every user-item pair through its tower, slow on large "
                                     "catalogues", "--model gmf ranks with one product")
        layers = args.layers
        if layers is None and _takes(self.models[kind], "layers"):
            layers = defaults.choose_layers(dataset.num_train)
            notes["MLP layers"] = (" ".join(map(str, layers)), f"chosen for {dataset.num_train:,} training pairs; "
                                   "set with --layers")
        values["layers"] = defaults.NVIDIA_LAYERS if layers is None else layers
        values["dropout"] = defaults.IMPLICIT_DROPOUT if args.dropout is None else args.dropout
        return values, notes, warning

    def describe(self, kind, config):
        if _trains_branches(self.models[kind]) and config.branch_loss:
            return f" (branch losses x {config.branch_loss:g})"
        return ""

    def check(self, kind, dataset, config):
        if config.binary:
            raise TaskError(f"--binary is SimpleCF's 0/1 variant of --model dot, not of --model {kind}")
        problem = evaluation.protocol_problem(dataset, config.eval_protocol, config.topk)
        if problem:
            raise TaskError(problem)

    def prepare(self, model, kind, dataset, config):
        """NeuMF from pre-trained GMF and MLP checkpoints (output layers mixed by --alpha) when they are given."""
        if not config.pretrain_gmf:
            return model
        gmf, mlp = (load_model(path, dataset, expected) for path, expected in
                    ((config.pretrain_gmf, "gmf"), (config.pretrain_mlp, "mlp")))
        if gmf.user_embedding.embedding_dim != config.factors or mlp.layer_sizes != list(config.layers):
            raise CheckpointError("--pretrain_gmf/--pretrain_mlp: their sizes differ from --factors/--layers")
        return model.load_pretrained(gmf, mlp, config.alpha)

    def batches(self, kind, config, dataset, runtime):
        if config.shared_negatives:
            distribution = (dataloading.negative_distribution(dataset.train_items, dataset.num_items,
                                                              config.negative_popularity)
                            if config.negative_popularity else None)
            return lambda epoch: dataloading.SharedNegativeBatches(
                dataset, config.batch_size, config.shared_negatives, train.epoch_seed(config.seed, epoch),
                distribution, runtime.rank, runtime.world_size)
        positives = (dataloading.PositiveSet(dataset.train_users, dataset.train_items, dataset.num_users,
                                             dataset.num_items) if config.negative_sampling == "exact" else None)
        return lambda epoch: dataloading.ImplicitBatches(dataset, config.batch_size, config.negative_samples,
                                                         train.epoch_seed(config.seed, epoch), positives,
                                                         runtime.rank, runtime.world_size)

    def evaluator(self, kind, config, dataset, model, autocast, runtime):
        batch_size = config.valid_batch_size or evaluation.default_batch_samples(runtime.device)
        return evaluation.evaluator(model, dataset, config.eval_protocol, config.topk, batch_size, autocast,
                                    runtime.rank, runtime.world_size, config.compile)

    def selection(self, kind, dataset, config):
        return train.Selection(evaluation.selection_metric(dataset, config.eval_protocol, config.topk))

    def training_loss(self, kind, model, settings):
        """The model's own loss (NVIDIA's BCE, NeuMF's branch losses) for bce with each positive's own negatives;
        else --loss over each positive's negatives, or over the batch's shared negatives."""
        if settings["shared_negatives"]:
            return shared_loss(settings["loss"], _loss_options(settings),
                               correct=settings["logq"])
        if settings["loss"] == "bce":
            return super().training_loss(kind, model, settings)
        return per_sample_loss(settings["loss"], _loss_options(settings))

    def resume_fields(self, kind, config):
        return [("loss", "--loss", "bce", True), ("similarity", "--similarity", "dot", True),
                ("shared_negatives", "--shared_negatives", 0, True), ("temperature", "--temperature", None, True),
                ("negative_popularity", "--negative_popularity", 0.0, True),
                ("negative_samples", "-n", None, True), ("recency", "--recency", 0.0, True),
                ("recency_window", "--recency_window", 10.0, bool(config["recency"])),
                ("branch_loss", "--branch_loss", 0.0, _trains_branches(self.models[kind]))]

    def tasks(self, kind, model):
        return super().tasks(kind, model) | {"fold_in"}

    def prediction(self, kind, model, value):
        return f"score {value:.4f} (probability {1 / (1 + math.exp(-value)):.3f})"

    def export_formula(self, kind):
        return EXPORT_FORMULAS.get(self.models[kind])


FAMILY = ImplicitFamily()
