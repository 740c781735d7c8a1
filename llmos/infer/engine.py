"""Generation: prefill the prompt into a preallocated KV cache, then decode token by token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from llmos.model import KVCache, Transformer


@dataclass
class SamplingConfig:
    temperature: float = 0.8  # 0 is greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # nucleus sampling (Holtzman et al. 2019); 1: off
    seed: int | None = None


def sample_next(
    logits: torch.Tensor, s: SamplingConfig, gen: torch.Generator | None
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if s.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / s.temperature
    if s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > s.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate(
    model: Transformer,
    prompt: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    stop_ids: set[int] | frozenset[int] = frozenset(),
) -> Iterator[int]:
    """Yield new token ids one at a time; stops after a stop id (yielded) or max_new_tokens."""
    s = sampling or SamplingConfig()
    gen = torch.Generator().manual_seed(s.seed) if s.seed is not None else None
    model.eval()
    param = next(model.parameters())
    cache = KVCache(model.cfg, 1, len(prompt) + max_new_tokens, param.dtype, param.device)
    x = torch.tensor([prompt], dtype=torch.long, device=param.device)
    for _ in range(max_new_tokens):
        logits = model(x, cache=cache)[:, -1]
        tok = sample_next(logits, s, gen)
        t = int(tok.item())
        yield t
        if t in stop_ids:
            return
        x = tok.view(1, 1)


class TextStream:
    """Turns a stream of token ids into text pieces, holding back a split UTF-8 character."""

    def __init__(self, tok):
        self.tok, self.pending = tok, b""

    def push(self, token_id: int) -> str:
        self.pending += self.tok.decode_bytes([token_id])
        try:
            text, self.pending = self.pending.decode("utf-8"), b""
            return text
        except UnicodeDecodeError as e:
            if e.end < len(self.pending) or len(self.pending) - e.start >= 4:  # invalid, not split
                text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
                return text
            text = self.pending[: e.start].decode("utf-8")
            self.pending = self.pending[e.start :]
            return text
