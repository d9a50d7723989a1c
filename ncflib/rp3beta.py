"""RP3beta (Paudel et al., ACM TiiS 2017): a sparse item-item model from a three-step random walk, as a model
family (``--model rp3beta``).

A walk goes from item i to a user u who has it, then to another item j of that user. With X the users x items matrix
of training pairs, d_u and d_i the degrees of users and items, each step's probability is raised to ``alpha``:

    W[i, j] = sum_u (X[u, i] / d_i)^alpha (X[u, j] / d_u)^alpha / d_j^beta

``beta`` penalises popular targets (P3alpha at beta 0). Each item keeps its ``neighbours`` best targets (the
diagonal left out), so memory grows with items x neighbours, never items^2: W is computed a block of source items
at a time (a sparse product of the block's rows of X^T with X). A user's scores are their items' rows of W, summed,
so a new user needs no fold-in. It is solved in closed form (``protocols.SolvedInClosedForm``): the epoch loop
solves one (alpha, beta, neighbours) setting of ``--rp3_grid`` an epoch and keeps the best on validation.

    model = RP3beta(num_users, num_items, num_train, neighbours=200)
    model.solve(users, items, (0.75, 0.25, 200))   # the training pairs, one setting
    scores = model.score_all(torch.tensor([0, 1]))  # [2, num_items]
"""

import itertools
import sys

import torch
from tqdm import tqdm

from ncflib.ease import ClosedFormFamily, PairsByUser, memory_size
from ncflib.errors import TaskError
from ncflib.flags import parsed_by
from ncflib.protocols import Traits
from ncflib import rowsums
from ncflib.rowsums import RowSums, grouped_top, ragged

# (alpha, beta, neighbours) settings tried by default, one an epoch; the best is chosen on validation. Published
# tunings of RP3beta land in alpha 0.5-1 and beta 0-0.6 (Dacrema et al., RecSys 2019), with a few hundred neighbours.
GRID = tuple(itertools.product((0.5, 0.8, 1.1), (0.0, 0.3, 0.6), (200,)))
BLOCK_ENTRIES = 2**22  # walk entries per block of source items (a block of rows of W, before its top neighbours)


def parse_setting(text):
    """(alpha, beta, neighbours) from 'ALPHA,BETA,NEIGHBOURS' (--rp3_grid); a ValueError naming what is wrong."""
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"{text!r} is not ALPHA,BETA,NEIGHBOURS")
    alpha, beta, neighbours = float(parts[0]), float(parts[1]), int(parts[2])
    if not (0 < alpha <= 10 and 0 <= beta <= 10 and neighbours >= 1):
        raise ValueError(f"{text!r}: alpha must be in (0, 10], beta in [0, 10] and neighbours at least 1")
    return alpha, beta, neighbours


