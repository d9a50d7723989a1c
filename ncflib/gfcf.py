"""GF-CF (Shen et al., CIKM 2021): a graph filter over the normalised interaction matrix, as a model family
(``--model gfcf``).

With X the users x items matrix of training pairs and D_u, D_i the degrees of users and items, the normalised matrix
is R = D_u^-1/2 X D_i^-1/2. A user's scores (their row x of X) are a linear filter plus an ideal low-pass filter:

    s = x R^T R  +  alpha * x D_i^-1/2 V V^T D_i^1/2

where V [items, rank] holds R's top right singular vectors (a truncated SVD, from a randomized sparse solver). The
linear filter is applied as two sparse products per block of users, never as an items x items matrix; ``alpha``
and ``rank`` are the setting, one per epoch of the loop, chosen on validation (``--gfcf_grid``). It is solved in
closed form (``protocols.SolvedInClosedForm``): the SVD is computed once, at the grid's largest rank, and each
setting takes its leading columns. A new user's scores come from their items alone.

    model = GFCF(num_users, num_items, num_train, rank=256)
    model.solve(users, items, (0.3, 256))         # the training pairs, one setting
    scores = model.score_all(torch.tensor([0, 1]))  # [2, num_items]
"""

import itertools
import sys
import warnings

import torch
from tqdm import tqdm

from ncflib.ease import ClosedFormFamily, PairsByUser, duration, memory_size, seconds_of, solve_device
from ncflib.errors import TaskError
from ncflib.flags import parsed_by
from ncflib.protocols import Traits

# (alpha, rank) settings tried by default, one an epoch, the best chosen on validation: the paper's alpha 0.3 at rank
# 256 (Gowalla, Yelp2018), the linear filter alone (alpha 0: its choice on Amazon-Book; once, since at alpha 0 the
# rank changes nothing), and either side of both.
GRID = ((0.0, 64),) + tuple(itertools.product((0.1, 0.3, 0.6), (64, 256)))
OVERSAMPLING, POWER_ITERATIONS = 32, 6  # of the randomized SVD: its error on the leading vectors falls with both


