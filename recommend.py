"""Put a trained checkpoint to use: top-k items in the dataset's own ids, similar items, new users, exports.

    python recommend.py --checkpoint runs/ml100k/best.pt --user 1                 # user 1's top 10, with titles
    python recommend.py --checkpoint runs/ml100k/best.pt --users all --output recs.parquet   # everyone, one file
    python recommend.py --checkpoint runs/ml100k/best.pt --similar_to "Star Wars (1977)"
    python recommend.py --checkpoint runs/ml100k/best.pt --history 50 181 Fargo  # someone not in training
    python recommend.py --checkpoint runs/ml100k/best.pt --export exports/ml100k  # embeddings, id maps, ONNX
    python recommend.py --checkpoint runs/dotbias/best.pt --biases                # a rating model's item biases

The dataset is the one the checkpoint was trained on (``--data`` points elsewhere; a checkpoint of another dataset
is refused by its fingerprint). Users and items are named by their original ids, as in the source file, and items
also by title (or part of one) where the dataset has titles. What a user already interacted with (training,
validation and test items) is never recommended to them unless ``--include_seen``. The command line only: the
tasks are ``ncflib.serving``'s records, one per flag.
"""

import argparse
import sys
from pathlib import Path

import torch

import dataloading
from ncflib import families, files
from ncflib import training as train
from ncflib.checkpoint import check_dataset, load_checkpoint, model_from_checkpoint
from ncflib.errors import UsageError, warnings_after
from ncflib.flags import Flags
from ncflib.serving import (
    FOLD_IN_L2,
    FOLD_IN_LEARNING_RATE,
    FOLD_IN_STEPS,
    OUTPUT_FORMATS,
    Served,
    asked_task,
    catalogues,
    check_writable,
    task_problem,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="recommend.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Top-k recommendations, similar items, fold-in for new users and exports of an ncf.py model.")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by ncf.py (best.pt or last.pt)")
    parser.add_argument("--data", help="the dataset directory it was trained on; default: the one its training "
                                       "run named (the built-in demo when it had none)")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--user", nargs="+", metavar="ID", help="top-k items for these users (original ids)")
    task.add_argument("--users", metavar="all|FILE",
                      help="top-k items for every user ('all') or for the ids in FILE (one per line; a 'user_id' "
                           "header is skipped), scored in chunks with a progress bar; write them with --output")
    task.add_argument("--similar_to", nargs="+", metavar="ITEM",
                      help="the items nearest to each ITEM (an original id, or a title or part of one) by cosine "
                           "similarity of the model's item vectors, or, for RP3beta and GF-CF, by the scores of a "
                           "user who has ITEM alone (their item-item weights)")
    task.add_argument("--history", nargs="+", metavar="ITEM",
                      help="top-k items for someone not in training who interacted with these items (ids or "
                           "titles): a user vector fitted to them with every other weight frozen (fold-in)")
    task.add_argument("--history_file", metavar="FILE", help="as --history, the items read from FILE, one per line")
    task.add_argument("--predict", nargs=2, metavar=("USER", "ITEM"),
                      help="the model's prediction for one user and item (an id, or a title or part of one): a "
                           "rating for the rating models, a score and its probability for the implicit ones")
    task.add_argument("--biases", action="store_true",
                      help="rating models with biases (biasmf, dotbias): the -k items with the lowest and the highest "
                           "learned bias, which the model rates down or up whatever the user's taste")
    task.add_argument("--plot_items", metavar="FILE.png",
                      help="draw the items' vectors on their first two principal components, the 50 most-rated "
                           "labelled by title (needs matplotlib)")
    task.add_argument("--words", nargs="+", metavar="ITEM",
                      help="review-text models (textitem, textmf): the -k vocabulary words nearest (cosine) to "
                           "each ITEM's text vector, with their counts in the training reviews")
    task.add_argument("--export", metavar="DIR",
                      help="write the embeddings (.npy), id maps (users.csv, items.csv) and the scoring model "
                           "(model.onnx: user and item index tensors in, logits out) to the new folder DIR")
    flags = Flags(parser)
    flags.add(parser, "-k", "--topk", type=int, default=10, rule="at least 1",
              help="how many items to list per user or item")
    parser.add_argument("--include_seen", action="store_true",
                        help="keep the items a user already interacted with among the candidates")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the lists to FILE: .parquet, .csv or .jsonl (columns user_id, rank, "
                             "item_id, score, and title when the dataset has titles; for --similar_to: query_id, "
                             "rank, item_id, similarity), written whole or not at all; an existing FILE is "
                             "refused unless --force")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --output or --plot_items file")
    flags.add(parser, "--fold_in_steps", type=int, default=FOLD_IN_STEPS, rule="at least 1",
              help="Adam steps fitting a new user's vector for --history")
    flags.add(parser, "--fold_in_lr", type=float, default=FOLD_IN_LEARNING_RATE, rule="positive",
              help="learning rate of those steps")
    flags.add(parser, "--fold_in_negatives", type=int, rule="at least 1",
              help="negatives drawn per history item at each fold-in step; default: as many as the model trained "
                   "with (its -n)")
    flags.add(parser, "--fold_in_l2", type=float, default=FOLD_IN_L2, rule="0 or more",
              help="weight of the fold-in's L2 pull of the new user's rows toward the mean user's (against the "
                   "summed loss: the more history, the less it pulls)")
    parser.add_argument("-s", "--seed", type=int, default=0, help="seed of the fold-in's negatives")
    parser.add_argument("--no_onnx", action="store_true", help="--export without model.onnx (no onnx packages)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to score; 'auto': a GPU when there is one")
    parser.add_argument("--amp", action="store_true",
                        help="score in bfloat16 (float16 on GPUs without it): faster on a GPU or a CPU with AVX-512 "
                             "BF16 (docs/speed.md), and the model's deeper layers lose precision (GMF is unaffected)")
    args = parser.parse_args(argv)
    problem = flags.problem(args)
    if problem:
        parser.error(problem)
    if args.output and (args.export or Path(args.output).suffix.lower() not in OUTPUT_FORMATS):
        parser.error("--output takes a .parquet, .csv or .jsonl file, with --user, --users, --similar_to or "
                     "--history" if not args.export else "--output does not go with --export, which writes a folder")
    if args.users and not args.output:
        parser.error("--users writes its lists to a file: add --output recs.parquet (or .csv, .jsonl)")
    return args


