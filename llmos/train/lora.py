"""LoRA (Hu et al. 2021): fine-tune a low-rank update B·A of each projection, base frozen.

Only the adapters train (a few percent of the parameters), and `merged` folds them back into
plain weights, so the saved model directory is an ordinary Llama checkpoint.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from llmos.common import arg
from llmos.model import Transformer


def rank_arg():
    """The --lora-rank flag of every trainer that can use adapters."""
    return arg(0, "> 0: train LoRA adapters of this rank instead of every weight", lo=0)


def alpha_arg():
    return arg(16.0, "LoRA scale: the update is alpha / rank · B A", lo=0)


TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        # A random, B zero: training starts exactly at the base model.
        self.lora_A = nn.Parameter(
            torch.randn(rank, base.in_features) / math.sqrt(base.in_features)
        )
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def add_lora(model: Transformer, rank: int, alpha: float = 16.0) -> Transformer:
    """Freeze every weight and wrap each attention and MLP projection with an adapter."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in TARGETS and isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child, rank, alpha))
    return model


def merged(model: Transformer) -> Transformer:
    """A copy with every adapter folded in: W + scale · B A, as plain Linear layers."""
    m = copy.deepcopy(model)
    for module in list(m.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                with torch.no_grad():
                    child.base.weight += child.scale * child.lora_B @ child.lora_A
                setattr(module, name, child.base)
    return m
