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
import time

import numpy as np
import scipy.sparse
import torch
from tqdm import tqdm

from ncflib.ease import ClosedFormFamily, PairsByUser, duration, memory_size
from ncflib.errors import TaskError
from ncflib.evaluation import COMPACT_ENTRIES, ahead, product_threads, ragged_rows, tops_of_rows
from ncflib.flags import parsed_by
from ncflib.protocols import Traits

# (alpha, beta, neighbours) settings tried by default, one an epoch; the best is chosen on validation. Published
# tunings of RP3beta land in alpha 0.5-1 and beta 0-0.6 (Dacrema et al., RecSys 2019), with a few hundred neighbours.
GRID = tuple(itertools.product((0.5, 0.8, 1.1), (0.0, 0.3, 0.6), (200,)))
BLOCK_ENTRIES = 2**21  # walk steps per block of source items (a block of rows of W, before its top neighbours)


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
        targets by W, a block of source items at a time (sparse products on the CPU, whatever the model's device).
        Returns the epoch record's setting."""
        alpha, beta, neighbours = setting
        keep = min(int(neighbours), self.width)
        self.set_interactions(users, items)
        users, items = users.cpu().numpy(), items.cpu().numpy()
        num_users = self.user_offsets.numel() - 1
        user_counts = np.bincount(users, minlength=num_users)
        item_counts = np.bincount(items, minlength=self.num_items)
        # Row i of X^T walks out of item i to its users; row u of X from user u to their items, weighted by that
        # step's probability to the power alpha, (1 / d_u)^alpha. The first step's, (1 / d_i)^alpha, is a factor of
        # the whole row i, and the target's popularity penalty (1 / d_j)^beta a factor of column j.
        step_out = np.maximum(item_counts, 1.0) ** -alpha
        step_in = np.maximum(user_counts, 1.0) ** -alpha
        penalty = np.maximum(item_counts, 1.0) ** -beta
        backward = scipy.sparse.csr_array((step_out[items], (items, users)), shape=(self.num_items, num_users))
        forward = scipy.sparse.csr_array((step_in[users] * penalty[items], (users, items)),
                                         shape=(num_users, self.num_items))
        # Places a row does not fill (fewer walks than neighbours) hold the item itself at weight 0: no score moves.
        # (Written in place on a CPU; a model on another device gets the tables once they are complete.)
        on_cpu = self.neighbour_items.device.type == "cpu"
        targets_kept = self.neighbour_items if on_cpu else torch.empty(self.num_items, self.width, dtype=torch.long)
        weights_kept = self.neighbour_weights if on_cpu else torch.empty(self.num_items, self.width)
        targets_kept.copy_(torch.arange(self.num_items)[:, None].expand(-1, self.width))
        weights_kept.zero_()
        blocks = walk_blocks(backward, user_counts)
        # The blocks' products ([b, I]: W's rows of the block's source items) run on threads (scipy lets go of the
        # GIL), a few blocks ahead of the ranking of their rows.
        with product_threads() as (pool, threads):
            products = ahead(pool, lambda block: backward[block[0]:block[1]] @ forward, blocks,
                             window=threads)
            for (start, stop), walks in tqdm(zip(blocks, products), total=len(blocks), desc="rp3beta",
                                             unit="block", leave=False, file=sys.stderr,
                                             disable=len(blocks) < 8 or not sys.stderr.isatty()):
                self._keep_top(walks, start, stop, keep, targets_kept, weights_kept)
        if not on_cpu:
            self.neighbour_items.copy_(targets_kept)
            self.neighbour_weights.copy_(weights_kept)
        self.setting.copy_(torch.tensor([alpha, beta, float(keep)]))
        return {"alpha": float(alpha), "beta": float(beta), "neighbours": keep}

    @staticmethod
    def _keep_top(walks, start, stop, keep, targets_kept, weights_kept):
        """Write the ``keep`` best targets of the walk rows ``walks`` (source items start:stop) into the tables."""
        rows, places, targets, weights = row_top(
            torch.from_numpy(walks.indptr.astype(np.int64)), torch.from_numpy(walks.indices.astype(np.int64)),
            torch.from_numpy(walks.data), keep, skip=torch.arange(start, stop))  # (no walk back to itself)
        targets_kept[start + rows, places] = targets
        weights_kept[start + rows, places] = weights.float()

    def _matrix(self):
        """W's kept weights as a CPU sparse matrix (items x items; a row's unfilled places, the item itself at
        weight 0, stay in it as explicit zeros), made once for the weights it was made from (its values share the
        weights' memory on a CPU)."""
        key = (self.neighbour_weights.data_ptr(), self.neighbour_weights._version, self.neighbour_items._version)
        cached = getattr(self, "_kept", None)
        if cached is None or cached[0] != key:
            self._kept = None  # (the old matrix let go of before the new one is made)
            index = np.int32 if self.num_items * self.width < 2**31 else np.int64  # (scipy's own choice)
            offsets = np.arange(0, self.num_items * self.width + 1, self.width, dtype=index)
            matrix = scipy.sparse.csr_array((self.neighbour_weights.cpu().numpy().reshape(-1),
                                             self.neighbour_items.cpu().numpy().reshape(-1).astype(index), offsets),
                                            shape=(self.num_items, self.num_items), copy=False)
            self._kept = cached = (key, matrix)
        return cached[1]

    def score_entries(self, users):
        """(rows, items, scores) [n] of the users' [B] nonzero candidates: each user's items' rows of W summed,
        user ``rows[n]`` scoring ``items[n]``, a user's entries together, users in order. Items not listed score 0.
        Summed on the CPU (sparse products), returned on the model's device."""
        items, counts = self.items_of(users.to(self.user_offsets.device))
        return self._sums(items.cpu().numpy(), counts.cpu().numpy(), users.device)

    def _sums(self, items, counts, device):
        """(rows, items, scores) of the sums of the rows of W of ``items`` [n] (numpy), row j summing ``counts[j]``
        of them in turn."""
        matrix = self._matrix()
        index = matrix.indices.dtype  # (the same index type, or scipy converts the whole of W at every product)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(index)
        history = scipy.sparse.csr_array((np.ones(items.size, dtype=np.float32), items.astype(index), offsets),
                                         shape=(counts.size, self.num_items))
        scores = history @ matrix
        rows = torch.repeat_interleave(torch.arange(counts.size), torch.from_numpy(np.diff(scores.indptr)))
        return (rows.to(device), torch.from_numpy(scores.indices.astype(np.int64)).to(device),
                torch.from_numpy(scores.data.astype(np.float32)).to(device))

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
        return self.scores_of(*self._sums(items.cpu().numpy(), np.array([items.numel()]), items.device), 1)[0]

    def export_arrays(self):
        """{file stem: tensor}: each item's neighbours and weights, with the training pairs by user."""
        return {"neighbour_items": self.neighbour_items, "neighbour_weights": self.neighbour_weights,
                "user_offsets": self.user_offsets, "user_items": self.user_items}


def walk_blocks(backward, user_counts):
    """[(start, stop)]: consecutive blocks of source items (rows of ``backward``, X^T) whose walks together take at
    most about ``BLOCK_ENTRIES`` steps (a row's steps are the sum of its users' degrees: its product's work and most
    of its entries), so a block's work and memory stay bounded whatever the catalogue's size and skew (one item at
    least per block)."""
    steps = np.bincount(np.repeat(np.arange(backward.shape[0]), np.diff(backward.indptr)),
                        weights=user_counts[backward.indices], minlength=backward.shape[0])
    ends = np.cumsum(steps)
    blocks, start, count = [], 0, backward.shape[0]
    while start < count:
        before = ends[start - 1] if start else 0.0
        stop = min(max(int(np.searchsorted(ends, before + BLOCK_ENTRIES, side="right")), start + 1), count)
        blocks.append((start, stop))
        start = stop
    return blocks


def row_top(offsets, columns, values, keep, skip=None):
    """(rows, places, columns, values) [n]: the ``keep`` largest values of each row of a sparse matrix (row r's
    entries at ``offsets[r]:offsets[r + 1]`` of ``columns`` and ``values``), leaving out row r's entry in column
    ``skip[r]`` when ``skip`` [R] is given; row ``rows[n]`` keeps ``columns[n]`` in place ``places[n]``. A row of at
    most ``keep`` entries keeps them in their order; longer rows are ranked, best first (``tops_of_rows``)."""
    counts = offsets.diff()
    skip = torch.full_like(counts, -1) if skip is None else skip
    short = (counts <= keep).nonzero().squeeze(1)
    owners, entries = ragged_rows(offsets, offsets[short], offsets[short + 1])
    rows = short[owners]
    other = columns[entries] != skip[rows]
    parts = [(rows[other], (entries - offsets[rows])[other], columns[entries[other]], values[entries[other]])]
    # One more than kept: the skipped column, when it is among them, makes room for the next.
    for members, best, positions in tops_of_rows(offsets, values, (counts > keep).nonzero().squeeze(1), keep + 1):
        chosen = columns[positions]
        other = chosen != skip[members][:, None]
        place = torch.cumsum(other.long(), 1) - 1
        kept = other & (place < keep)
        parts.append((members[:, None].expand_as(chosen)[kept], place[kept], chosen[kept], best[kept]))
    return tuple(torch.cat(part) for part in zip(*parts))


def solve_seconds(users, items, num_users, num_items, neighbours):
    """(walk steps, seconds) of one setting's solve of the training pairs (users, items [N]) here: the steps (the
    sum of the users' squared degrees: each pair of a user's items is walked once) at the rate a block of them (the
    first ``BLOCK_ENTRIES`` steps' items) is solved now, its product timed on its own (it runs on as many threads as
    torch has) and its ranking on one thread, as in the solve (a fraction of a second in all)."""
    users, items = users.cpu().numpy(), items.cpu().numpy()
    user_counts = np.bincount(users, minlength=num_users).astype(np.float64)
    steps = float(user_counts @ user_counts)
    if not steps:
        return 0.0, 0.0
    ends = np.cumsum(np.bincount(items, weights=user_counts[users], minlength=num_items))
    stop = min(max(int(np.searchsorted(ends, BLOCK_ENTRIES, side="right")), 1), num_items)
    sources = items < stop  # the block's pairs
    walkers = np.zeros(num_users, dtype=bool)
    walkers[users[sources]] = True
    block = walkers[users]  # the pairs of the block's users: the rows of X its walks go through
    backward = scipy.sparse.csr_array((np.ones(int(sources.sum())), (items[sources], users[sources])),
                                      shape=(stop, num_users))
    forward = scipy.sparse.csr_array((np.ones(int(block.sum())), (users[block], items[block])),
                                     shape=(num_users, num_items))
    with product_threads() as (pool, threads):
        backward @ forward  # (the first product pays for start-up)
        started = time.perf_counter()
        walks = backward @ forward
        multiplied = time.perf_counter()
        row_top(torch.from_numpy(walks.indptr.astype(np.int64)), torch.from_numpy(walks.indices.astype(np.int64)),
                torch.from_numpy(walks.data), min(neighbours, num_items), skip=torch.arange(stop))
        ranked = time.perf_counter()
    block_seconds = (multiplied - started) / threads + (ranked - multiplied)
    return steps, block_seconds * steps / max(float(ends[stop - 1]), 1.0)


def needed_bytes(num_items, num_train, neighbours):
    """Bytes held while solving and scoring: the neighbours (an 8-byte index and a 4-byte weight each, written in
    place) and the 4-byte indices of their sparse matrix for scoring; a block's walks with their ranking (about 100
    bytes a step); the training pairs (by user, and the two sparse step matrices); full ranking's chunks."""
    return (num_items * neighbours * 16 + BLOCK_ENTRIES * 100 + num_train * 72
            + min(COMPACT_ENTRIES, num_items * num_items) * 16)


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
        steps, seconds = solve_seconds(dataset.train_users, dataset.train_items, dataset.num_users,
                                       dataset.num_items, neighbours)
        notes = {"RP3beta settings": ("; ".join(f"{alpha:g},{beta:g},{count}" for alpha, beta, count in grid),
                                      ("given" if args.rp3_grid else "the default grid") + ", one an epoch"),
                 "RP3beta memory": (memory_size(needed_bytes(dataset.num_items, dataset.num_train, neighbours)),
                                    f"estimated from {dataset.num_items:,} items, {dataset.num_train:,} training "
                                    f"pairs and {neighbours} neighbours"),
                 "RP3beta solve": (f"about {duration(seconds)} a setting ({duration(seconds * len(grid))} in all)",
                                   f"{steps:,.0f} walk steps a setting, at the rate this machine solved a block "
                                   "of them just now")}
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