def load(args):
    """The loaded checkpoint as the tasks use it (a ``serving.Served``: the model in eval mode on the device)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no GPU is visible here; pass --device cpu")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(args.checkpoint)
    data = args.data if args.data is not None else (checkpoint.get("config") or {}).get("data")
    if data is not None and not Path(data).is_dir():
        how = "" if args.data is not None else " (the folder its training run named)"
        raise UsageError(f"{data}: no such dataset folder{how}; pass the dataset with --data")
    dataset = dataloading.load_dataset_or_demo(data)
    check_dataset(checkpoint, dataset, args.checkpoint)  # refuses another dataset's checkpoint
    model = model_from_checkpoint(checkpoint, args.checkpoint).to(device).eval()
    autocast = train.mixed_precision(args.amp, device)[0]
    return Served(model, checkpoint["model"], families.family_of(checkpoint["model"]), checkpoint, dataset, device,
                  autocast, *catalogues(dataset))


@warnings_after
def main(argv=None):
    args = parse_args(argv)
    try:
        if args.output:
            check_writable(args.output, args.force)
        if args.plot_items:
            check_writable(args.plot_items, args.force, "--plot_items")
        if args.export:
            files.remove_stale_temporaries(Path(args.export).parent, Path(args.export).name)
        served = load(args)
        if args.topk > served.dataset.num_items - (0 if args.similar_to is None else 1):
            raise UsageError(f"-k/--topk {args.topk} is larger than the catalogue ({served.dataset.num_items:,} "
                             "items); pass a smaller -k")
        task = asked_task(args)
        problem = task_problem(task, served)
        if problem:
            raise UsageError(problem)
        task.run(args, served)
    except UsageError as error:
        print(f"recommend.py: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `recommend.py ... | head`: the reader has all it wanted
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
