"""The three Neural Collaborative Filtering models of He et al. (WWW 2017): GMF, MLP and NeuMF.

Pure ``nn.Module``s: no printing, logging or file I/O. ``forward(users, items)`` takes two index tensors of the same
shape and returns logits of that shape (apply a sigmoid for probabilities).

    model = NeuMF(num_users=943, num_items=1682, factors=64, layers=(256, 256, 128, 64), dropout=0.5)
    logits = model(torch.tensor([0, 1]), torch.tensor([5, 7]))

Initialisation follows NVIDIA's implementation: embeddings N(0, 0.01), Glorot-uniform tower, LeCun-uniform output.
"""

import math

import torch
from torch import nn

from ncflib.protocols import Traits

SIMILARITIES = ("dot", "cosine")  # GMF's scores: NCF's weighted dot product, or SimpleX's cosine


def binary_cross_entropy(logits, labels, weights=None):
    """Summed BCE of logits against 0/1 labels, each sample counted ``weights`` times (once when None); in float32
    whatever the logits' precision."""
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, weights, reduction="sum")


def implicit_loss(model, inputs, autocast):
    """The training loss of GMF, MLP and the paper's NeuMF (``training.fit``'s loss function): summed BCE of
    ``model(users, items)`` over a batch's (users, items, labels, weights[, groups]); reported and minimised alike.
    ``groups`` (``dataloading.ImplicitInputs``) tells the model how the batch repeats its users."""
    users, items, labels, weights, *groups = inputs
    with autocast():
        logits = model(users, items, **grouping(groups))
    loss = binary_cross_entropy(logits, labels, weights)
    return loss, loss


def grouping(groups):
    """The keyword arguments that pass a batch's ``groups`` to a model: none for a plain batch."""
    return {"groups": groups[0]} if groups and groups[0] > 1 else {}


