"""EASE (Steck, WWW 2019): the closed-form item-item model, as a model family (``--model ease``).

With X the users x items matrix of training pairs and G = X^T X, EASE's item-item weights are
B = I - P / diag(P) with P = (G + l2 I)^-1: column j of B is -P[:, j] / P[j, j], its diagonal zero. A user's scores
are their row of X times B, so a new user needs no fold-in: their items' rows of B, summed. There is nothing to
train by gradient: ``fit`` solves for each L2 weight of ``--ease_l2`` (a Cholesky factor and inverse of G + l2 I),
evaluates it as an epoch, and keeps the best on the validation set when the dataset has one. It is a model solved in
closed form (``protocols.SolvedInClosedForm``): the one epoch loop calls ``solve`` with one L2 weight an epoch.

    model = EASE(num_users, num_items, num_train)
    model.solve(users, items, 500.0)              # the training pairs, one L2 weight
    scores = model.score_all(torch.tensor([0, 1]))  # [2, num_items]
"""

import dataclasses
import math
import os
import time

import torch
from torch import nn

from ncflib.errors import TaskError
from ncflib.families import Family
from ncflib.protocols import Traits

L2_GRID = (10.0, 50.0, 200.0, 500.0, 1000.0, 3000.0)  # Steck used 500 on ML-20M; the best moves with the data
# Bytes per item x item entry held at once while solving: G (float32: its entries are co-occurrence counts, exact
# below 2^24 users), one float64 matrix that holds G + l2 I, then its Cholesky factor, then the inverse, then B (each
# step in place), and the model's B (float32).
BYTES_PER_ENTRY = 4 + 8 + 4
EXACT_FLOAT32 = 2**24  # counts up to this are exact in float32
HEADROOM = 0.9  # the share of the available memory the solve's matrices may take


class PairsByUser(nn.Module):
    """The training pairs of a model solved in closed form, by user (``user_offsets`` [U + 1], ``user_items`` [N]):
    a user's row of X, from which EASE, RP3beta and GF-CF score them."""

    def __init__(self, num_users, num_items, num_train):
        super().__init__()
        self.num_items = num_items
        self.register_buffer("user_offsets", torch.zeros(num_users + 1, dtype=torch.long))
        self.register_buffer("user_items", torch.zeros(num_train, dtype=torch.long))

    def set_interactions(self, users, items):
        """Keep the training pairs (users, items [N]) by user, as ``user_offsets`` and ``user_items``."""
        order = torch.argsort(users * self.num_items + items)
        counts = torch.bincount(users, minlength=self.user_offsets.numel() - 1)
        self.user_offsets.copy_(torch.cat([counts.new_zeros(1), counts.cumsum(0)]))
        self.user_items.copy_(items[order])

    def items_of(self, users):
        """(the users' training items, one user after another [n], how many each user has [B])."""
        starts = self.user_offsets[users]
        counts = self.user_offsets[users + 1] - starts
        position = torch.arange(int(counts.sum()), device=users.device) - torch.repeat_interleave(
            counts.cumsum(0) - counts, counts)
        return self.user_items[torch.repeat_interleave(starts, counts) + position], counts

    def rows(self, users):
        """[B, I] the users' rows of X (1 for each of their training items)."""
        items, counts = self.items_of(users)
        row = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
        matrix = torch.zeros(users.numel(), self.num_items, device=self.user_items.device)
        matrix[row, items] = 1.0
        return matrix