def parse_setting(text):
    """(alpha, rank) from 'ALPHA,RANK' (--gfcf_grid); a ValueError naming what is wrong."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not ALPHA,RANK")
    alpha, rank = float(parts[0]), int(parts[1])
    if not (0 <= alpha <= 100 and rank >= 1):
        raise ValueError(f"{text!r}: alpha must be in [0, 100] and rank at least 1")
    return alpha, rank


class GFCF(PairsByUser):
    """The training pairs by user (``PairsByUser``), the degree scales of users and items (``user_scale`` =
    d_u^-1/2, ``item_scale`` = d_i^-1/2, 0 for an item without training pairs), the leading right singular vectors
    of the normalised matrix (``singular_vectors`` [I, rank]) and the setting (alpha, rank)."""

    traits = Traits(output="score", large_chunks=True, shards=False,
                    formula="with R = user_scale[u] * X[u, i] * item_scale[i] over the training pairs (user_items) "
                            "and x a user's row of X: score = x R^T R + alpha * ((x * item_scale) @ V[:, :rank]) "
                            "@ V[:, :rank]^T / item_scale, V = singular_vectors, (alpha, rank) = setting")

    def __init__(self, num_users, num_items, num_train=0, rank=256):
        if num_users < 1 or num_items < 1 or num_train < 0 or rank < 1:
            raise ValueError(f"num_users, num_items and rank must be positive and num_train 0 or more, got "
                             f"{num_users}, {num_items}, {rank} and {num_train}.")
        super().__init__(num_users, num_items, num_train)
        self.rank = min(rank, num_users, num_items)
        self.register_buffer("user_scale", torch.zeros(num_users))
        self.register_buffer("item_scale", torch.zeros(num_items))
        self.register_buffer("singular_vectors", torch.zeros(num_items, self.rank))
        self.register_buffer("setting", torch.zeros(2))
        # (the pairs solved for, whether the vectors are computed for them; R and R^T, made on first use)
        self._solved_for, self._has_vectors, self._normalised = None, False, None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._normalised = None  # R is rebuilt from the loaded pairs

    def set_interactions(self, users, items):
        """Keep the training pairs (users, items [N]) by user, and the degree scales."""
        super().set_interactions(users, items)
        item_degree = torch.bincount(items, minlength=self.num_items).float()
        self.user_scale.copy_(self.user_offsets.diff().float().clamp(min=1) ** -0.5)
        self.item_scale.copy_(torch.where(item_degree > 0, item_degree.clamp(min=1) ** -0.5, 0.0))
        self._normalised = None

    def normalised(self, layout=torch.sparse_csr):
        """(R [U, I], R^T [I, U]) as sparse matrices of ``layout``, built from the training pairs."""
        if self._normalised is None or self._normalised[0] != layout:
            num_users = self.user_offsets.numel() - 1
            counts = self.user_offsets.diff()
            users = torch.repeat_interleave(torch.arange(num_users, device=counts.device), counts)
            values = self.user_scale[users] * self.item_scale[self.user_items]
            with warnings.catch_warnings():  # (torch's note that its CSR support is in beta: nothing to act on)
                warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
                pairs = [torch.sparse_coo_tensor(torch.stack(index), values, shape, check_invariants=True).coalesce()
                         for index, shape in (((users, self.user_items), (num_users, self.num_items)),
                                              ((self.user_items, users), (self.num_items, num_users)))]
                if layout == torch.sparse_csr:
                    pairs = [matrix.to_sparse_csr() for matrix in pairs]
            self._normalised = (layout, *pairs)
        return self._normalised[1:]

    def solve(self, users, items, setting):
        """Fit the training pairs (users, items [N]) with ``setting`` (alpha, rank): the truncated SVD of R at this
        model's rank, computed once for the same pairs (and only once a setting's alpha needs it), its leading
        ``rank`` vectors taken. Returns the setting."""
        alpha, rank = setting
        if self._solved_for is None or self._solved_for[0] is not users or self._solved_for[1] is not items:
            self.set_interactions(users, items)
            self.singular_vectors.zero_()
            self._solved_for, self._has_vectors = (users, items), False
        if alpha and not self._has_vectors:
            self.singular_vectors.copy_(self.leading_vectors()[:, :self.rank])
            self._has_vectors = True
        self.setting.copy_(torch.tensor([float(alpha), float(min(rank, self.rank))]))
        return {"alpha": float(alpha), "rank": min(int(rank), self.rank)}

    def leading_vectors(self):
        """[I, rank + oversampling] approximate leading right singular vectors of R: a randomized range finder
        with ``POWER_ITERATIONS`` power iterations, each product re-orthonormalised (Halko, Martinsson and Tropp
        2011, algorithm 4.4; torch.svd_lowrank's steps, with a progress bar over its sparse products on a
        terminal). Its Gaussian draws are seeded, so the same pairs give the same vectors."""
        forward, backward = self.normalised()
        width = min(self.rank + OVERSAMPLING, *forward.shape)
        generator = torch.Generator(device=forward.device).manual_seed(0)
        start = torch.randn(self.num_items, width, generator=generator, device=forward.device)
        products = 2 * POWER_ITERATIONS + 2
        with tqdm(total=products, desc="gfcf svd", unit="product", leave=False, file=sys.stderr,
                  disable=forward.values().numel() < 2**22 or not sys.stderr.isatty()) as bar:

            def times(matrix, dense):
                bar.update()
                return torch.linalg.qr(torch.sparse.mm(matrix, dense)).Q

            basis = times(forward, start)  # [U, width]: the range of R
            for _ in range(POWER_ITERATIONS):
                basis = times(forward, times(backward, basis))
            projected = torch.sparse.mm(backward, basis).T  # B = Q^T R, [width, I], as (R^T Q)^T
            bar.update()
            _, _, right = torch.linalg.svd(projected, full_matrices=False)
            bar.update()
        return right.T

    def filtered(self, rows):
        """[B, num_items] the scores of users whose rows of X are ``rows`` [B, num_items] (dense)."""
        forward, backward = self.normalised()
        linear = torch.sparse.mm(backward, torch.sparse.mm(forward, rows.T)).T  # x R^T R, as (R^T (R x^T))^T
        alpha, rank = float(self.setting[0]), int(self.setting[1])
        if not alpha:
            return linear
        vectors = self.singular_vectors[:, :rank]
        inverse = torch.where(self.item_scale > 0, 1.0 / self.item_scale.clamp(min=1e-30), 0.0)
        return linear + alpha * ((rows * self.item_scale) @ vectors) @ vectors.T * inverse

    def forward(self, users, items):
        """Scores of the pairs (users, items [B])."""
        return self.score_all(users).gather(1, items[:, None]).squeeze(1)

    def score(self, users, items):
        """[B, C] scores of users [B] for their candidates items [B, C]."""
        return self.score_all(users).gather(1, items)

    def score_all(self, users):
        """[B, num_items] scores of users [B] for every item."""
        return self.filtered(self.rows(users))

    def score_history(self, items):
        """[num_items] scores of a user who interacted with ``items`` (not in training): no fold-in needed."""
        row = torch.zeros(1, self.num_items, device=self.item_scale.device)
        row[0, items] = 1.0
        return self.filtered(row)[0]

    def export_arrays(self):
        """{file stem: tensor}: the pairs by user, the degree scales, the singular vectors and the setting."""
        return {"user_offsets": self.user_offsets, "user_items": self.user_items, "user_scale": self.user_scale,
                "item_scale": self.item_scale, "singular_vectors": self.singular_vectors, "setting": self.setting}


def svd_seconds(num_users, num_items, num_train, width, device, probe_rows=2**14):
    """Seconds the randomized SVD at ``width`` columns (rank + oversampling) is estimated to take on ``device``:
    ``2 * POWER_ITERATIONS + 2`` sparse products of R or R^T with a [n, width] block, each followed by a QR, timed
    now on a probe (a sparse product of ``num_train`` pairs' share of ``probe_rows`` rows at 8 columns, and a QR of
    ``probe_rows`` x ``width``: a fraction of a second) and scaled by pairs x columns and by rows x columns^2."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    rows = min(probe_rows, num_users + num_items)
    count = max(1, min(num_train, 2**20))
    index = torch.stack([torch.randint(0, rows, (count,), generator=generator),
                         torch.randint(0, num_items, (count,), generator=generator)]).to(device)
    matrix = torch.sparse_coo_tensor(index, torch.ones(count, device=device), (rows, num_items),
                                     check_invariants=True).coalesce()
    dense = torch.randn(num_items, 8, generator=generator).to(device)
    block = torch.randn(rows, width, generator=generator).to(device)

    product = seconds_of(lambda: torch.sparse.mm(matrix, dense), device) / (matrix.values().numel() * 8)
    factor = seconds_of(lambda: torch.linalg.qr(block), device) / (rows * width**2)
    steps = 2 * POWER_ITERATIONS + 2
    # Half the products are of R (num_users rows), half of R^T (num_items rows); every one touches each pair once.
    return steps * (product * num_train * width + factor * (num_users + num_items) / 2 * width**2)