def _shared_users(users, groups, table):
    """The first ``len(users) / groups`` users when ``users`` is ``groups`` repeats of them (a training batch from
    ``dataloading.ImplicitInputs``: each positive's negatives share its user) and ``table`` is a plain embedding, so
    that each user row is looked up once and broadcast over the groups; else None (a sharded table has looked up
    every sample's row already)."""
    if groups == 1 or not isinstance(table, nn.Embedding):
        return None
    return users[:users.shape[0] // groups]


def _check_sizes(num_users, num_items, factors=None, layers=None, dropout=0.0):
    if num_users < 1 or num_items < 1:
        raise ValueError(f"num_users and num_items must be positive, got {num_users} and {num_items}.")
    if factors is not None and factors < 1:
        raise ValueError(f"factors must be positive, got {factors}.")
    if layers is not None:
        if len(layers) < 1 or any(size < 1 for size in layers):
            raise ValueError(f"layers must be one or more positive sizes, got {list(layers)}.")
        if layers[0] % 2:
            raise ValueError(f"the first layer size is the user and item embeddings concatenated, so it must be "
                             f"even, got {layers[0]}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")


def _lecun_uniform_(linear):
    bound = math.sqrt(3.0 / linear.in_features)
    nn.init.uniform_(linear.weight, -bound, bound)
    nn.init.zeros_(linear.bias)


def _embedding(rows, width):
    embedding = nn.Embedding(rows, width)
    nn.init.normal_(embedding.weight, std=0.01)
    return embedding


class _RowGather(torch.autograd.Function):
    """``table[ids]`` [*ids.shape, width] whose backward sums the rows' gradients with ``index_add_``: on a CPU
    faster than the embedding backward (docs/history.md), with each row's gradients added in the same order."""

    @staticmethod
    def forward(ctx, table, ids):
        ctx.save_for_backward(ids)
        ctx.rows = table.shape[0]
        return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        width = grad.shape[-1]
        return grad.new_zeros(ctx.rows, width).index_add_(0, ids.reshape(-1), grad.reshape(-1, width)), None


def lookup(table, ids):
    """``table(ids)`` for an embedding module, or the rows ``ids`` of a 2-D tensor: in CPU training through
    ``_RowGather``'s faster backward (a plain ``nn.Embedding`` only: sparse gradients, ``max_norm``, sharded tables
    and tables with hooks, as row-sparse Adam's, keep their own lookup), elsewhere as it is."""
    if isinstance(table, nn.Embedding):
        if (table.sparse or table.max_norm is not None or table.padding_idx is not None or table._forward_hooks
                or table._forward_pre_hooks or not table.weight.requires_grad):
            return table(ids)
        table = table.weight
    elif isinstance(table, nn.Module):  # a sharded table
        return table(ids)
    if table.device.type == "cpu" and torch.is_grad_enabled() and table.requires_grad:
        return _RowGather.apply(table, ids)
    return nn.functional.embedding(ids, table)


def _keep_mask(x, p):
    """A mask of CPU tensor x's shape: 1 (or True) where an element is kept, with probability 1 - p, else 0 (False).

    (Other devices use ``F.dropout``'s fused kernel.) It is cut from the bits of random 64-bit integers rather than
    drawn as a float per element, as ``nn.Dropout``'s Bernoulli draws it (a large share of a NeuMF training step on
    a CPU; docs/history.md). A drop probability that is a multiple of 1 / 2^k for k = 1, 2, 4 or 8
    takes k bits an element, exactly (NeuMF's 0.5 one bit: a 64th of the draws); any other is rounded to a multiple
    of 1/65536 and takes 16.
    Parts of 1, 2 or 4 bits are split out of 32-bit words by shifts, and that mask comes back in x's dtype, so
    that applying it is a plain product, cheaper than a bool mask of 8-bit parts (docs/history.md).
    """
    count = x.numel()
    bits = next((k for k in (1, 2, 4, 8) if p * 2**k == round(p * 2**k)), 16)
    words = torch.randint(-2**63, 2**63 - 1, ((count * bits + 63) // 64,), dtype=torch.int64)
    if bits >= 8:  # whole bytes or 16-bit words, compared as they are: a bool mask (casting it costs more)
        parts = words.view(torch.int8 if bits == 8 else torch.int16)[:count]
        return (parts >= round(p * 2**bits) - 2**(bits - 1)).view(x.shape)
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    parts = words.view(torch.int32)[:, None].bitwise_right_shift(shifts).bitwise_and_(2**bits - 1).view(-1)[:count]
    if bits > 1:  # keep a part >= t, as 0 or 1 in integers: clamp(part - (t - 1), 0, 1) (a bool compare is slower)
        parts = parts.sub_(round(p * 2**bits) - 1).clamp_(0, 1)
    return parts.view(x.shape).to(x.dtype)


def compute_dtype(tensor):
    """The precision of inference on ``tensor``'s device: autocast's when it is on there, else the tensor's own."""
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


_FUSED_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# oneDNN's fused product takes bfloat16 only on CPUs with bfloat16 instructions (AVX-512 BF16, AMX); elsewhere it
# fails to build its primitive, and the plain ops (which convert) are used.
_FUSED_BFLOAT16 = _FUSED_LINEAR and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def linear_relu(x, weight, bias):
    """``relu(x @ weight.T + bias)`` for inference: on a CPU one oneDNN product with the bias and ReLU in its
    epilogue (a third less time than three passes over the output), elsewhere the plain ops."""
    low = torch.bfloat16 in (x.dtype, weight.dtype) or (torch.is_autocast_enabled("cpu")
                                                        and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    fused = _FUSED_BFLOAT16 if low else _FUSED_LINEAR
    if fused and x.device.type == "cpu" and not torch.is_grad_enabled():
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu", [], "")
    return torch.relu(nn.functional.linear(x, weight, bias))


class _ReLUDropout(torch.autograd.Function):
    """``dropout(relu(x))`` whose backward needs only its output: an element passes gradient exactly when it came
    out positive (x > 0 and kept, as the scale 1 / (1 - p) > 1 cannot round a positive to zero). The output is kept
    anyway (the next layer's weight gradient reads it), so no mask is stored: at batch 2^20 the masks were about
    1 GB of writes and reads per step."""

    @staticmethod
    def forward(ctx, x, p):
        scale = 1.0 / (1.0 - p)
        if x.device.type == "cpu":  # in place after the ReLU: one new tensor, not three (a third of the time)
            y = torch.relu(x).mul_(_keep_mask(x, p)).mul_(scale)
        else:  # one fused kernel in eager mode; under torch.compile, fused with the rest of the layer's epilogue
            y = nn.functional.dropout(torch.relu(x), p, training=True)
        ctx.save_for_backward(y)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, y, 0).mul_(ctx.scale), None  # ReLU's own backward kernel


def relu_dropout(x, p, training):
    """Inverted dropout of ``relu(x)`` (the mask of ``_keep_mask`` on a CPU) in training, ``relu(x)`` otherwise,
    storing no dropout mask for the backward."""
    if not training or p == 0:
        return torch.relu(x)
    return _ReLUDropout.apply(x, p)


class GMF(nn.Module):
    """Generalised matrix factorisation: a linear layer over the element-wise product of the two embeddings."""

    def __init__(self, num_users, num_items, factors=64, similarity="dot"):
        super().__init__()
        _check_sizes(num_users, num_items, factors)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")
        self.user_embedding = _embedding(num_users, factors)
        self.item_embedding = _embedding(num_items, factors)
        self.output = nn.Linear(factors, 1)
        _lecun_uniform_(self.output)
        # 'cosine' scores the cosine of the two embeddings (SimpleX's MF), leaving the output layer out.
        self.cosine = similarity == "cosine"
        self.traits = Traits(formula="logit = cosine(user_embedding[u], item_embedding[i])" if self.cosine else
                             "logit = (user_embedding[u] * item_embedding[i]) @ output_weight[0] + output_bias[0]")

    def towers(self, users, items):
        """(user vectors [..., D], item vectors [..., D], bias): a pair's score is their dot product plus the bias,
        so a batch's users score shared items with one product. 'dot': the user rows scaled by the output weights,
        the item rows, the output bias; 'cosine': both rows normalised, no bias."""
        user_rows, item_rows = self.user_embedding(users), self.item_embedding(items)
        if self.cosine:
            return nn.functional.normalize(user_rows, dim=-1), nn.functional.normalize(item_rows, dim=-1), 0.0
        return user_rows * self.output.weight[0], item_rows, self.output.bias[0]

    def features(self, users, items, groups=1):
        """[..., factors]: the two embeddings' element-wise product. With ``groups`` > 1 (a training batch whose
        users repeat in that many blocks: ``_shared_users``) each user row is looked up once and broadcast over the
        blocks; the same values."""
        shared = _shared_users(users, groups, self.user_embedding)
        if shared is None:
            return lookup(self.user_embedding, users) * lookup(self.item_embedding, items)
        item_rows = lookup(self.item_embedding, items)
        width = item_rows.shape[-1]
        return (item_rows.view(groups, -1, width) * lookup(self.user_embedding, shared)).view(-1, width)

    def forward(self, users, items, groups=1, towers=False):
        """Logits of users and items [B]; ``groups`` as ``features``. Over a grouped batch the output layer's
        weights are folded into the looked-up user rows (``sum_f (w_f u_f) v_f``), so the batch-sized work is one
        product and one sum, with no [B, factors] features through a linear layer; the same values up to rounding.
        With ``towers``, ``towers(users, items)`` instead (users and items of any lengths): through ``forward``, so
        that data-parallel and compiled wrappers see the call."""
        if towers:
            return self.towers(users, items)
        if self.cosine:
            user_vectors, item_vectors, _ = self.towers(users, items)
            return (user_vectors * item_vectors).sum(-1)
        shared = _shared_users(users, groups, self.user_embedding)
        if shared is None:
            return self.output(self.features(users, items)).squeeze(-1)
        scaled = lookup(self.user_embedding, shared) * self.output.weight[0]  # [B / groups, factors]
        item_rows = lookup(self.item_embedding, items)
        logits = (item_rows.view(groups, -1, item_rows.shape[-1]) * scaled).sum(-1)
        return logits.view(-1) + self.output.bias

    def training_loss(self):
        """The loss function ``training.fit`` trains this model with."""
        return implicit_loss

    def candidate_dot(self, users, items, weight):
        """``features(users[:, None], items) @ weight`` [B, C] for users [B] and their candidates items [B, C]: each
        user's row, scaled by ``weight`` [factors], is dotted with its candidates' rows (no [B, C, factors]
        product)."""
        scaled = self.user_embedding(users) * weight  # [B, factors]
        return torch.matmul(self.item_embedding(items), scaled[:, :, None]).squeeze(-1)

    def score(self, users, items):
        """Logits [B, C] of users [B] for their candidates items [B, C]: ``forward`` for every pair, computed
        per user where it can be."""
        if self.cosine:
            user_vectors, item_vectors, _ = self.towers(users, items)
            return torch.matmul(item_vectors, user_vectors[:, :, None]).squeeze(-1)
        return self.candidate_dot(users, items, self.output.weight[0]) + self.output.bias

    def score_all(self, users):
        """Logits [B, num_items] of users [B] for every item: one product with the whole item table."""
        if self.cosine:
            return (nn.functional.normalize(self.user_embedding(users), dim=-1)
                    @ nn.functional.normalize(self.item_embedding.weight, dim=-1).T)
        return (self.user_embedding(users) * self.output.weight[0]) @ self.item_embedding.weight.T + self.output.bias

    def item_vectors(self):
        """{what it is: [num_items, D]}: the item representations ``recommend.py --similar_to`` compares by cosine.
        GMF scores ``sum_f w_f u_f v_f``, so an item's factors weighted by the output layer's w (under 'cosine', the
        factors themselves)."""
        if self.cosine:
            return {"GMF factors": self.item_embedding.weight.detach()}
        return {"GMF factors x output weights": self.item_embedding.weight.detach() * self.output.weight.detach()[0]}

    def user_parameter_names(self):
        """The parameters with one row per user: what a fold-in fits for a new user, all else frozen."""
        return ["user_embedding.weight"]

    @torch.no_grad()
    def all_item_scorer(self):
        """For ranking with fixed weights: a function users [B] -> float32 logits [B, num_items], as ``score_all``.
        Always in float32, even under autocast: a dot product is cheap, and bfloat16's 8-bit mantissa would tie
        many items."""
        if self.cosine:
            items = nn.functional.normalize(self.item_embedding.weight.detach().float(), dim=-1)

            @torch.no_grad()
            def score(users):
                with torch.autocast(items.device.type, enabled=False):
                    return nn.functional.normalize(self.user_embedding.weight[users].float(), dim=-1) @ items.T
            return score
        return _dot_scorer(self, self.output.weight[0], self.output.bias)


def _dot_scorer(gmf, weight, bias):
    """users [B] -> float32 ``(user rows * weight) @ item rows.T + bias`` [B, num_items] of a GMF."""
    items, weight, bias = (tensor.detach().float() for tensor in (gmf.item_embedding.weight, weight, bias))

    @torch.no_grad()
    def score(users):
        with torch.autocast(items.device.type, enabled=False):
            return torch.addmm(bias, gmf.user_embedding.weight[users].float() * weight, items.T)
    return score


class MLP(nn.Module):
    """Multi-layer perceptron over the concatenated embeddings; ``layers[0]`` is the concatenation's width."""

    def __init__(self, num_users, num_items, layers=(256, 256, 128, 64), dropout=0.5):
        super().__init__()
        _check_sizes(num_users, num_items, layers=layers, dropout=dropout)
        self.user_embedding = _embedding(num_users, layers[0] // 2)
        self.item_embedding = _embedding(num_items, layers[0] // 2)
        self.linears = nn.ModuleList()  # the tower; each ReLU and dropout is applied with its layer (relu_dropout)
        for width_in, width_out in zip(layers[:-1], layers[1:]):
            linear = nn.Linear(width_in, width_out)
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
            self.linears.append(linear)
        self.dropout = dropout
        self.output = nn.Linear(layers[-1], 1)
        _lecun_uniform_(self.output)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Read the checkpoints of earlier versions too, whose tower was one ``nn.Sequential`` of (Linear, ReLU[,
        Dropout]) per layer (``tower.3.weight``: the second layer's, with dropout): renamed to ``linears.N``, before
        ``nn.Module`` loads this module and its layers. (An override, not a load hook: a hook bound to the module
        would tie it into a reference cycle that outlived a torchrun job's process group.)"""
        stride = 3 if self.dropout > 0 else 2
        for key in [key for key in state_dict if key.startswith(prefix + "tower.")]:
            index, _, rest = key[len(prefix) + len("tower."):].partition(".")
            state_dict[f"{prefix}linears.{int(index) // stride}.{rest}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def layer_sizes(self):
        """The ``layers`` this MLP was built with: the joined embeddings' width, then each tower layer's."""
        return [self.user_embedding.embedding_dim * 2] + [linear.out_features for linear in self.linears]

    def features(self, users, items, groups=1):
        """[..., layers[-1]]: the tower's output. ``groups`` as ``GMF.features`` (in training, the first layer's
        user half is then applied to the users of one block)."""
        linears = self.linears
        if self.training and linears and isinstance(self.user_embedding, nn.Embedding):  # (not sharded tables)
            hidden = relu_dropout(self.distinct_first_layer(users, items, groups), self.dropout, True)
            linears = linears[1:]
        else:
            hidden = torch.cat([lookup(self.user_embedding, users), lookup(self.item_embedding, items)], dim=-1)
        for linear in linears:  # the tower, each ReLU and Dropout fused into one step
            hidden = relu_dropout(linear(hidden), self.dropout, self.training)
        return hidden  # [..., layers[-1]]

    def distinct_first_layer(self, users, items, groups=1):
        """The first tower layer on the joined embeddings, before its ReLU, as a training batch needs it: the layer
        is split into its user and item halves, each applied once per distinct user or item of the batch, and the
        two gathered back per sample and added. A batch repeats its users and items (ML-100k's 4,096 samples hold
        at most 943 users), so this is up to several times fewer multiply-adds than applying the layer per sample,
        in the forward and the backward pass alike; the result is the same up to rounding. With ``groups`` > 1
        (``_shared_users``) the user half is gathered for one block of users and broadcast over the blocks."""
        first, width = self.linears[0], self.user_embedding.embedding_dim
        shared = _shared_users(users, groups, self.user_embedding)
        user_ids, user_rows = torch.unique(users if shared is None else shared, return_inverse=True)
        item_ids, item_rows = torch.unique(items, return_inverse=True)
        user_part = nn.functional.linear(lookup(self.user_embedding, user_ids), first.weight[:, :width], first.bias)
        item_part = nn.functional.linear(lookup(self.item_embedding, item_ids), first.weight[:, width:])
        # (gathered as lookups, whose backward sums the rows' gradients far faster on a CPU than indexing's)
        user_hidden, item_hidden = lookup(user_part, user_rows), lookup(item_part, item_rows)
        if shared is None:
            return user_hidden + item_hidden
        return (item_hidden.view(groups, -1, item_hidden.shape[-1]) + user_hidden).view(item_hidden.shape)

    def forward(self, users, items, groups=1):
        return self.output(self.features(users, items, groups)).squeeze(-1)

    def training_loss(self):
        """The loss function ``training.fit`` trains this model with."""
        return implicit_loss

    def candidate_features(self, users, items):
        """``features(users[:, None], items)`` [B, C, layers[-1]] for users [B] and candidates items [B, C].

        The first layer is split into its user and item halves: the user half is applied once per user, the item
        half once per item (for every item when there are fewer items than candidates, else per candidate), and
        the two are added. That skips the [B, C, layers[0]] concatenation and most of the tower's largest product.
        """
        if not self.linears:  # no hidden layer: the features are the joined embeddings themselves
            users = users[:, None].expand_as(items)
            return torch.cat([self.user_embedding(users), self.item_embedding(items)], dim=-1)
        first, width = self.linears[0], self.user_embedding.embedding_dim
        user_part = nn.functional.linear(self.user_embedding(users), first.weight[:, :width], first.bias)
        if self.item_embedding.num_embeddings <= items.numel():
            item_part = nn.functional.linear(self.item_embedding.weight, first.weight[:, width:])[items]
        else:
            item_part = nn.functional.linear(self.item_embedding(items), first.weight[:, width:])
        hidden = relu_dropout(user_part[:, None, :] + item_part, self.dropout, self.training)  # [B, C, layers[1]]
        for linear in self.linears[1:]:
            hidden = relu_dropout(linear(hidden), self.dropout, self.training)
        return hidden

    def score(self, users, items):
        """Logits [B, C] of users [B] for their candidates items [B, C], as ``forward`` for every pair."""
        return self.output(self.candidate_features(users, items)).squeeze(-1)

    def all_item_features(self, users):
        """``features`` [B, num_items, layers[-1]] of users [B] with every item: the first layer's user half once
        per user and item half once per item, broadcast together (no gather of a [B, num_items, ...] copy)."""
        if not self.linears:
            return self.candidate_features(users, torch.arange(self.item_embedding.num_embeddings,
                                                               device=users.device).expand(users.numel(), -1))
        first, width = self.linears[0], self.user_embedding.embedding_dim
        user_part = nn.functional.linear(self.user_embedding(users), first.weight[:, :width], first.bias)
        item_part = nn.functional.linear(self.item_embedding.weight, first.weight[:, width:])
        hidden = relu_dropout(user_part[:, None, :] + item_part, self.dropout, self.training)  # [B, I, layers[1]]
        for linear in self.linears[1:]:
            hidden = relu_dropout(linear(hidden), self.dropout, self.training)
        return hidden

    def score_all(self, users):
        """Logits [B, num_items] of users [B] for every item."""
        return self.output(self.all_item_features(users)).squeeze(-1)

    def item_vectors(self):
        """{what it is: [num_items, D]}: the item representations ``recommend.py --similar_to`` compares by cosine."""
        return {"MLP item embedding": self.item_embedding.weight.detach()}

    def user_parameter_names(self):
        """The parameters with one row per user: what a fold-in fits for a new user, all else frozen."""
        return ["user_embedding.weight"]

    @torch.no_grad()
    def all_item_scorer(self):
        """For ranking with fixed weights (the model in eval mode): a function users [B] -> float32 logits
        [B, num_items], as ``score_all``. The item half of the first layer is computed once here rather than per
        call, the weights are cast once to the inference precision (``compute_dtype``: bfloat16 under CPU
        autocast), and each layer's product, bias and ReLU run as one step (``linear_relu``)."""
        features, dtype = self.all_item_tower(), compute_dtype(self.item_embedding.weight)
        weight, bias = self.output.weight[0].detach().to(dtype), self.output.bias.detach().float()

        @torch.no_grad()
        def score(users):
            return torch.mv(features(users), weight).view(users.numel(), -1).float() + bias
        return score

    @torch.no_grad()
    def all_item_tower(self):
        """A function users [B] -> the tower's output for every item, [B * num_items, layers[-1]] (user-major), in
        the inference precision: ``all_item_features`` with the work of ``all_item_scorer``. Eval mode only."""
        if self.training:
            raise RuntimeError("all_item_scorer ranks with fixed weights: call model.eval() first")
        dtype = compute_dtype(self.item_embedding.weight)
        if not self.linears:  # no hidden layer: the joined embeddings are the features
            return lambda users: self.all_item_features(users).to(dtype).flatten(0, 1)
        first, width = self.linears[0], self.user_embedding.embedding_dim
        weight = first.weight.detach().to(dtype)
        item_part = nn.functional.linear(self.item_embedding.weight.detach().to(dtype), weight[:, width:])
        user_weight, user_bias = weight[:, :width], first.bias.detach().to(dtype)
        tower = [(linear.weight.detach().to(dtype), linear.bias.detach().to(dtype)) for linear in self.linears[1:]]

        @torch.no_grad()
        def features(users):
            user_part = nn.functional.linear(self.user_embedding.weight[users].to(dtype), user_weight, user_bias)
            hidden = torch.add(user_part[:, None, :], item_part).relu_().flatten(0, 1)  # [B * I, layers[1]]
            for layer_weight, layer_bias in tower:
                hidden = linear_relu(hidden, layer_weight, layer_bias)
            return hidden
        return features


class NeuMF(nn.Module):
    """GMF and MLP branches with their own embeddings, joined by one output layer."""

    traits = Traits(formula="GMF branch: (gmf_user_embedding[u] * gmf_item_embedding[i]) @ output_weight[0, :factors]; "
                            "the logit adds the MLP branch (see model.onnx) and output_bias[0]")

    def __init__(self, num_users, num_items, factors=64, layers=(256, 256, 128, 64), dropout=0.5):
        super().__init__()
        self.gmf = GMF(num_users, num_items, factors)
        self.mlp = MLP(num_users, num_items, layers, dropout)
        # The branches' own output layers: they seed ``output`` in load_pretrained, and score each branch alone for
        # the branch losses (``forward(..., branches=True)``); frozen unless ``train_branch_outputs`` is called.
        self.train_branch_outputs(False)
        self.output = nn.Linear(factors + layers[-1], 1)
        _lecun_uniform_(self.output)

    def train_branch_outputs(self, enabled=True):
        """Let the two branches' own output layers learn (for branch losses) or freeze them (the paper's NeuMF)."""
        self.gmf.output.requires_grad_(enabled)
        self.mlp.output.requires_grad_(enabled)
        return self

    def forward(self, users, items, branches=False, groups=1):
        """NeuMF's logits; with ``branches``, also each branch's own logits through its own output layer (the GMF
        and MLP models inside NeuMF), as a tuple (joint, gmf, mlp). The features are computed once for all three.
        ``groups`` as ``GMF.features``."""
        gmf, mlp = self.gmf.features(users, items, groups), self.mlp.features(users, items, groups)
        joint = self.output(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)
        if not branches:
            return joint
        return joint, self.gmf.output(gmf).squeeze(-1), self.mlp.output(mlp).squeeze(-1)

    def training_loss(self, branch_loss=0.0):
        """The loss function ``training.fit`` trains this model with, and which output layers learn.

        With ``branch_loss`` W > 0, each branch also scores every training pair through its own output layer, and
        those two BCE losses, times W, are added to NeuMF's: each branch learns to be a model of its own, as
        pre-training makes it, in one run; NeuMF's own loss is the one reported. With 0, NeuMF's joint output
        alone is trained, as in the paper and NVIDIA's tool, and the branches' output layers stay frozen.
        """
        if branch_loss < 0:
            raise ValueError(f"branch_loss must be 0 or more, got {branch_loss}.")
        self.train_branch_outputs(branch_loss > 0)
        if not branch_loss:
            return implicit_loss

        def loss_with_branches(model, inputs, autocast):
            users, items, labels, weights, *groups = inputs
            with autocast():
                joint, gmf, mlp = model(users, items, branches=True, **grouping(groups))
            own = binary_cross_entropy(joint, labels, weights)
            return own, own + branch_loss * (binary_cross_entropy(gmf, labels, weights)
                                             + binary_cross_entropy(mlp, labels, weights))

        return loss_with_branches

    def score(self, users, items):
        """Logits [B, C] of users [B] for their candidates items [B, C], as ``forward`` for every pair."""
        factors = self.gmf.user_embedding.embedding_dim
        weight = self.output.weight[0]
        mlp = nn.functional.linear(self.mlp.candidate_features(users, items), self.output.weight[:, factors:])
        return self.gmf.candidate_dot(users, items, weight[:factors]) + mlp.squeeze(-1) + self.output.bias

    def score_all(self, users):
        """Logits [B, num_items] of users [B] for every item."""
        factors = self.gmf.user_embedding.embedding_dim
        weight = self.output.weight[0]
        mlp = nn.functional.linear(self.mlp.all_item_features(users), self.output.weight[:, factors:]).squeeze(-1)
        gmf = (self.gmf.user_embedding(users) * weight[:factors]) @ self.gmf.item_embedding.weight.T
        return gmf + mlp + self.output.bias

    def item_vectors(self):
        """{what it is: [num_items, D]}: both branches' item representations (``recommend.py --similar_to``
        averages their cosines). The GMF factors are weighted by their part of the output layer."""
        factors = self.gmf.user_embedding.embedding_dim
        return {"GMF factors x output weights": self.gmf.item_embedding.weight.detach() *
                self.output.weight.detach()[0, :factors], "MLP item embedding": self.mlp.item_embedding.weight.detach()}

    def user_parameter_names(self):
        """The parameters with one row per user: what a fold-in fits for a new user, all else frozen."""
        return ["gmf.user_embedding.weight", "mlp.user_embedding.weight"]

    @torch.no_grad()
    def all_item_scorer(self):
        """For ranking with fixed weights (the model in eval mode): a function users [B] -> float32 logits
        [B, num_items], as ``score_all``, with the work of ``MLP.all_item_scorer`` and ``GMF.all_item_scorer``."""
        factors, dtype = self.gmf.user_embedding.embedding_dim, compute_dtype(self.mlp.item_embedding.weight)
        features, weight = self.mlp.all_item_tower(), self.output.weight[0]
        gmf, mlp_weight = _dot_scorer(self.gmf, weight[:factors], self.output.bias), weight[factors:].to(dtype)

        @torch.no_grad()
        def score(users):
            return gmf(users) + torch.mv(features(users), mlp_weight).view(users.numel(), -1).float()
        return score

    @torch.no_grad()
    def load_pretrained(self, gmf, mlp, alpha=0.5):
        """Initialise from trained GMF and MLP models, as in the paper: their embeddings and tower as they are, the
        output layer as the two output layers weighted by ``alpha`` and ``1 - alpha``."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        self.gmf.load_state_dict(gmf.state_dict())
        self.mlp.load_state_dict(mlp.state_dict())
        self.output.weight.copy_(torch.cat([alpha * gmf.output.weight, (1 - alpha) * mlp.output.weight], dim=1))
        self.output.bias.copy_(alpha * gmf.output.bias + (1 - alpha) * mlp.output.bias)
        return self
