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
import warnings

import torch
from tqdm import tqdm

from ncflib.ease import ClosedFormFamily, PairsByUser, memory_size
from ncflib.errors import TaskError
from ncflib.flags import parsed_by
from ncflib.protocols import Traits

# (alpha, beta, neighbours) settings tried by default, one an epoch; the best is chosen on validation. Published
# tunings of RP3beta land in alpha 0.5-1 and beta 0-0.6 (Dacrema et al., RecSys 2019), with a few hundred neighbours.
GRID = tuple(itertools.product((0.5, 0.8, 1.1), (0.0, 0.3, 0.6), (200,)))
BLOCK_ENTRIES = 2**22  # walk entries per block of source items (a block of rows of W, before its top neighbours)
DENSE_SHARE = 4  # a block whose walks fill at least 1/DENSE_SHARE of its rows is ranked dense (torch.topk)


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
        user_degree = torch.bincount(users, minlength=num_users).double().clamp(min=1)
        item_degree = torch.bincount(items, minlength=self.num_items).double().clamp(min=1)
        ones = torch.ones(users.numel(), dtype=torch.float64, device=users.device)
        # The two steps: item -> user, (X[u, i] / d_i)^alpha, and user -> item, (X[u, j] / d_u)^alpha.
        with warnings.catch_warnings():  # (torch's note that its CSR support is in beta: nothing to act on)
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            backward = torch.sparse_coo_tensor(torch.stack([items, users]), ones * item_degree[items] ** -alpha,
                                               (self.num_items, num_users), check_invariants=True)
            forward = torch.sparse_coo_tensor(torch.stack([users, items]), ones * user_degree[users] ** -alpha,
                                              (num_users, self.num_items), check_invariants=True)
            # (COO products: torch's CSR x CSR product on a CPU kept about 600 MB of every Yelp2018-sized solve.)
            backward, forward = backward.coalesce().to_sparse_csr(), forward.coalesce()
        penalty = item_degree ** -beta  # [I]: the popularity of the target, to the power beta
        self.neighbour_items.zero_()
        self.neighbour_weights.zero_()
        blocks = walk_blocks(users, items, user_degree, self.num_items)
        for start, stop in tqdm(blocks, desc="rp3beta", unit="block", leave=False, file=sys.stderr,
                                disable=len(blocks) < 8 or not sys.stderr.isatty()):  # (a bar on many blocks)
            walks = torch.sparse.mm(_row_block(backward, start, stop).to_sparse_coo(), forward).coalesce()  # [b, I]
            size = (stop - start) * self.num_items
            if size <= 2 * BLOCK_ENTRIES and walks.values().numel() * DENSE_SHARE >= size:
                where, best = _dense_top(walks, penalty, start, keep)
                self.neighbour_items[start:stop, :keep] = where
                self.neighbour_weights[start:stop, :keep] = best.float()
            else:
                rows, places, where, best = _sparse_top(walks, penalty, start, keep)
                self.neighbour_items[start + rows, places] = where
                self.neighbour_weights[start + rows, places] = best.float()
        self.setting.copy_(torch.tensor([alpha, beta, float(keep)]))
        return {"alpha": float(alpha), "beta": float(beta), "neighbours": keep}

    def scores_of(self, items, owners, size):
        """[size, num_items] the sums of the rows of W of ``items`` [n] into row ``owners[n]``."""
        scores = torch.zeros(size, self.num_items, device=self.neighbour_weights.device)
        rows = owners[:, None].expand(-1, self.width)
        scores.index_put_((rows.reshape(-1), self.neighbour_items[items].reshape(-1)),
                          self.neighbour_weights[items].reshape(-1), accumulate=True)
        return scores

    def forward(self, users, items):
        """Scores of the pairs (users, items [B])."""
        return self.score_all(users).gather(1, items[:, None]).squeeze(1)

    def score(self, users, items):
        """[B, C] scores of users [B] for their candidates items [B, C]."""
        return self.score_all(users).gather(1, items)

    def score_all(self, users):
        """[B, num_items] scores of users [B] for every item: their items' rows of W, summed."""
        items, counts = self.items_of(users)
        return self.scores_of(items, torch.repeat_interleave(torch.arange(users.numel(), device=users.device),
                                                             counts), users.numel())

    def score_history(self, items):
        """[num_items] scores of a user who interacted with ``items`` (not in training): no fold-in needed."""
        return self.scores_of(items, torch.zeros_like(items), 1)[0]

    def export_arrays(self):
        """{file stem: tensor}: each item's neighbours and weights, with the training pairs by user."""
        return {"neighbour_items": self.neighbour_items, "neighbour_weights": self.neighbour_weights,
                "user_offsets": self.user_offsets, "user_items": self.user_items}


