"""The transformer: Llama (Touvron et al. 2023) in one file.

RMSNorm (Zhang & Sennrich 2019), rotary position embeddings (Su et al. 2021), grouped-query
attention (Ainslie et al. 2023) through `scaled_dot_product_attention`, SwiGLU (Shazeer 2020).
Module and parameter names equal Hugging Face `LlamaForCausalLM`'s, so a `state_dict` here is a
`model.safetensors` there, byte for byte.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmos.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 as HF does, so bf16 runs match it.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(cfg: ModelConfig, n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (n, head_dim) for positions 0..n-1, in HF's half-split layout."""
    inv_freq = 1.0 / cfg.rope_theta ** (
        torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device=device) / cfg.head_dim
    )
    freqs = torch.outer(torch.arange(n, dtype=torch.float32, device=device), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # HF rotates the two halves of each head (not interleaved pairs as in Meta's original code).
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def rope_and_mask(cos_table, sin_table, start: int, T: int, pad, device):
    """Rotary tables and attention mask for T queries at positions start.. (see forward)."""
    if pad is None:
        mask = None
        if start > 0 and T > 1:  # chunked prefill: causal, offset by the cached tokens
            mask = torch.ones(T, start + T, dtype=torch.bool, device=device).tril(start)
        return cos_table[start : start + T], sin_table[start : start + T], mask
    q_at = torch.arange(start, start + T, device=device)
    k_at = torch.arange(start + T, device=device)
    pos = (q_at[None, :] - pad[:, None]).clamp(min=0)  # (B, T): each row counts from its start
    mask = (k_at[None, None, :] <= q_at[None, :, None]) & (
        k_at[None, None, :] >= pad[:, None, None]
    )
    mask |= k_at[None, None, :] == q_at[None, :, None]  # padding attends to itself: no NaN rows
    return cos_table[pos].unsqueeze(1), sin_table[pos].unsqueeze(1), mask.unsqueeze(1)


def packed_rope_and_mask(cos_table, sin_table, segments: torch.Tensor):
    """For rows packing several sequences (segments (B, T) numbers each token's sequence):
    positions restart at each sequence and attention stays inside it (no cross-talk)."""
    B, T = segments.shape
    at = torch.arange(T, device=segments.device)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    pos = at - torch.where(starts, at, 0).cummax(dim=1).values
    mask = (segments[:, :, None] == segments[:, None, :]) & (at[None, :] <= at[:, None])
    return cos_table[pos].unsqueeze(1), sin_table[pos].unsqueeze(1), mask.unsqueeze(1)


class KVCache:
    """Preallocated keys and values for every layer: (batch, kv_heads, max_len, head_dim)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype, device=None):
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)
        ]
        self.v = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)
        ]
        self.pos = 0  # tokens already stored

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        t = k.shape[2]
        self.k[layer][:, :, self.pos : self.pos + t] = k
        self.v[layer][:, :, self.pos : self.pos + t] = v
        end = self.pos + t
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def fork(self, n: int) -> None:
        """Repeat every row n times (row b becomes rows b·n .. b·n + n-1): N continuations of
        one prompt share its prefill."""
        self.k = [k.repeat_interleave(n, 0) for k in self.k]
        self.v = [v.repeat_interleave(n, 0) for v in self.v]

    def grow(self, max_len: int) -> None:
        """Make room for at least max_len positions (doubling, so growth is amortised)."""
        have = self.k[0].shape[2]
        if max_len <= have:
            return
        new = max(max_len, 2 * have)

        def bigger(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros(*t.shape[:2], new, t.shape[3])
            out[:, :, :have] = t
            return out

        self.k, self.v = [bigger(k) for k in self.k], [bigger(v) for v in self.v]

    def row(self, b: int) -> KVCache:
        """A batch-1 cache that is a view of row b (writes land in this cache), empty."""
        view = KVCache.__new__(KVCache)
        view.k, view.v = [k[b : b + 1] for k in self.k], [v[b : b + 1] for v in self.v]
        view.pos = 0
        return view


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.cfg = layer, cfg
        h, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_attention_heads * hd, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_key_value_heads * hd, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_key_value_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * hd, h, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None, mask=None):
        B, T, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_proj(x).view(B, T, -1, hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, -1, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        gqa = self.cfg.num_key_value_heads != self.cfg.num_attention_heads
        if mask is None:  # a causal mask is only implied when queries start at key 0
            causal = T > 1 and k.shape[2] == T
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """LlamaForCausalLM: `model.embed_tokens`, `model.layers.N.*`, `model.norm`, `lm_head`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(cfg, cfg.max_position_embeddings)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self, seed: int = 0) -> None:
        """Normal(0, 0.02) weights, residual projections scaled by 1/sqrt(2·layers) (GPT-2)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
                continue
            std = 0.02
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                std /= math.sqrt(2 * self.cfg.num_hidden_layers)
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * std)

    def _ensure_rope(self, n: int) -> None:
        if n > self.rope_cos.shape[0]:  # longer than the table: extend it (same formula)
            self.rope_cos, self.rope_sin = rope_tables(self.cfg, n, self.rope_cos.device)

    def hidden_states(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        pad: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last layer's normalised outputs (B, T, hidden) for `idx` (B, T): what the
        language-model head and a reward model's score head read (arguments as in forward)."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        self._ensure_rope(start + T)
        if segments is not None and int(segments.max()) <= 0:
            # One sequence per row, then padding (-1): causal attention gives the sequence the
            # same outputs, and lets SDPA use its fused kernel instead of materialising a
            # (T, T) mask and scores per head (11 GB for SmolLM2 at 3,200 tokens).
            segments = None
        if segments is not None:
            cos, sin, mask = packed_rope_and_mask(self.rope_cos, self.rope_sin, segments)
        else:
            cos, sin, mask = rope_and_mask(self.rope_cos, self.rope_sin, start, T, pad, idx.device)
        x = self.model.embed_tokens(idx)
        for block in self.model.layers:
            x = block(x, cos, sin, cache, mask)
        if cache is not None:
            cache.pos += T
        return self.model.norm(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        reduction: str = "mean",
        pad: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ):
        """Logits for `idx` (B, T); with `targets`, the cross-entropy loss instead (ignore -1).

        With a cache, `idx` continues the cached tokens (positions cache.pos onwards). `pad`
        (B,) counts left-padding tokens per row, for a batch of prompts of different lengths:
        a row's positions start after its padding and no query attends to padding. `segments`
        (B, T) marks packed sequences (fine-tuning): see packed_rope_and_mask."""
        x = self.hidden_states(idx, cache, pad, segments)
        if targets is None:
            return self.lm_head(x)
        logits = self.lm_head(x).float().flatten(0, 1)
        return F.cross_entropy(logits, targets.flatten(), ignore_index=-1, reduction=reduction)


class RewardModel(Transformer):
    """LlamaForSequenceClassification with one label: the reward model of RLHF (Ouyang et al.
    2022). The transformer reads a whole conversation and a linear `score` head turns the last
    token's hidden state into one number, how good the final answer is. Names equal HF's
    (`model.*`, `score.weight`), so transformers loads the directory and gives the same scores.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        del self.lm_head  # a score head instead of the vocabulary
        self.score = nn.Linear(cfg.hidden_size, cfg.num_labels or 1, bias=False)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B,) of right-padded rows `idx` (B, T) whose real tokens number `lengths`
        (B,): read at each row's last real token, as HF reads the last non-pad token. Causal
        attention means the padding after a sequence never changes its score."""
        x = self.hidden_states(idx)
        last = lengths - 1 if lengths is not None else torch.full_like(idx[:, 0], idx.shape[1] - 1)
        return self.score(x[torch.arange(idx.shape[0], device=idx.device), last])[:, 0]