class EASE(PairsByUser):
    """The item-item weights ``item_weights`` [I, I], the L2 weight they were solved with (``l2_weight``), and the
    training pairs by user from which a user's row of X is built. Its scores cost no work per (user, item) beyond
    the sum, so full ranking scores it in large chunks of users."""

    traits = Traits(output="score", large_chunks=True, shards=False,
                    formula="score of item i for a user = the sum of item_weights[j, i] over the user's items j")

    def __init__(self, num_users, num_items, num_train=0):
        if num_users < 1 or num_items < 1 or num_train < 0:
            raise ValueError(f"num_users and num_items must be positive and num_train 0 or more, got {num_users}, "
                             f"{num_items} and {num_train}.")
        super().__init__(num_users, num_items, num_train)
        self.register_buffer("item_weights", torch.zeros(num_items, num_items))
        self.register_buffer("l2_weight", torch.zeros(()))
        self._gram = None  # (the training pairs it was computed from, G): kept between the settings of a grid

    def gram(self, chunk=4096):
        """G = X^T X [I, I], accumulated over chunks of users: float32, whose sums of 0/1 products are exact while
        they stay below 2^24 (a count of users), else float64."""
        num_users = self.user_offsets.numel() - 1
        dtype = torch.float32 if num_users < EXACT_FLOAT32 else torch.float64
        total = torch.zeros(self.num_items, self.num_items, dtype=dtype, device=self.item_weights.device)
        for start in range(0, num_users, chunk):
            rows = self.rows(torch.arange(start, min(start + chunk, num_users), device=total.device)).to(dtype)
            total.addmm_(rows.T, rows)
        return total

    @staticmethod
    def weights_for(gram, l2):
        """B for one L2 weight (float64): P = (G + l2 I)^-1 through a Cholesky factor, B = -P / diag(P), diagonal 0.
        Per weight this costs about n^3 operations for n items, against about 9 n^3 for G's eigendecomposition,
        so solving each weight of a grid of fewer than nine afresh is the cheaper way."""
        work = gram.to(torch.float64, copy=True)
        work.diagonal().add_(l2)
        # In place, through the column-major view of the symmetric matrix: LAPACK's layout, so neither step copies.
        view = work.mT
        torch.linalg.cholesky(view, out=view)
        torch.cholesky_inverse(view, out=view)
        work.div_(-torch.diagonal(work).clone())
        work.fill_diagonal_(0.0)
        return work

    def solve(self, users, items, l2):
        """Fit to the training pairs (users, items [N]) with the L2 weight ``l2``; G = X^T X is computed once for
        the same pairs and kept for the next weight. Returns the epoch record's ``l2_weight``."""
        if self._gram is None or self._gram[0][0] is not users or self._gram[0][1] is not items:
            self._gram = None  # the old G freed before the new one is made
            self.set_interactions(users, items)
            self._gram = ((users, items), self.gram())
        try:
            self.use(self._gram[1], l2)
        except torch.linalg.LinAlgError:  # (the flag's range keeps this away; a last guard, in one line)
            raise TaskError(f"--ease_l2 {l2:g}: G + {l2:g} I is not positive definite in float64; pass a larger L2 "
                            "weight") from None
        return {"l2_weight": float(l2)}

    def use(self, gram, l2):
        """Set B for the L2 weight ``l2`` from G = X^T X."""
        self.l2_weight.fill_(float(l2))
        self.item_weights.copy_(self.weights_for(gram, float(l2)))
        return self

    def forward(self, users, items):
        """Scores of the pairs (users, items [B])."""
        return (self.rows(users) * self.item_weights[:, items].T).sum(-1)

    def score(self, users, items):
        """[B, C] scores of users [B] for their candidates items [B, C]."""
        return self.score_all(users).gather(1, items)

    def score_all(self, users):
        """[B, num_items] scores of users [B] for every item: their rows of X times B, as the sum of their items' rows
        of B (work in proportion to their items, not to B's size: a chunk of a few users does not read all of B)."""
        items, counts = self.items_of(users)
        return nn.functional.embedding_bag(items, self.item_weights, counts.cumsum(0) - counts, mode="sum")

    def score_history(self, items):
        """[num_items] scores of a user who interacted with ``items`` (not in training): no fold-in needed."""
        return self.item_weights[items].sum(0)

    def item_vectors(self):
        """{what it is: [num_items, I]}: each item's row of B (how it predicts every other item)."""
        return {"EASE item-item weights": self.item_weights.detach()}

    def export_arrays(self):
        """{file stem: tensor}: the item-item weights (with the training pairs by user, a user's scores)."""
        return {"item_weights": self.item_weights, "user_offsets": self.user_offsets, "user_items": self.user_items}


def needed_bytes(num_items):
    return BYTES_PER_ENTRY * num_items**2


def available_bytes(device):
    """Memory the solve can have: the GPU's free memory, or the host's available memory (Linux's MemAvailable,
    which counts the page cache the kernel gives back), else None."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def solve_seconds(num_items, device, size=768):
    """Seconds one L2 weight's solve is estimated to take on ``device``: about n^3 operations for n items (its
    Cholesky factor and inverse, float64), at the rate a float64 product of ``size`` x ``size`` matrices runs here
    (measured now, in a few milliseconds)."""
    probe = torch.rand(size, size, dtype=torch.float64, device=device)
    rate = 2 * size**3 / max(seconds_of(lambda: probe @ probe, device), 1e-9)
    return float(num_items) ** 3 / rate


def seconds_of(work, device):
    """Seconds ``work()`` takes on ``device``, timed on its second call (the first pays for start-up)."""
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def duration(seconds):
    """Seconds in the unit that suits them: seconds below 90, minutes below 90 minutes, else hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} minutes" if seconds < 5400 else f"{seconds / 3600:.1f} hours"