def walk_blocks(users, items, user_degree, num_items):
    """[(start, stop)]: consecutive blocks of source items whose walk rows together hold at most about
    ``BLOCK_ENTRIES`` entries (a row holds at most the sum of its users' degrees, and at most ``num_items``), so a
    block's product stays bounded whatever the catalogue's size and skew (one item at least per block)."""
    reach = torch.bincount(items, weights=user_degree[users], minlength=num_items).clamp(max=num_items)
    ends = torch.cumsum(reach.double(), 0)
    blocks, start = [], 0
    while start < num_items:
        before = float(ends[start - 1]) if start else 0.0
        stop = int(torch.searchsorted(ends, torch.tensor(before + BLOCK_ENTRIES, dtype=ends.dtype), right=True))
        stop = min(max(stop, start + 1), num_items)
        blocks.append((start, stop))
        start = stop
    return blocks


def _dense_top(walks, penalty, start, keep):
    """(targets [b, keep], weights [b, keep]): each walk row's best targets, the row made dense (most of it is
    filled: a small or dense catalogue). ``walks``: the block's walks, a coalesced sparse COO matrix."""
    scores = walks.to_dense() * penalty
    count = scores.shape[0]
    scores[torch.arange(count), torch.arange(start, start + count)] = 0.0  # no walk back to itself
    best, where = scores.topk(keep, dim=1)
    return where, best


def _sparse_top(walks, penalty, start, keep):
    """(rows, places, targets, weights) [n]: each walk row's best ``keep`` targets among its stored entries (a
    large, sparse catalogue: no dense row), row ``rows[n]`` keeping ``targets[n]`` in place ``places[n]``; a row
    with fewer entries keeps them all (its other places stay at weight 0)."""
    rows, targets = walks.indices()
    starts = torch.cumsum(torch.bincount(rows, minlength=walks.shape[0]), 0) - torch.bincount(rows,
                                                                                          minlength=walks.shape[0])
    values = torch.where(targets == rows + start, 0.0, walks.values() * penalty[targets]).float()  # none to itself
    # One sort, by row and then by weight, highest first: the bits of a float32 of 0 or more, read as an integer,
    # grow with it, so (row, weight) packs into one int64 key.
    key = rows * 2**31 + (2**31 - 1 - values.view(torch.int32).long())
    order = torch.sort(key).indices
    places = torch.arange(order.numel(), device=order.device) - starts[rows[order]]
    kept = order[places < keep]
    return rows[kept], places[places < keep], targets[kept], values[kept]


def _row_block(matrix, start, stop):
    """Rows ``start:stop`` of a sparse CSR matrix, as a sparse CSR matrix."""
    crow = matrix.crow_indices()
    low, high = int(crow[start]), int(crow[stop])
    return torch.sparse_csr_tensor(crow[start:stop + 1] - low, matrix.col_indices()[low:high],
                                   matrix.values()[low:high], (stop - start, matrix.shape[1]), check_invariants=False)


def needed_bytes(num_items, num_train, neighbours):
    """Bytes held while solving: the neighbours (index and weight), a block of walks (sparse, with its sort's
    work, or dense, twice as many entries, with its top-k), the two sparse step matrices (index and value per
    training pair, twice), the pairs by user."""
    return num_items * neighbours * 12 + 6 * BLOCK_ENTRIES * 8 + num_train * 48 + num_items * 16


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
