"""How close recommend.py's fold-in comes to training: training users treated as new, from their own training items.

    python -m bench.fold_in_bench --checkpoint runs/gmf-ml100k/best.pt --data data/ml100k
    python -m bench.fold_in_bench --checkpoint runs/neumf-ml100k/best.pt --data data/ml100k --steps 50 --append

For ``--users`` training users drawn at random (seeded), the trained user's top-k (what ``recommend.py --user``
lists) is compared with the top-k of a new user folded in from that user's training items (``recommend.py
--history``), both leaving out every item the user interacted with. Reports the mean overlap (items shared out of
k), with the overlap of the most popular unseen items as a reference, and the time per fold-in (fitting and
ranking). ``--append`` adds the table, with the command, device and date, to the ``--append`` file.
"""

import contextlib
import statistics
import sys
import time

import torch

from bench.common import ERRORS, describe_device, parser_for, report
from dataloading import load_dataset
from ncflib import families, serving
from ncflib.checkpoint import load_checkpoint, model_from_checkpoint


def parse_args(argv=None):
    parser = parser_for(__doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint from ncf.py")
    parser.add_argument("--data", required=True, help="the dataset it was trained on")
    parser.add_argument("--users", type=int, default=100, help="how many training users to fold in")
    parser.add_argument("-k", "--topk", type=int, default=10, help="length of the lists compared")
    parser.add_argument("--steps", type=int, default=serving.FOLD_IN_STEPS, help="fold-in steps, as recommend.py")
    parser.add_argument("--lr", type=float, default=serving.FOLD_IN_LEARNING_RATE, help="fold-in learning rate")
    parser.add_argument("--negatives", type=int,
                        help="negatives per history item per step; default: the model's training -n, as recommend.py")
    parser.add_argument("--l2", type=float, default=serving.FOLD_IN_L2, help="fold-in L2 pull to the mean user")
    parser.add_argument("--seed", type=int, default=0, help="which users, and the fold-in's seed")
    parser.add_argument("--append", metavar="FILE.md",
                        help="append the table (command, device, date) to this Markdown file")
    return parser.parse_args(argv)


def overlaps(model, dataset, users, topk, steps, lr, negatives, seed, l2, loss_function):
    """(overlaps with fold-in, overlaps of the popular unseen items, seconds per fold-in), per user."""
    seen = serving.known_interactions(dataset, torch.device("cpu"))
    popularity = torch.bincount(dataset.train_items, minlength=dataset.num_items).float()
    trained = {}
    for batch, _, items in serving.top_items(model, users, dataset.num_items, topk, seen, contextlib.nullcontext,
                                               torch.device("cpu")):
        trained.update(zip(batch.tolist(), items.tolist()))
    folded, popular, seconds = [], [], []
    for user in users.tolist():
        history = dataset.train_items[dataset.train_users == user]
        known = seen[1][seen[0][user]:seen[0][user + 1]]
        started = time.perf_counter()
        scores = serving.fold_in(model, history, dataset.num_items, steps, lr, negatives, seed, l2, loss_function)
        scores[known] = -float("inf")
        new = torch.topk(scores, topk).indices.tolist()
        seconds.append(time.perf_counter() - started)
        reference = popularity.clone()
        reference[known] = -float("inf")
        folded.append(len(set(new) & set(trained[user])))
        popular.append(len(set(torch.topk(reference, topk).indices.tolist()) & set(trained[user])))
    return folded, popular, seconds


def main(argv=None):
    args = parse_args(argv)
    try:
        dataset = load_dataset(args.data)
        checkpoint = load_checkpoint(args.checkpoint, dataset)
        model = model_from_checkpoint(checkpoint, args.checkpoint).eval()
    except ERRORS as error:
        print(f"fold_in_bench.py: error: {error}", file=sys.stderr)
        return 1
    generator = torch.Generator().manual_seed(args.seed)
    users = torch.randperm(dataset.num_users, generator=generator)[:args.users].sort().values
    config = checkpoint.get("config") or {}
    negatives = args.negatives or config.get("negative_samples") or serving.FOLD_IN_NEGATIVES
    loss_function = families.family_of(checkpoint["model"]).fold_in_loss(model, config)
    folded, popular, seconds = overlaps(model, dataset, users, args.topk, args.steps, args.lr, negatives, args.seed,
                                        args.l2, loss_function)
    sem = statistics.stdev(folded) / len(folded) ** 0.5 if len(folded) > 1 else 0.0
    header = (f"| checkpoint | users | fold-in (steps, lr, negatives, L2) | top-{args.topk} shared with training "
              "(mean +- s.e.) | popular unseen items shared | ms per user (median) |\n|---|---|---|---|---|---|")
    row = (f"| {args.checkpoint} | {len(folded)} | {args.steps}, {args.lr:g}, {negatives}, {args.l2:g} | "
           f"{statistics.mean(folded):.2f} +- {sem:.2f} | {statistics.mean(popular):.2f} | "
           f"{1000 * statistics.median(seconds):.0f} |")
    report("fold_in_bench.py", "Fold-in against training", argv, describe_device(torch.device("cpu")), [header, row],
           args.append, "fold-in against training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
