"""Train and evaluate NCF recommenders (GMF, MLP, NeuMF) with NVIDIA DeepLearningExamples-compatible flags.

    python ncf.py                                         # the built-in demo dataset, on CPU or GPU
    python ncf.py --data data/ml100k                      # batch size and learning rate chosen for the data
    python ncf.py --data data/ml1m -e 20 -b 16384 -l 0.002 --model gmf --checkpoint_dir runs/gmf
    python ncf.py --data data/ml1m --mode test --load_checkpoint_path runs/gmf/best.pt
    torchrun --nproc_per_node=8 ncf.py --data data/ml20m --amp

Reports HR@k and NDCG@k every epoch, writes JSON lines to --log_path, keeps the best model and the last state
(for --resume) in --checkpoint_dir.
"""

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import dataloading
import sparse_adam
from dataloading import DatasetError
from logger import RunLogger
from neumf import build_model

CHECKPOINT_FORMAT = "ncf-checkpoint-v1"


class UsageError(Exception):
    """A problem the user can fix (bad flag, missing or mismatched checkpoint): reported in one line."""


# ------------------------------------------------------------------------------------------------------ flags


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none to show (flags whose default is chosen from the data)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_EPOCHS = 20
DEMO_EPOCHS = 10  # the demo peaks at its 9th epoch (0.6875 HR@10): 10 take 60-136 s on 2 CPU cores, 20 took 3-4 minutes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train and evaluate Neural Collaborative Filtering (GMF, MLP, NeuMF). Flags follow NVIDIA's "
                    "DeepLearningExamples ncf.py.", formatter_class=_HelpFormatter)
    parser.add_argument("--data", help="dataset directory from convert.py (or NVIDIA's convert.py); without it, "
                                       "the built-in synthetic demo dataset is generated in memory")
    parser.add_argument("-e", "--epochs", type=int, default=None,
                        help=f"number of training epochs; default {DEFAULT_EPOCHS} ({DEMO_EPOCHS} for the built-in "
                             f"demo, whose best epoch comes by the 9th)")
    parser.add_argument("-b", "--batch_size", type=int, default=None,
                        help="samples (positives and negatives) per optimizer step; default: chosen from the "
                             "dataset size (printed at start)")
    parser.add_argument("--valid_batch_size", type=int, default=2**20, help="samples per evaluation batch")
    parser.add_argument("-f", "--factors", type=int, default=64, help="GMF embedding size (predictive factors)")
    parser.add_argument("--layers", nargs="+", type=int, default=[256, 256, 128, 64],
                        help="MLP layer sizes; the first is the user and item embeddings concatenated (even)")
    parser.add_argument("-n", "--negative_samples", type=int, default=None,
                        help="negatives drawn per positive, each epoch; default: chosen from the dataset size "
                             "(printed at start): NVIDIA's 4, up to 16 on small datasets (the built-in demo keeps 4)")
    parser.add_argument("-l", "--learning_rate", type=float, default=None,
                        help="Adam learning rate; default: chosen with the batch size (printed at start)")
    parser.add_argument("-k", "--topk", type=int, default=10, help="k of HR@k and NDCG@k")
    parser.add_argument("-s", "--seed", type=int, default=0, help="random seed (negatives, order, initialisation)")
    parser.add_argument("-t", "--threshold", type=float, default=None,
                        help="stop training once HR@k reaches this value (default: run every epoch)")
    parser.add_argument("-b1", "--beta1", type=float, default=None,
                        help="Adam beta1; default: NVIDIA's 0.25 for batches of 2^18 or more, else 0.9 (printed)")
    parser.add_argument("-b2", "--beta2", type=float, default=None,
                        help="Adam beta2; default: NVIDIA's 0.5 for batches of 2^18 or more, else 0.999 (printed)")
    parser.add_argument("--eps", type=float, default=1e-8, help="Adam epsilon")
    parser.add_argument("--weight_decay", type=float, default=0.1,
                        help="decoupled weight decay (AdamW) on all parameters; 0 gives plain Adam as in NVIDIA's "
                             "tool (measured: 0.1 is better on ML-100k and ML-1M, BENCHMARKS.md)")
    parser.add_argument("--lr_schedule", choices=["constant", "cosine"], default="constant",
                        help="'cosine' lowers the learning rate step by step from -l towards 0 along half a cosine "
                             "over the -e epochs (a run resumed with the same -e follows the same curve)")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout after each MLP layer")
    parser.add_argument("--checkpoint_dir", default="checkpoints",
                        help="where best.pt (best model) and last.pt (for --resume) are written; '' for none")
    parser.add_argument("--load_checkpoint_path", help="checkpoint to start training from, or to test in --mode test")
    parser.add_argument("--mode", choices=["train", "test"], default="train",
                        help="'test' evaluates --load_checkpoint_path (default CHECKPOINT_DIR/best.pt)")
    parser.add_argument("--grads_accumulated", type=int, default=1,
                        help="batches whose gradients are summed per optimizer step")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision (bfloat16 where supported, else float16 with loss scaling)")
    parser.add_argument("--log_path", help="JSON-lines log; default CHECKPOINT_DIR/log.json")
    parser.add_argument("--opt_level", choices=["O0", "O1", "O2"], default="O0",
                        help="deprecated apex option: O1/O2 mean --amp")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deprecated torch.distributed.launch; the LOCAL_RANK variable is used")
    parser.add_argument("--model", choices=["neumf", "gmf", "mlp"], default="neumf", help="which model to train")
    parser.add_argument("--pretrain_gmf", help="GMF checkpoint to initialise NeuMF from (with --pretrain_mlp)")
    parser.add_argument("--pretrain_mlp", help="MLP checkpoint to initialise NeuMF from (with --pretrain_gmf)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="weight of the GMF output layer when mixing pre-trained output layers (the paper's "
                             "0.5; 0.8 did better on ML-1M, where GMF is the stronger branch: bench/alpha_sweep.py "
                             "scores each alpha before fine-tuning)")
    parser.add_argument("--branch_loss", type=float, default=1.0, metavar="WEIGHT",
                        help="NeuMF only: each branch (the GMF and the MLP inside NeuMF) also scores every training "
                             "pair through its own output layer, and those two losses, times WEIGHT, are added to "
                             "NeuMF's, so each branch learns to be a model of its own, as pre-training makes it, in "
                             "one run (BENCHMARKS.md); 0 trains NeuMF's joint output alone, as the paper and NVIDIA "
                             "do")
    parser.add_argument("--recency", type=float, default=0.0, metavar="WEIGHT",
                        help="weight each user's recent training pairs up: a pair's loss (and its negatives') counts "
                             "1 + WEIGHT * exp(-r / --recency_window) times, r being how many of the user's training "
                             "pairs are later; the test item is each user's latest, and recent tastes predict it "
                             "best (ML-100k, GMF: HR@10 0.695 -> 0.723 with 8; BENCHMARKS.md). Needs the dataset's "
                             "timestamps (convert.py keeps them); 0: off, every pair counts once, as in the paper and "
                             "NVIDIA's tool")
    parser.add_argument("--recency_window", type=float, default=10.0, metavar="PAIRS",
                        help="with --recency: how many of a user's latest pairs get most of the extra weight (the "
                             "extra falls by e each PAIRS pairs further back)")
    parser.add_argument("--negative_sampling", choices=["exact", "uniform"], default="exact",
                        help="'exact' never draws a user's own positives as negatives; 'uniform' draws from all "
                             "items as NVIDIA does (faster, slightly less accurate)")
    parser.add_argument("--optimizer", choices=["adam", "row_sparse_adam"], default="adam",
                        help="'adam': AdamW over every parameter (fused); 'row_sparse_adam': embedding rows change "
                             "only in steps whose batch looks them up (LazyAdam), which moves far fewer bytes per "
                             "step when the tables are large and the batch small; a different optimizer from 'adam', "
                             "so check its accuracy on your data")
    parser.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
                        help="compile the training forward pass and evaluation's scoring with torch.compile "
                             "(faster steps after a start-up of a minute or so; on CPU it needs a C++ compiler); "
                             "MODE is torch.compile's mode, "
                             f"one of {', '.join(COMPILE_MODES)} ('default' when given without one; "
                             "'reduce-overhead' replays the step as CUDA graphs, which helps small batches on a GPU)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="'auto' uses a GPU when one is available")
    parser.add_argument("--resume", action="store_true",
                        help="continue from CHECKPOINT_DIR/last.pt when it exists (else start from scratch)")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = DEMO_EPOCHS if args.data is None else DEFAULT_EPOCHS
    _validate(parser, args)
    if args.opt_level in ("O1", "O2"):
        args.amp = True
    return args


def _validate(parser, args):
    positive = {"--epochs": args.epochs, "--valid_batch_size": args.valid_batch_size, "--factors": args.factors,
                "--topk": args.topk, "--grads_accumulated": args.grads_accumulated}
    if args.batch_size is not None:
        positive["--batch_size"] = args.batch_size
    for flag, value in positive.items():
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.negative_samples is not None and args.negative_samples < 0:
        parser.error(f"--negative_samples must be 0 or more, got {args.negative_samples}")
    if args.branch_loss < 0:
        parser.error(f"--branch_loss must be 0 or more, got {args.branch_loss}")
    if args.recency < 0:
        parser.error(f"--recency must be 0 or more, got {args.recency}")
    if not args.recency_window > 0:
        parser.error(f"--recency_window must be positive, got {args.recency_window}")
    if args.weight_decay < 0:
        parser.error(f"--weight_decay must be 0 or more, got {args.weight_decay}")
    if args.learning_rate is not None and not args.learning_rate > 0:
        parser.error(f"--learning_rate must be positive, got {args.learning_rate}")
    if any(size < 1 for size in args.layers):
        parser.error(f"--layers sizes must be positive, got {args.layers}")
    if args.layers[0] % 2:
        parser.error(f"--layers: the first size is the user and item embeddings concatenated, so it must be even, "
                     f"got {args.layers[0]}")
    for flag, beta in (("-b1/--beta1", args.beta1), ("-b2/--beta2", args.beta2)):
        if beta is not None and not 0 <= beta < 1:
            parser.error(f"{flag} must be in [0, 1), got {beta}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if bool(args.pretrain_gmf) != bool(args.pretrain_mlp):
        parser.error("--pretrain_gmf and --pretrain_mlp go together")
    if args.pretrain_gmf and args.model != "neumf":
        parser.error("--pretrain_gmf/--pretrain_mlp initialise --model neumf")


DEMO_NEGATIVES = 4  # the demo keeps NVIDIA's default: with the 14 of the rule below it took 7 minutes on 2 cores


def choose_negatives(num_train):
    """Default negatives per positive: about 1.6M divided by the training pairs, between NVIDIA's 4 and 16.

    On a small dataset an epoch is cheap and over quickly, and more negatives per positive measurably help: NeuMF on
    ML-100k (99,057 pairs, so 16) reaches 0.691 HR@10 with 16 against 0.681 with 4 (6 runs each; BENCHMARKS.md), at
    3.4 times the time per epoch. ML-1M (994,169 pairs) and larger sets keep NVIDIA's 4.
    """
    return int(min(16, max(4, round(1.6e6 / max(num_train, 1)))))


def choose_batch_size(num_train, negatives_per_positive):
    """Default batch: a power of two giving about 512 optimizer steps per epoch, between 2^10 and 2^20.

    NVIDIA's fixed 2^20 suits MovieLens-20M but leaves ML-1M with 5 steps per epoch (0.65 HR@10) and ML-100k with
    less than one. Sweeps on ML-100k and ML-1M (bench/grids, BENCHMARKS.md) put the best batches at a few hundred
    to a thousand steps per epoch: ML-100k 2^12 (with its 16 negatives; 2^10 with 4), ML-1M 2^13, ML-20M 2^18.
    """
    samples = num_train * (1 + negatives_per_positive)
    return int(2 ** min(20, max(10, round(math.log2(max(samples / 512, 1))))))


def choose_learning_rate(batch_size):
    """Default Adam learning rate for a batch size: NVIDIA's 0.0045 at 2^20, scaled by the square root of the batch
    ratio (the usual rule for Adam), floored at 0.001."""
    return max(0.001, 0.0045 * math.sqrt(batch_size / 2**20))


LARGE_BATCH = 2**18


def choose_betas(batch_size):
    """Default Adam betas: NVIDIA's (0.25, 0.5), tuned for batch 2^20 on ML-20M, for large batches; Adam's usual
    (0.9, 0.999) below, measured better at the batches that suit smaller datasets (BENCHMARKS.md)."""
    return (0.25, 0.5) if batch_size >= LARGE_BATCH else (0.9, 0.999)


# ------------------------------------------------------------------------------------------------ set-up steps


def setup_devices(choice):
    """World size, rank and device from torchrun's variables (1 and 0 without torchrun); initialise the group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible; use --device cpu")
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return device, rank, world_size


def mixed_precision(enabled, device):
    """One autocast context factory and one GradScaler; both are no-ops when ``enabled`` is false."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=enabled and dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=enabled)

    return autocast, scaler


def load_data(path, seed):
    """The dataset named by --data, or the built-in demo generated in memory."""
    if path:
        return dataloading.load_dataset(path)
    import convert

    data = convert.load_interactions(convert.parse_args(["--dataset", "demo", "--output", "-", "--seed", "0"]),
                                     convert.Progress(quiet=True))
    split = convert.split_interactions(data, 2, 100, 0, convert.Progress(quiet=True))
    return dataloading.dataset_from_split(split, "demo")


def weighted_by_recency(dataset, args):
    """The dataset with each training pair's loss weight set from --recency (unchanged when it is 0)."""
    if not args.recency or args.mode == "test":
        return dataset
    if dataset.train_timestamps is None:
        raise UsageError(f"--recency needs the training pairs' timestamps, and {dataset.path} has none (NVIDIA's "
                         "format and convert.py's random splits keep none); convert timestamped data with convert.py, "
                         "or drop --recency")
    times = dataset.train_timestamps
    if times.min() == times.max():  # e.g. the reconstructed NCF ML-1M training file, whose times are all 0
        raise UsageError(f"--recency: every training pair of {dataset.path} has the same timestamp ({times[0]}), so "
                         "none is more recent than another; drop --recency")
    ranks = dataloading.recency_ranks(dataset.train_users.numpy(), times)
    weights = dataloading.recency_weights(ranks, args.recency, args.recency_window)
    return dataclasses.replace(dataset, train_weights=torch.from_numpy(weights))


def load_checkpoint(path, dataset=None):
    """A checkpoint dict, loaded without executing code; a one-line error for missing or foreign files, and, given
    ``dataset``, for a checkpoint trained on another dataset."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged or foreign file
        raise UsageError(f"{path}: not a readable checkpoint ({str(error).splitlines()[0][:100]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path}: not a checkpoint written by this tool")
    if dataset is not None:
        check_fits(checkpoint, dataset, path)
    return checkpoint


def check_fits(checkpoint, dataset, path):
    if checkpoint["fingerprint"] != dataset.fingerprint:
        args = checkpoint["model_args"]
        raise UsageError(f"{path}: trained on another dataset ({args['num_users']} users, {args['num_items']} items; "
                         f"this one has {dataset.num_users} and {dataset.num_items}); pass the matching --data")


def load_pretrained_pair(gmf_path, mlp_path, dataset):
    """(GMF, MLP) models from the checkpoints given to --pretrain_gmf/--pretrain_mlp, checked against the data."""
    parts = []
    for path, kind in ((gmf_path, "gmf"), (mlp_path, "mlp")):
        checkpoint = load_checkpoint(path, dataset)
        if checkpoint["model"] != kind:
            raise UsageError(f"{path}: holds a {checkpoint['model']} model, expected {kind}")
        parts.append(model_from_checkpoint(checkpoint))
    return tuple(parts)


def model_from_checkpoint(checkpoint):
    model = build_model(checkpoint["model"], **checkpoint["model_args"])
    model.load_state_dict(checkpoint["state_dict"])
    return model


def build(args, dataset, device):
    """The model (fresh, from --load_checkpoint_path, or NeuMF from pre-trained GMF and MLP) and its optimizer."""
    model_args = dict(num_users=dataset.num_users, num_items=dataset.num_items, factors=args.factors,
                      layers=list(args.layers), dropout=args.dropout)
    if args.model == "gmf":
        model_args.pop("layers"), model_args.pop("dropout")
    elif args.model == "mlp":
        model_args.pop("factors")
    model = build_model(args.model, **model_args)
    if args.load_checkpoint_path:
        checkpoint = load_checkpoint(args.load_checkpoint_path, dataset)
        if checkpoint["model"] != args.model or checkpoint["model_args"] != model_args:
            raise UsageError(f"{args.load_checkpoint_path}: holds a {checkpoint['model']} with "
                             f"{checkpoint['model_args']}, which differs from the flags given")
        model.load_state_dict(checkpoint["state_dict"])
    if args.pretrain_gmf:
        gmf, mlp = load_pretrained_pair(args.pretrain_gmf, args.pretrain_mlp, dataset)
        if gmf.user_embedding.embedding_dim != args.factors or list(_mlp_layers(mlp)) != list(args.layers):
            raise UsageError("--pretrain_gmf/--pretrain_mlp: their sizes differ from --factors/--layers")
        model.load_pretrained(gmf, mlp, args.alpha)
    if args.model == "neumf":
        model.train_branch_outputs(args.branch_loss > 0)
    model.to(device)
    settings = dict(lr=args.learning_rate, betas=(args.beta1, args.beta2), eps=args.eps,
                    weight_decay=args.weight_decay)
    if args.optimizer == "row_sparse_adam":
        return model, model_args, sparse_adam.build_optimizer(model, **settings)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return model, model_args, torch.optim.AdamW(trainable, **settings, fused=True)


def for_training(model, compile_mode):
    """The module the training loop calls: ``model`` itself, or compiled in torch.compile's ``compile_mode``."""
    return torch.compile(model, mode=compile_mode) if compile_mode else model


def for_evaluation(model, compile_mode):
    """The candidate scorer evaluation calls: None (``model.score`` as it is), or it compiled in ``compile_mode``.
    ``model`` is the plain module (not DDP's wrapper): evaluation needs no gradient synchronisation."""
    return torch.compile(model.score, mode=compile_mode) if compile_mode else None


def _mlp_layers(mlp):
    sizes = [mlp.user_embedding.embedding_dim * 2]
    return sizes + [layer.out_features for layer in mlp.tower if isinstance(layer, torch.nn.Linear)]


# ---------------------------------------------------------------------------------------------- training steps


def train_epoch(model, optimizer, scaler, autocast, dataset, args, epoch, positives, rank, world_size, show_bar):
    """One pass over the training positives; returns (mean loss over all ranks as a 0-d tensor, samples of all
    ranks)."""
    model.train()
    device = dataset.train_users.device
    # Seeding by (seed, epoch) makes each epoch's order, negatives and dropout independent of what ran before,
    # so a resumed run repeats an uninterrupted one exactly. The order is the same on every rank (each takes its
    # slice of every batch); negatives and dropout differ by rank.
    epoch_seed = args.seed * 1_000_003 + epoch * 7919
    order_generator = torch.Generator(device).manual_seed(epoch_seed)
    negative_generator = torch.Generator(device).manual_seed(epoch_seed + 104_729 * (rank + 1))
    torch.manual_seed(epoch_seed + 104_729 * (rank + 1))
    positives_per_batch = max(1, args.batch_size // (1 + args.negative_samples))
    num_batches = math.ceil(dataset.num_train / positives_per_batch)
    batches = dataloading.epoch_batches(dataset, args.batch_size, args.negative_samples, order_generator, positives,
                                        rank, world_size, negative_generator=negative_generator)
    loss_total, samples = torch.zeros((), device=device), 0
    optimizer.zero_grad(set_to_none=True)
    branch_weight = args.branch_loss if args.model == "neumf" else 0.0
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    bar = tqdm(batches, total=num_batches, desc=f"epoch {epoch}", leave=False, disable=not show_bar)
    for step, (users, items, labels, weights) in enumerate(bar):
        if args.lr_schedule == "cosine":
            progress = (epoch * num_batches + step) / (args.epochs * num_batches)  # in [0, 1)
            for group in optimizer.param_groups:
                group["lr"] = args.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
        # Every rank divides its loss sum by the global batch's sample count times the ranks that DDP averages
        # over, so the applied gradient is that of the global batch's mean loss, even when a rank's slice is
        # uneven or empty. The last group may hold fewer batches than --grads_accumulated; it is still applied,
        # scaled by its size.
        global_samples = min(positives_per_batch, dataset.num_train - step * positives_per_batch) \
            * (1 + args.negative_samples)
        group = min(args.grads_accumulated, num_batches - (step // args.grads_accumulated) * args.grads_accumulated)
        applies = (step + 1) % args.grads_accumulated == 0 or step + 1 == num_batches
        sync = contextlib.nullcontext() if applies or world_size == 1 else model.no_sync()
        with sync, autocast():  # under no_sync, this rank accumulates; DDP averages once, at the applying step
            logits, *branch_logits = model(users, items, branches=True) if branch_weight else (model(users, items),)
        loss_sum = bce(logits.float(), labels, weights, reduction="sum")  # the model's own loss, the one reported
        objective = (loss_sum + branch_weight * sum(bce(branch.float(), labels, weights, reduction="sum")
                                                    for branch in branch_logits)) if branch_logits else loss_sum
        scaler.scale(objective * (world_size / (global_samples * group))).backward()
        if applies:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        loss_total += loss_sum.detach()
        samples += labels.numel()
    totals = torch.stack([loss_total.double(), torch.tensor(float(samples), dtype=torch.float64, device=device)])
    if world_size > 1:
        dist.all_reduce(totals)
    return totals[0] / totals[1].clamp(min=1), int(totals[1])


def run_evaluation(model, dataset, args, autocast, mask, rank, world_size, score=None):
    """HR@k, NDCG@k and validation loss over every test user (all ranks combined); returns a dict of floats.
    ``score``: the compiled ``model.score`` under --compile."""
    model.eval()
    users_per_batch = max(1, args.valid_batch_size // (1 + dataset.test_negatives.shape[1]))
    totals = dataloading.evaluate(model, dataset, args.topk, users_per_batch, autocast, rank, world_size, mask,
                                  score)
    if world_size > 1:
        dist.all_reduce(totals)
    hits, ndcg, loss, candidates, users = totals.tolist()
    return {f"hr@{args.topk}": hits / users, f"ndcg@{args.topk}": ndcg / users, "validation_loss": loss / candidates,
            "eval_samples": candidates}


def save_checkpoint(path, model, model_args, optimizer, scaler, epoch, metrics, best, args, dataset):
    """Write atomically: a temporary file beside the target, then a rename, so a crash never leaves half a file."""
    model = getattr(model, "module", model)
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "model": args.model, "model_args": model_args,
        "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "epoch": epoch, "metrics": metrics, "best": best, "config": json.loads(json.dumps(vars(args))),
        "fingerprint": dataset.fingerprint,
    }
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)


def existing_best(path, dataset, model_kind):
    """HR of a best.pt already in --checkpoint_dir for this dataset and model; refuse to mix with another's."""
    if not path.is_file():
        return -1.0
    checkpoint = load_checkpoint(path)
    if checkpoint["fingerprint"] != dataset.fingerprint or checkpoint["model"] != model_kind:
        raise UsageError(f"{path}: holds a {checkpoint['model']} model for another dataset or model; pass another "
                         "--checkpoint_dir (or remove it) so it is not overwritten")
    return float(checkpoint["best"]["hr"])


# ------------------------------------------------------------------------------------------------------- main


def check_ranks_agree(args, dataset, device, world_size, start_epoch):
    """Stop every rank with one clear error when ranks were given different data or flags, or would resume from
    different epochs (a last.pt that only some nodes can see), instead of training different models."""
    if world_size == 1:
        return
    settings = {key: value for key, value in vars(args).items() if key != "local_rank"}
    text = json.dumps({"dataset": dataset.fingerprint, "settings": settings, "start_epoch": start_epoch},
                      sort_keys=True, default=str)
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")
    values = torch.tensor([digest, -digest], dtype=torch.int64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)  # max of digest and of -digest: equal digests iff max == -max
    if int(values[0]) != -int(values[1]):
        raise UsageError("the ranks disagree on the dataset, the flags or the epoch to resume from; give every rank "
                         "the same --data (same contents), the same command line and a --checkpoint_dir they all "
                         "see (a shared file system)")


def describe(args, dataset, device, world_size, chosen):
    lines = [f"data: {dataset.path} ({dataset.num_users:,} users, {dataset.num_items:,} items, "
             f"{dataset.num_train:,} training pairs, {dataset.test_negatives.shape[1]} test negatives per user)",
             f"model: {args.model}" + (f" (branch losses x {args.branch_loss:g})" if args.model == "neumf"
                                       and args.branch_loss else "")
             + f", optimizer {args.optimizer}, weight decay {args.weight_decay:g}"
             + (", cosine learning-rate decay" if args.lr_schedule == "cosine" else "") + f", device: {device}"
             + (f" x {world_size} ranks" if world_size > 1 else "")
             + (", mixed precision" if args.amp else "")]
    if dataset.train_weights is not None:
        weights = dataset.train_weights
        lines.append(f"recency: a user's latest pairs count {1 + args.recency:g} times, those "
                     f"{args.recency_window:g} pairs earlier {1 + args.recency * math.exp(-1):.3g} times; "
                     f"{float((weights > 2).float().mean()):.0%} of the pairs count more than twice (mean weight "
                     f"{float(weights.mean()):.3g})")
    for flag, (value, how) in chosen.items():
        lines.append(f"{flag}: {value if isinstance(value, str) else format(value, 'g')} ({how})")
    return "\n".join(lines)


def resolve_sizes(args, dataset):
    """Fill in -n, -b and -l when not given; clamp a batch larger than the data. Returns notes on what was
    chosen."""
    chosen = {}
    if args.negative_samples is None:
        if args.data is None:  # the built-in demo: a quick first run
            args.negative_samples, how = DEMO_NEGATIVES, "NVIDIA's, kept for the built-in demo so that it stays " \
                                                         "quick"
        else:
            args.negative_samples, how = choose_negatives(dataset.num_train), \
                f"chosen for {dataset.num_train:,} training pairs"
        chosen["negatives per positive"] = (args.negative_samples, f"{how}; set with -n")
    samples = dataset.num_train * (1 + args.negative_samples)
    if args.batch_size is None:
        args.batch_size = choose_batch_size(dataset.num_train, args.negative_samples)
        chosen["batch size"] = (args.batch_size, f"chosen for {samples:,} samples per epoch; set with -b")
    elif args.batch_size > samples:
        print(f"warning: --batch_size {args.batch_size:,} is larger than an epoch ({samples:,} samples); using "
              f"{samples:,}", file=sys.stderr)
        args.batch_size = samples
        chosen["batch size"] = (args.batch_size, "clamped to one epoch")
    else:
        chosen["batch size"] = (args.batch_size, "given")
    if args.learning_rate is None:
        args.learning_rate = choose_learning_rate(args.batch_size)
        chosen["learning rate"] = (args.learning_rate, "chosen for the batch size; set with -l")
    else:
        chosen["learning rate"] = (args.learning_rate, "given")
    default_betas = choose_betas(args.batch_size)
    if args.beta1 is None or args.beta2 is None:
        args.beta1 = default_betas[0] if args.beta1 is None else args.beta1
        args.beta2 = default_betas[1] if args.beta2 is None else args.beta2
        chosen["Adam betas"] = (f"{args.beta1:g}, {args.beta2:g}", "chosen for the batch size; set with -b1/-b2")
    return chosen


def test_mode(args, dataset, device, autocast, rank, world_size, log):
    path = args.load_checkpoint_path or Path(args.checkpoint_dir) / "best.pt"
    model = model_from_checkpoint(load_checkpoint(path, dataset)).to(device)
    started = time.perf_counter()
    metrics = run_evaluation(model, dataset, args, autocast, None, rank, world_size)
    seconds = time.perf_counter() - started
    metrics.update(eval_throughput=metrics.pop("eval_samples") / seconds, validation_epoch_time=seconds)
    log.write("summary", metrics)
    return metrics


def main(argv=None):
    args = parse_args(argv)
    try:
        code = _main(args)
        if dist.is_initialized():
            # Every rank reaches the teardown together: a rank that tore down Gloo while another was still in its
            # last collective made that one abort at exit ("terminate called without an active exception").
            dist.barrier()
        return code
    except (UsageError, DatasetError) as error:
        print(f"ncf.py: error: {error}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _main(args):
    device, rank, world_size = setup_devices(args.device)
    is_main = rank == 0
    dataset = weighted_by_recency(load_data(args.data, args.seed), args).to(device)
    checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    log_path = args.log_path or (checkpoint_dir / "log.json" if checkpoint_dir else None)
    log = RunLogger(log_path, enabled=is_main)
    autocast, scaler = mixed_precision(args.amp, device)
    if scaler.is_enabled() and args.optimizer == "row_sparse_adam":
        raise UsageError("--optimizer row_sparse_adam with --amp needs bfloat16, which this GPU lacks (float16 needs "
                         "loss scaling); drop --amp or use --optimizer adam")
    say = print if is_main else (lambda *_, **__: None)

    if args.mode == "test":
        metrics = test_mode(args, dataset, device, autocast, rank, world_size, log)
        say(f"HR@{args.topk} {metrics[f'hr@{args.topk}']:.4f}  NDCG@{args.topk} {metrics[f'ndcg@{args.topk}']:.4f}")
        return 0

    torch.manual_seed(args.seed)
    chosen = resolve_sizes(args, dataset)
    say(describe(args, dataset, device, world_size, chosen))
    model, model_args, optimizer = build(args, dataset, device)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    start_epoch, best = 0, {"hr": -1.0, "ndcg": 0.0, "epoch": -1, "seconds": 0.0}
    if checkpoint_dir and is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    best_on_disk = existing_best(checkpoint_dir / "best.pt", dataset, args.model) if checkpoint_dir else -1.0
    last_path = checkpoint_dir / "last.pt" if checkpoint_dir else None
    if args.resume and last_path and last_path.is_file():
        state = load_checkpoint(last_path, dataset)
        if state["model"] != args.model or state["model_args"] != model_args:
            raise UsageError(f"{last_path}: holds a {state['model']} with {state['model_args']}, which differs from "
                             "the flags given; resume with the original flags")
        saved_optimizer = state["config"].get("optimizer", "adam")
        if saved_optimizer != args.optimizer:
            raise UsageError(f"{last_path}: was trained with --optimizer {saved_optimizer}; resume with the same")
        saved_negatives = state["config"].get("negative_samples")
        if saved_negatives is not None and saved_negatives != args.negative_samples:
            raise UsageError(f"{last_path}: was trained with -n {saved_negatives}; resume with the same")
        for flag in ("recency", "recency_window"):
            saved = state["config"].get(flag, 0.0 if flag == "recency" else 10.0)  # earlier versions had neither
            if saved != getattr(args, flag) and (args.recency or flag == "recency"):
                raise UsageError(f"{last_path}: was trained with --{flag} {saved:g}; resume with the same")
        saved_branch_loss = state["config"].get("branch_loss", 0.0)  # earlier versions trained NeuMF without
        if args.model == "neumf" and saved_branch_loss != args.branch_loss:
            raise UsageError(f"{last_path}: was trained with --branch_loss {saved_branch_loss:g}; resume with the "
                             "same")
        getattr(model, "module", model).load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        say(f"resuming from {last_path} after epoch {state['epoch']}")
    elif args.resume:
        say("no checkpoint to resume from; starting from scratch")
    check_ranks_agree(args, dataset, device, world_size, start_epoch)
    # Checkpoints and evaluation use the plain module (under --compile, evaluation its compiled score method).
    train_model = for_training(model, args.compile)
    score = for_evaluation(getattr(model, "module", model), args.compile)

    log.write("config", {key: value for key, value in vars(args).items()} | {
        "num_users": dataset.num_users, "num_items": dataset.num_items, "num_train": dataset.num_train,
        "world_size": world_size, "device": str(device)})
    positives = (dataloading.PositiveSet(dataset.train_users, dataset.train_items, dataset.num_users,
                                         dataset.num_items) if args.negative_sampling == "exact" else None)
    mask = dataloading.candidate_mask(dataset.test_items, dataset.test_negatives)
    show_bar = is_main and sys.stderr.isatty()
    hr_key, ndcg_key = f"hr@{args.topk}", f"ndcg@{args.topk}"
    time_to_target = None
    elapsed = best.get("elapsed", 0.0)
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        loss, samples = train_epoch(train_model, optimizer, scaler, autocast, dataset, args, epoch, positives, rank,
                                    world_size, show_bar)
        train_loss = float(loss)  # the one host sync of the epoch
        train_seconds = time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise UsageError(f"training loss became {train_loss} in epoch {epoch}; lower --learning_rate "
                             f"(now {args.learning_rate:g}); the best checkpoint so far is kept")
        eval_started = time.perf_counter()
        metrics = run_evaluation(getattr(model, "module", model), dataset, args, autocast, mask, rank, world_size,
                                 score)
        eval_seconds = time.perf_counter() - eval_started
        elapsed += time.perf_counter() - started
        record = {"epoch": epoch, "train_loss": train_loss, "validation_loss": metrics["validation_loss"],
                  hr_key: metrics[hr_key], ndcg_key: metrics[ndcg_key],
                  "learning_rate": optimizer.param_groups[0]["lr"],  # at the epoch's last step
                  "train_throughput": samples * world_size / train_seconds, "train_epoch_time": train_seconds,
                  "eval_throughput": metrics["eval_samples"] / eval_seconds, "validation_epoch_time": eval_seconds}
        log.write("epoch", record)
        say(f"epoch {epoch:3d}  loss {train_loss:.4f}  val loss {metrics['validation_loss']:.4f}  "
            f"HR@{args.topk} {metrics[hr_key]:.4f}  NDCG@{args.topk} {metrics[ndcg_key]:.4f}  "
            f"{record['train_throughput'] / 1e6:.2f}M samples/s  {train_seconds + eval_seconds:.1f} s")
        if metrics[hr_key] > best["hr"]:
            best = {"hr": metrics[hr_key], "ndcg": metrics[ndcg_key], "epoch": epoch, "seconds": elapsed}
            if checkpoint_dir and is_main and best["hr"] > best_on_disk:
                save_checkpoint(checkpoint_dir / "best.pt", model, model_args, optimizer, scaler, epoch, record,
                                best, args, dataset)
                best_on_disk = best["hr"]
        best["elapsed"] = elapsed
        if checkpoint_dir and is_main:
            save_checkpoint(last_path, model, model_args, optimizer, scaler, epoch, record, best, args, dataset)
        if args.threshold is not None and metrics[hr_key] >= args.threshold:
            time_to_target = elapsed
            say(f"reached the target HR@{args.topk} {args.threshold} in epoch {epoch}; stopping")
            break

    summary = {"best_accuracy": best["hr"], "best_ndcg": best["ndcg"], "best_epoch": best["epoch"],
               "time_to_best_model": best["seconds"], "time_to_target": time_to_target, "total_time": elapsed}
    log.write("summary", summary)
    say(f"best HR@{args.topk} {best['hr']:.4f}  NDCG@{args.topk} {best['ndcg']:.4f}  at epoch {best['epoch']}"
        f"  ({best['seconds']:.1f} s of training and evaluation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
