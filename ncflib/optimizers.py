"""The optimizers a gradient-trained model is fitted with: AdamW (fused), row-sparse Adam, SGD with momentum.

    optimizer = make_optimizer(model, "adam", undecayed=[model.item_bias.weight], lr=1e-3, betas=(0.9, 0.999),
                               eps=1e-8, weight_decay=0.1)
"""

import torch

from ncflib import sparse_adam


def make_optimizer(model, name, undecayed=(), **settings):
    """The optimizer over ``model``'s trainable parameters: 'adam' (AdamW, fused), 'row_sparse_adam' (embedding
    rows updated only when looked up; see ncflib/sparse_adam.py) or 'sgd' (with momentum beta1 and L2-coupled weight
    decay, as torch.optim.SGD). ``settings``: lr, betas, eps, weight_decay; the parameters in ``undecayed`` (adam
    and sgd) get no weight decay."""
    if name == "row_sparse_adam":
        return sparse_adam.build_optimizer(model, **settings)
    skipped = {id(parameter) for parameter in undecayed}
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    groups = [{"params": [parameter for parameter in trainable if id(parameter) not in skipped]},
              {"params": [parameter for parameter in trainable if id(parameter) in skipped], "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=settings["lr"], momentum=settings["betas"][0],
                               weight_decay=settings["weight_decay"])
    return torch.optim.AdamW(groups, **settings, fused=True)