def needed_bytes(num_users, num_items, num_train, rank):
    """Bytes held while solving and scoring: the sparse R and R^T (index pairs and values, as COO and CSR), the
    SVD's work (a few [U + I, rank + oversampling] blocks) and the vectors."""
    return num_train * 2 * 40 + 4 * (num_users + num_items) * (rank + OVERSAMPLING) * 4 + num_items * rank * 4


class GFCFFamily(ClosedFormFamily):
    """``--model gfcf``: solved in closed form, full-ranking or sampled evaluation as the implicit models, its
    setting chosen on validation from ``--gfcf_grid``. ``FAMILY`` is the registry's object."""

    name = "gfcf"
    grid_flag = "gfcf_grid"
    default_grid = GRID
    models = {"gfcf": GFCF}
    description = "gfcf, the graph filter of GF-CF (Shen et al. 2021)"

    def add_arguments(self, parser, flags):
        group = parser.add_argument_group("GF-CF (--model gfcf)")
        flags.add(group, "--gfcf_grid", type=parsed_by(parse_setting), nargs="+", default=None, metavar="ALPHA,RANK",
                  readers=tuple(self.models),
                  help="the settings tried, each evaluated as an epoch, the best kept (chosen on the validation set "
                       "when the dataset has one): ALPHA weighs the ideal low-pass filter of the RANK leading "
                       "singular vectors against the linear filter; default alpha 0 (the linear filter alone), "
                       "then every alpha of 0.1 0.3 0.6 with rank 64 and 256. --early_stop counts settings without "
                       "a better one")

    def choose(self, args, dataset):
        grid = self.grid(args)
        rank = max(setting[1] for setting in grid)
        needed = needed_bytes(dataset.num_users, dataset.num_items, dataset.num_train, rank)
        notes = {"GF-CF settings": ("; ".join(f"{alpha:g},{count}" for alpha, count in grid),
                                   ("given" if args.gfcf_grid else "the default grid") + ", one an epoch"),
                 "GF-CF memory": (memory_size(needed), f"estimated from {dataset.num_users:,} users, "
                                                 f"{dataset.num_items:,} items, {dataset.num_train:,} training pairs "
                                                 f"and rank {rank}")}
        if any(alpha for alpha, _ in grid):  # (the linear filter alone needs no SVD)
            width = min(rank + OVERSAMPLING, dataset.num_users, dataset.num_items)
            seconds = svd_seconds(dataset.num_users, dataset.num_items, dataset.num_train, width, solve_device(args))
            notes["GF-CF SVD"] = (f"about {duration(seconds)}, once for every setting",
                                  f"estimated from the pairs, the rank {rank} plus {OVERSAMPLING} and this "
                                  "machine's speed on a probe")
        return {"gfcf_grid": [list(setting) for setting in grid], "epochs": len(grid), "rank": rank}, notes, None

    def check(self, dataset, config):
        super().check(dataset, config)
        rank = max(setting[1] for setting in self.grid(config))
        needed = needed_bytes(dataset.num_users, dataset.num_items, dataset.num_train, rank)
        free = self.memory_problem(needed, config)
        if free is not None:
            raise TaskError(f"--model gfcf needs about {memory_size(needed)} at rank {rank}, and "
                            f"{memory_size(free)} is available here; pass lower ranks in --gfcf_grid")

    def describe(self, config, dataset):
        return " (closed form: one SVD, then each setting evaluated in turn)"

    def search_space(self, trial, protocol, timed=False):
        alpha = trial.suggest_float("gfcf.alpha", 0.0, 1.0)
        return ["--gfcf_grid", f"{alpha:.4g},{trial.suggest_categorical('gfcf.rank', [32, 64, 128, 256, 512])}"]


FAMILY = GFCFFamily()