def _gib(count):
    return f"{count / 2**30:.1f} GiB"


def solve_device(config):
    """Where the solve will run: --device's choice (the dataset is still on the host when the run is checked)."""
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def memory_size(count):
    """Bytes in the unit that suits them: GiB from a tenth of one, else MiB (rounded up)."""
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 / 10 else f"{math.ceil(count / 2**20)} MiB"


def _number(value):
    return format(value, "g") if isinstance(value, float) else str(value)


class ClosedFormFamily(Family):
    """What the closed-form families share: their model is fitted to the training pairs (``num_train`` of them),
    one setting of the grid flag ``grid_flag`` an epoch, a resumed run keeping the same grid, and the memory their
    solve needs checked before it starts (``memory_problem``)."""

    grid_flag = None  # the flag's name without dashes, e.g. "ease_l2"
    default_grid = ()  # its settings when the flag is not given

    def grid(self, args):
        """The settings of the grid flag as given, else the default grid."""
        return list(getattr(args, self.grid_flag) or self.default_grid)

    def default_epochs(self, args):
        return len(self.grid(args))

    def data_settings(self, dataset):
        return {"num_train": dataset.num_train}

    def settings(self, config):
        return [tuple(setting) if isinstance(setting, list) else setting for setting in getattr(config,
                                                                                            self.grid_flag)]

    def resume_fields(self, config):
        return [(self.grid_flag, f"--{self.grid_flag}", None, True)]

    def refit_plan(self, config, chosen_epoch):
        setting = self.settings(config)[chosen_epoch]
        shown = ",".join(map(_number, setting)) if isinstance(setting, tuple) else _number(setting)
        return (dataclasses.replace(config, **{self.grid_flag: [setting], "epochs": 1}), 1,
                f"--{self.grid_flag} {shown}")

    def tuned_by_default(self, protocol):
        return True

    @staticmethod
    def memory_problem(needed, config):
        """The available memory (bytes) when ``needed`` is more than ``HEADROOM`` of it, else None."""
        free = available_bytes(solve_device(config))
        return free if free is not None and needed > HEADROOM * free else None


class EaseFamily(ClosedFormFamily):
    """``--model ease``: closed form, full-ranking or sampled evaluation as the implicit models, the L2 weight
    chosen on validation from ``--ease_l2``'s values. ``FAMILY`` is the registry's object."""

    name = "ease"
    models = {"ease": EASE}
    description = "ease, the closed-form item-item model (EASE, Steck 2019)"
    grid_flag = "ease_l2"
    default_grid = L2_GRID

    def add_arguments(self, parser, flags):
        group = parser.add_argument_group("EASE (--model ease)")
        # (Below 1e-3, G + l2 I of an item without training pairs is singular to float64's precision.)
        flags.add(group, "--ease_l2", type=float, nargs="+", default=None, metavar="L2", readers=tuple(self.models),
                  rule="in [1e-3, 1e9]",
                  help="the L2 weights tried, each solved and evaluated as an epoch, the best kept (chosen on the "
                       f"validation set when the dataset has one); default {' '.join(map(str, L2_GRID))}. "
                       "--early_stop counts L2 weights without a better one")

    def choose(self, args, dataset):
        grid = self.grid(args)
        seconds = solve_seconds(dataset.num_items, solve_device(args))
        notes = {"L2 weights": (" ".join(f"{value:g}" for value in grid),
                                ("given" if args.ease_l2 else "the default grid") + ", one an epoch"),
                 "EASE solve": (f"about {_gib(needed_bytes(dataset.num_items))} and {duration(seconds)} an L2 "
                                f"weight ({duration(seconds * len(grid))} in all)",
                                f"estimated from the {dataset.num_items:,} items and this machine's speed")}
        return {"ease_l2": grid, "epochs": len(grid)}, notes, None

    def check(self, dataset, config):
        super().check(dataset, config)
        needed = needed_bytes(dataset.num_items)
        free = self.memory_problem(needed, config)  # (the rest: the data, the evaluation, the process)
        if free is not None:
            raise TaskError(f"--model ease needs about {_gib(needed)} for its item x item matrices of "
                            f"{dataset.num_items:,} items, more than {HEADROOM:.0%} of the {_gib(free)} available "
                            "here (the rest holds the data and the evaluation); use --model gfcf or rp3beta, whose "
                            "memory grows with the interactions")

    def describe(self, config, dataset):
        return " (closed form: each L2 weight solved and evaluated in turn)"

    def search_space(self, trial, protocol, timed=False):
        return ["--ease_l2", f"{trial.suggest_float('ease.l2', 1.0, 1e4, log=True):.4g}"]


FAMILY = EaseFamily()
