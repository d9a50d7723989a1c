"""Row-sparse Adam: an optimizer step changes only the embedding rows that the step's batches looked up.

Dense Adam reads and writes every embedding row and both of its moments at every step, however small the batch:
at MovieLens-20M size that is 31.7M parameters, about 0.5 GB of traffic per step, which bounds small-batch training
(DESIGN.md). Here the embedding tables take no part in autograd; a forward hook hands the looked-up rows to the
optimizer as leaves, and the step updates those rows only, as TensorFlow's LazyAdam does: a row's moments and weight
stay as they are while the row is not in a batch. That is a different optimizer from dense Adam, whose momentum
keeps moving a row after its last batch, so it is offered as an option and its accuracy is measured
(docs/history.md) rather than assumed.

    optimizer = sparse_adam.build_optimizer(model, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    loss.backward(); optimizer.step(); optimizer.zero_grad()

Every other parameter (MLP tower, output layers) gets fused AdamW, so the update of a table row touched at every
step equals AdamW's. Weight decay is decoupled, as in AdamW, and applied to the rows updated.

The step has no host synchronisation with one process: duplicate rows in a batch are summed through a scratch
table, and each copy then computes the same new value, so writing them all back leaves one well-defined result.
With several processes (torchrun) the ranks' looked-up rows and gradients are gathered, which costs one small
synchronisation per step to learn each rank's count.
"""

import torch
import torch.distributed as dist
from torch import nn


class RowSparseAdam(torch.optim.Optimizer):
    """Adam with decoupled weight decay for ``nn.Embedding`` tables, updating only the rows looked up since the last
    ``zero_grad``. Use :func:`build_optimizer`, which also attaches the hooks that record the lookups."""

    def __init__(self, embeddings, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or more, got {weight_decay}.")
        self.embeddings = list(embeddings)
        for embedding in self.embeddings:
            if embedding.max_norm is not None or embedding.padding_idx is not None:
                raise ValueError("row-sparse Adam supports plain nn.Embedding tables (no max_norm, no padding_idx).")
        super().__init__([embedding.weight for embedding in self.embeddings],
                         dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self._lookups = {id(embedding.weight): [] for embedding in self.embeddings}  # [(indices, rows leaf)]
        self._scratch = {}  # one table-sized buffer per table, to sum the gradients of a row's copies
        self._hooks = []
        for embedding in self.embeddings:
            embedding.weight.requires_grad_(False)  # autograd never builds a table-sized gradient
            self._hooks.append(embedding.register_forward_hook(self._record))

    def _record(self, embedding, inputs, output):
        if not (embedding.training and torch.is_grad_enabled()):
            return output
        rows = output.detach().requires_grad_()  # [..., width]: a leaf whose .grad is the rows' gradient
        self._lookups[id(embedding.weight)].append((inputs[0], rows))
        return rows

    def zero_grad(self, set_to_none=True):
        for lookups in self._lookups.values():
            lookups.clear()

    def _gathered(self, weight):
        """(indices [L], gradients [L, width]) of this step's lookups, from every rank."""
        width = weight.shape[1]
        pairs = [(indices.reshape(-1), rows.grad.reshape(-1, width)) for indices, rows in self._lookups[id(weight)]
                 if rows.grad is not None]
        indices = torch.cat([pair[0] for pair in pairs]) if pairs else weight.new_zeros(0, dtype=torch.int64)
        grads = torch.cat([pair[1] for pair in pairs]).float() if pairs else weight.new_zeros(0, width)
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return indices, grads
        world_size = dist.get_world_size()
        count = torch.tensor([indices.numel()], device=weight.device)
        counts = [torch.zeros_like(count) for _ in range(world_size)]
        dist.all_gather(counts, count)
        counts = [int(value) for value in counts]  # the one host sync: the padding size and each rank's share
        padded = max(counts)
        if padded == 0:
            return indices, grads
        all_indices = [indices.new_zeros(padded) for _ in range(world_size)]
        all_grads = [grads.new_zeros(padded, width) for _ in range(world_size)]
        dist.all_gather(all_indices, torch.cat([indices, indices.new_zeros(padded - indices.numel())]))
        dist.all_gather(all_grads, torch.cat([grads, grads.new_zeros(padded - grads.shape[0], width)]))
        # DistributedDataParallel averages dense gradients over ranks; the same here keeps one loss scale for both.
        return (torch.cat([part[:n] for part, n in zip(all_indices, counts)]),
                torch.cat([part[:n] for part, n in zip(all_grads, counts)]) / world_size)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("row-sparse Adam does not take a closure.")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            for weight in group["params"]:
                indices, grads = self._gathered(weight)
                if indices.numel() == 0:
                    continue
                state = self.state[weight]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(weight, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(weight, dtype=torch.float32)
                state["step"] += 1
                scratch = self._scratch.get(id(weight))
                if scratch is None:
                    scratch = self._scratch[id(weight)] = torch.zeros_like(weight, dtype=torch.float32)
                # Sum the gradients of every copy of a row, then give each copy the row's total.
                scratch.index_fill_(0, indices, 0.0)
                scratch.index_add_(0, indices, grads)
                grads = scratch[indices]  # [L, width]
                exp_avg = state["exp_avg"][indices].lerp_(grads, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"][indices].mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
                correction1 = 1 - beta1 ** state["step"]
                correction2 = 1 - beta2 ** state["step"]
                denominator = (exp_avg_sq / correction2).sqrt_().add_(eps)
                rows = weight[indices].float().mul_(1 - lr * weight_decay)
                rows.addcdiv_(exp_avg, denominator, value=-lr / correction1)
                state["exp_avg"].index_copy_(0, indices, exp_avg)
                state["exp_avg_sq"].index_copy_(0, indices, exp_avg_sq)
                weight.index_copy_(0, indices, rows.to(weight.dtype))
        self.zero_grad()


class CombinedOptimizer:
    """Several optimizers stepped, zeroed, saved and loaded as one (what the training loop and checkpoints see)."""

    def __init__(self, **optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def step(self, closure=None):
        for optimizer in self.optimizers.values():
            optimizer.step()

    def zero_grad(self, set_to_none=True):
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state):
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, expected {sorted(self.optimizers)}.")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


def build_optimizer(model, lr, betas, eps, weight_decay, fused=True):
    """Row-sparse Adam for every ``nn.Embedding`` of ``model`` and AdamW for its other trainable parameters.

    Call it before wrapping the model in DistributedDataParallel: the tables leave autograd here, and DDP must not
    wait for gradients of theirs."""
    embeddings = [module for module in model.modules() if isinstance(module, nn.Embedding)]
    sparse = RowSparseAdam(embeddings, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    dense = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizers = {"embeddings": sparse}
    if dense:
        optimizers["dense"] = torch.optim.AdamW(dense, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                                fused=fused)
    return CombinedOptimizer(**optimizers)