class RP3beta(PairsByUser):
    """Each item's ``neighbours`` best targets (``neighbour_items`` [I, K]) and their weights (``neighbour_weights``
    [I, K]), the setting they were solved with, and the training pairs by user from which a user's scores are
    summed."""

    traits = Traits(output="score", large_chunks=True, shards=False,
                    formula="score of item j for a user = the sum, over the user's items i and their neighbours k "
                            "with neighbour_items[i, k] == j, of neighbour_weights[i, k]")

    def __init__(self, num_users, num_items, num_train=0, neighbours=200):
        if num_users < 1 or num_items < 1 or num_train < 0 or neighbours < 1:
            raise ValueError(f"num_users, num_items and neighbours must be positive and num_train 0 or more, got "
                             f"{num_users}, {num_items}, {neighbours} and {num_train}.")
        super().__init__(num_users, num_items, num_train)
        self.width = min(neighbours, num_items)
        self.register_buffer("neighbour_items", torch.zeros(num_items, self.width, dtype=torch.long))
        self.register_buffer("neighbour_weights", torch.zeros(num_items, self.width))
        self.register_buffer("setting", torch.zeros(3))

    def solve(self, users, items, setting):
        """Fit the training pairs (users, items [N]) with ``setting`` (alpha, beta, neighbours): each item's best
        targets by W, a block of source items at a time. Returns the epoch record's setting."""
        alpha, beta, neighbours = setting
        keep = min(int(neighbours), self.width)
        self.set_interactions(users, items)
        num_users = self.user_offsets.numel() - 1
        user_counts = self.user_offsets.diff()
        item_counts = torch.bincount(items, minlength=self.num_items)
        # The two steps' probabilities to the power alpha: item i -> user u, (1 / d_i)^alpha, a factor of the whole
        # row i; user u -> item j, (1 / d_u)^alpha, summed over the users the row walks through. The target's
        # popularity penalty (1 / d_j)^beta.
        step_out = item_counts.double().clamp(min=1) ** -alpha
        step_in = user_counts.double().clamp(min=1) ** -alpha
        penalty = item_counts.double().clamp(min=1) ** -beta
        item_offsets = torch.cat([item_counts.new_zeros(1), item_counts.cumsum(0)])
        item_users = users[torch.argsort(items * num_users + users)]  # each item's users, item after item
        # Places a row does not fill (fewer walks than neighbours) hold the item itself at weight 0: no score moves.
        self.neighbour_items.copy_(torch.arange(self.num_items, device=users.device)[:, None].expand(-1, self.width))
        self.neighbour_weights.zero_()
        sums = RowSums(self.num_items, groups=self.num_items, device=users.device)
        blocks = walk_blocks(item_offsets, item_users, user_counts, self.num_items, sums.groups)
        for start, stop in tqdm(blocks, desc="rp3beta", unit="block", leave=False, file=sys.stderr,
                                disable=len(blocks) < 8 or not sys.stderr.isatty()):  # (a bar on many blocks)
            low, high = int(item_offsets[start]), int(item_offsets[stop])
            sources = torch.repeat_interleave(torch.arange(stop - start, device=users.device),
                                              item_counts[start:stop])  # [n] the block row of each (item, user)
            walkers = item_users[low:high]
            steps, positions = ragged(self.user_offsets[walkers], user_counts[walkers])
            rows, targets, walks = sums(sources[steps], self.user_items[positions], step_in[walkers][steps])
            other = targets != rows + start  # no walk back to itself
            rows, targets = rows[other], targets[other]
            weights = walks[other] * step_out[start + rows] * penalty[targets]
            rows, places, targets, weights = grouped_top(rows, targets, weights, stop - start, keep)
            self.neighbour_items[start + rows, places] = targets
            self.neighbour_weights[start + rows, places] = weights.float()
        self.setting.copy_(torch.tensor([alpha, beta, float(keep)]))
        return {"alpha": float(alpha), "beta": float(beta), "neighbours": keep}

    def score_entries(self, users):
        """(rows, items, scores) [n] of the users' [B] nonzero candidates: each user's items' rows of W summed,
        user ``rows[n]`` scoring ``items[n]``, a user's entries together, users in order. Items not listed score 0."""
        if users.numel() == 0:
            empty = users.new_zeros(0)
            return empty, empty, self.neighbour_weights.new_zeros(0)
        sums = self._sums(users.numel())
        parts = []
        for start in range(0, users.numel(), sums.groups):
            chunk = users[start:start + sums.groups]
            items, counts = self.items_of(chunk)
            owners = torch.repeat_interleave(torch.arange(chunk.numel(), device=users.device), counts * self.width)
            rows, targets, scores = sums(owners, self.neighbour_items[items].reshape(-1),
                                         self.neighbour_weights[items].reshape(-1))
            parts.append((rows + start, targets, scores.float()))
        return tuple(torch.cat(part) for part in zip(*parts))

    def _sums(self, users):
        """The ``RowSums`` buffer of scoring, kept between calls (large enough for ``users`` or a full pass)."""
        sums = getattr(self, "_row_sums", None)
        device = self.neighbour_weights.device
        if sums is None or sums.total.device != device or sums.groups < min(users, rowsums.CAPACITY // self.num_items):
            sums = RowSums(self.num_items, groups=users, dtype=torch.float32, device=device)
            self._row_sums = sums
        return sums

    def scores_of(self, rows, items, scores, size):
        """[size, num_items] the entries (rows, items, scores) made dense (unlisted items score 0)."""
        dense = torch.zeros(size, self.num_items, device=self.neighbour_weights.device)
        dense[rows, items] = scores
        return dense

    def forward(self, users, items):
        """Scores of the pairs (users, items [B])."""
        return self.score_all(users).gather(1, items[:, None]).squeeze(1)

    def score(self, users, items):
        """[B, C] scores of users [B] for their candidates items [B, C]."""
        return self.score_all(users).gather(1, items)

    def score_all(self, users):
        """[B, num_items] scores of users [B] for every item: their items' rows of W, summed."""
        return self.scores_of(*self.score_entries(users), users.numel())

    def score_history(self, items):
        """[num_items] scores of a user who interacted with ``items`` (not in training): no fold-in needed."""
        sums = self._sums(1)
        rows, targets, scores = sums(torch.zeros(items.numel() * self.width, dtype=torch.long, device=items.device),
                                     self.neighbour_items[items].reshape(-1), self.neighbour_weights[items].reshape(-1))
        return self.scores_of(rows, targets, scores.float(), 1)[0]

    def export_arrays(self):
        """{file stem: tensor}: each item's neighbours and weights, with the training pairs by user."""
        return {"neighbour_items": self.neighbour_items, "neighbour_weights": self.neighbour_weights,
                "user_offsets": self.user_offsets, "user_items": self.user_items}


def walk_blocks(item_offsets, item_users, user_counts, num_items, max_rows):
    """[(start, stop)]: consecutive blocks of at most ``max_rows`` source items whose walks together hold at most
    about ``BLOCK_ENTRIES`` entries (a row's walks are the sum of its users' degrees), so a block's work and memory
    stay bounded whatever the catalogue's size and skew (one item at least per block)."""
    owners = torch.repeat_interleave(torch.arange(num_items, device=item_users.device), item_offsets.diff())
    reach = torch.zeros(num_items, dtype=torch.float64, device=item_users.device).index_add_(
        0, owners, user_counts[item_users].double())
    ends = torch.cumsum(reach, 0)
    blocks, start = [], 0
    while start < num_items:
        before = float(ends[start - 1]) if start else 0.0
        stop = int(torch.searchsorted(ends, torch.tensor(before + BLOCK_ENTRIES, dtype=ends.dtype), right=True))
        stop = min(max(stop, start + 1), start + max_rows, num_items)
        blocks.append((start, stop))
        start = stop
    return blocks


def needed_bytes(num_items, num_train, neighbours):
    """Bytes held while solving and scoring: the neighbours (index and weight); the buffers of at most
    ``rowsums.CAPACITY`` entries each: the fit's sums (float64, int64 owners) and a block's padded rows for their
    top neighbours (float64), the scores' sums (float32, int64) and full ranking's slots (int64); a block's walks
    (about ten 8-byte numbers an entry); the training pairs, by user and by item."""
    buffer = min(rowsums.CAPACITY, num_items * num_items)
    return num_items * neighbours * 12 + buffer * 44 + BLOCK_ENTRIES * 80 + num_train * 48


class RP3betaFamily(ClosedFormFamily):
    """``--model rp3beta``: solved in closed form, full-ranking or sampled evaluation as the implicit models, its
    setting chosen on validation from ``--rp3_grid``. ``FAMILY`` is the registry's object."""

    name = "rp3beta"
    grid_flag = "rp3_grid"
    default_grid = GRID
    models = {"rp3beta": RP3beta}
    description = "rp3beta, the sparse item-item random walk (RP3beta, Paudel et al. 2017)"

    def add_arguments(self, parser, flags):
        group = parser.add_argument_group("RP3beta (--model rp3beta)")
        flags.add(group, "--rp3_grid", type=parsed_by(parse_setting), nargs="+", default=None,
                  metavar="ALPHA,BETA,NEIGHBOURS", readers=tuple(self.models),
                  help="the settings tried, each solved and evaluated as an epoch, the best kept (chosen on the "
                       "validation set when the dataset has one); default every alpha of 0.5 0.8 1.1 with every "
                       "beta of 0 0.3 0.6, 200 neighbours. --early_stop counts settings without a better one")

    def choose(self, args, dataset):
        grid = self.grid(args)
        neighbours = max(setting[2] for setting in grid)
        notes = {"RP3beta settings": ("; ".join(f"{alpha:g},{beta:g},{count}" for alpha, beta, count in grid),
                                      ("given" if args.rp3_grid else "the default grid") + ", one an epoch"),
                 "RP3beta memory": (memory_size(needed_bytes(dataset.num_items, dataset.num_train, neighbours)),
                                    f"estimated from {dataset.num_items:,} items, {dataset.num_train:,} training "
                                    f"pairs and {neighbours} neighbours")}
        return {"rp3_grid": [list(setting) for setting in grid], "epochs": len(grid),
                "neighbours": neighbours}, notes, None

    def check(self, dataset, config):
        super().check(dataset, config)
        neighbours = max(setting[2] for setting in self.grid(config))
        needed = needed_bytes(dataset.num_items, dataset.num_train, neighbours)
        free = self.memory_problem(needed, config)
        if free is not None:
            raise TaskError(f"--model rp3beta needs about {memory_size(needed)} for {dataset.num_items:,} items' "
                            f"{neighbours} neighbours, and {memory_size(free)} is available here; pass fewer "
                            "neighbours in --rp3_grid")

    def describe(self, config, dataset):
        return " (closed form: each setting solved and evaluated in turn)"

    def search_space(self, trial, protocol, timed=False):
        alpha, beta = trial.suggest_float("rp3beta.alpha", 0.2, 1.5), trial.suggest_float("rp3beta.beta", 0.0, 0.9)
        neighbours = trial.suggest_categorical("rp3beta.neighbours", [50, 100, 200, 400, 800])
        return ["--rp3_grid", f"{alpha:.4g},{beta:.4g},{neighbours}"]


FAMILY = RP3betaFamily()
