"""The inference engine: prefill then decode, batched, with a preallocated KV cache.

Batch-1 decode is memory-bound: each token reads every weight once, so tokens/s is bandwidth
over weight bytes. The engine therefore keeps each weight matrix pre-transposed and contiguous
(`x @ Wt` streams memory in order, several times faster than `F.linear` for bf16 here), in
fp32, bf16, or int8 with one scale per output channel (weight-only quantization as in
gpt-fast; activations stay bf16).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llmos.model import KVCache, Transformer, apply_rope, rope_and_mask, rope_tables


@dataclass
class SamplingConfig:
    temperature: float = 0.8  # 0 is greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # nucleus sampling (Holtzman et al. 2019); 1: off
    min_p: float = 0.0  # drop tokens below min_p × the top probability; 0: off
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019); 1: off
    seed: int | None = None
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings, not included in the text


def sample_next(
    logits: torch.Tensor,
    s: SamplingConfig,
    gen: torch.Generator | None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V); `seen` (B, V) marks used tokens."""
    logits = logits.float()
    if s.repetition_penalty != 1.0 and seen is not None:
        penalized = torch.where(
            logits > 0, logits / s.repetition_penalty, logits * s.repetition_penalty
        )
        logits = torch.where(seen, penalized, logits)
    if s.temperature <= 0:
        return logits.argmax(-1)
    logits = logits / s.temperature
    if s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if s.min_p > 0:
        probs = probs.masked_fill(probs < s.min_p * probs.max(-1, keepdim=True).values, 0)
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > s.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0))
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.bfloat16}


class Int8Weight:
    """Weight-only int8: W ≈ scale[:, None] · Wq, one symmetric scale per output channel."""

    def __init__(self, w: torch.Tensor):
        scale = w.abs().amax(1).clamp(min=1e-8) / 127
        self.wq = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(torch.bfloat16)

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:  # x @ Int8Weight
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.wq, self.scale)
        return y.view(*x.shape[:-1], -1)


class Decoder:
    """The model's forward pass for inference only, with the weights laid out for decoding.

    Same math as model.Transformer (tests hold it to transformers' logits), but q/k/v and
    gate/up are fused into one matmul each, every matrix is stored transposed and contiguous
    (`x @ Wt`), and there are no nn.Module calls: at batch 1 the per-op overhead is the cost
    that is left once the weights stream at memory speed."""

    def __init__(self, model: Transformer, dtype: str = "fp32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.cfg, self.dtype = model.cfg, DTYPES[dtype]
        dt = self.dtype

        def fused(*linears) -> torch.Tensor | Int8Weight:
            w = torch.cat([lin.weight.detach().float() for lin in linears])
            return Int8Weight(w) if dtype == "int8" else w.t().contiguous().to(dt)

        def vec(norm) -> torch.Tensor:  # norms and the residual stream stay fp32: tiny, and
            return norm.weight.detach().float()  # bf16 elementwise ops are slow on this CPU

        self.layers = [
            (
                vec(b.input_layernorm),
                fused(b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj),
                fused(b.self_attn.o_proj),
                vec(b.post_attention_layernorm),
                fused(b.mlp.gate_proj, b.mlp.up_proj),
                fused(b.mlp.down_proj),
            )
            for b in model.model.layers
        ]
        self.embed = model.model.embed_tokens.weight.detach().to(dt)
        self.norm = vec(model.model.norm)
        self.head = fused(model.lm_head)
        self.cos, self.sin = rope_tables(self.cfg, self.cfg.max_position_embeddings)

    @torch.inference_mode()
    def __call__(self, idx, cache: KVCache | None = None, pad=None, last_only: bool = False):
        """Logits (B, T, V) for `idx` (B, T), or (B, 1, V) with last_only; see model.forward."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        self._grow_rope(start + T)
        cos, sin, mask = rope_and_mask(self.cos, self.sin, start, T, pad, idx.device)
        causal = mask is None and T > 1 and start == 0

        def kv(i, k, v):
            return cache.update(i, k, v) if cache is not None else (k, v)

        x = self._layers(idx, cos, sin, mask, causal, kv)
        if cache is not None:
            cache.pos += T
        return self._head(x[:, -1:] if last_only else x)

    @torch.inference_mode()
    def decode_rows(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache):
        """One decode step for rows 0..B-1 of `cache`, each at its own position: token b is
        written at pos[b] of row b and attends to that row's first pos[b] + 1 entries. This is
        what continuous batching needs: requests of different ages share one batched matmul.
        Returns logits (B, V)."""
        B = tokens.shape[0]
        L = int(pos.max()) + 1
        self._grow_rope(L)
        cos, sin = self.cos[pos][:, None, None], self.sin[pos][:, None, None]
        mask = (torch.arange(L)[None, :] <= pos[:, None])[:, None, None]  # (B, 1, 1, L)
        rows = torch.arange(B)

        def kv(i, k, v):  # scatter the new entry at each row's position, attend to the prefix
            cache.k[i][rows, :, pos] = k[:, :, 0]
            cache.v[i][rows, :, pos] = v[:, :, 0]
            return cache.k[i][:B, :, :L], cache.v[i][:B, :, :L]

        return self._head(self._layers(tokens.view(B, 1), cos, sin, mask, False, kv))[:, -1]

    def _grow_rope(self, n: int) -> None:
        if n > self.cos.shape[0]:
            self.cos, self.sin = rope_tables(self.cfg, n)

    def _layers(self, idx, cos, sin, mask, causal: bool, kv):
        c, dt = self.cfg, self.dtype
        B, T = idx.shape
        nh, nkv, hd, eps = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps
        x = F.embedding(idx, self.embed).float()
        for i, (n1, wqkv, wo, n2, wgu, wd) in enumerate(self.layers):
            h = F.rms_norm(x, (x.shape[-1],), n1, eps).to(dt)
            qkv = (h @ wqkv).view(B, T, nh + 2 * nkv, hd).transpose(1, 2)
            q, k, v = qkv.split([nh, nkv, nkv], dim=1)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k, v = kv(i, k, v)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=nh != nkv
            )
            x = x + (y.transpose(1, 2).reshape(B, T, nh * hd) @ wo).float()
            h = F.rms_norm(x, (x.shape[-1],), n2, eps).to(dt)
            gate, up = (h @ wgu).chunk(2, dim=-1)
            x = x + ((F.silu(gate) * up) @ wd).float()
        return x

    def _head(self, x):
        return (
            F.rms_norm(x, (x.shape[-1],), self.norm, self.cfg.rms_norm_eps).to(self.dtype)
            @ self.head
        )


@dataclass
class Completion:
    ids: list[int]
    text: str
    finish_reason: str  # "stop" (a stop token or string) or "length"


class Engine:
    """Generates from a model directory's model and tokenizer, one prompt or a batch."""

    def __init__(self, model: Transformer, tok, dtype: str = "fp32"):
        self.model, self.tok, self.dtype = Decoder(model, dtype), tok, dtype
        self.stop_ids = {tok.eos_id} - {None}  # more (e.g. <|end|>) per call site

    @torch.no_grad()
    def stream(
        self, prompts: list[list[int]], s: SamplingConfig
    ) -> Iterator[tuple[int, int, str, bool]]:
        """Yield (row, token id, new text, row finished by a stop) as rows produce tokens.

        Prompts of different lengths are left-padded; padding is masked out and each row's
        positions start at its first real token, so a row's tokens do not depend on the batch."""
        B, m = len(prompts), self.model
        lens = [len(p) for p in prompts]
        if min(lens) == 0:
            raise ValueError("every prompt needs at least one token (e.g. BOS)")
        T = max(lens)
        pad = torch.tensor([T - n for n in lens])
        x = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
        cache = KVCache(m.cfg, B, T + s.max_new_tokens, m.dtype)
        gen = torch.Generator().manual_seed(s.seed) if s.seed is not None else None
        seen = None
        if s.repetition_penalty != 1.0:
            seen = torch.zeros(B, m.cfg.vocab_size, dtype=torch.bool)
            for i, p in enumerate(prompts):
                seen[i, p] = True
        texts = [TextState(self.tok, s.stop) for _ in range(B)]
        done = [False] * B
        use_pad = pad if bool(pad.any()) else None
        logits = m(x, cache=cache, pad=use_pad, last_only=True)[:, -1]
        for _ in range(s.max_new_tokens):
            nxt = sample_next(logits, s, gen, seen)
            for i, t in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                piece, stopped = texts[i].push(t, t in self.stop_ids)
                yield i, t, piece, stopped
                done[i] = stopped
            if all(done):
                return
            if seen is not None:
                seen[torch.arange(B), nxt] = True
            logits = m(nxt.view(B, 1), cache=cache, pad=use_pad, last_only=True)[:, -1]

    def generate(self, prompts: list[list[int]], s: SamplingConfig) -> list[Completion]:
        ids: list[list[int]] = [[] for _ in prompts]
        texts = [""] * len(prompts)
        finish = ["length"] * len(prompts)
        for i, t, piece, stopped in self.stream(prompts, s):
            ids[i].append(t)
            texts[i] += piece
            if stopped:
                finish[i] = "stop"
        return [Completion(a, b, f) for a, b, f in zip(ids, texts, finish)]


class TextState:
    """One row's text: bytes to UTF-8 without splitting a character, and stop strings.

    Text that might be the start of a stop string is held back until it cannot be."""

    def __init__(self, tok, stop: list[str], hidden: frozenset[int] = frozenset()):
        self.tok, self.stop, self.hidden = tok, [x for x in stop if x], hidden
        self.pending, self.held, self.finished = b"", "", False

    def push(self, token: int, is_stop_token: bool) -> tuple[str, bool]:
        """(text safe to show now, whether the row is finished). Hidden tokens add no text."""
        if is_stop_token:
            return self.flush(), True
        if token in self.hidden:
            return "", False
        self.pending += self.tok.decode_bytes([token])
        try:
            self.held += self.pending.decode("utf-8")
            self.pending = b""
        except UnicodeDecodeError as e:
            if e.end < len(self.pending) or len(self.pending) - e.start >= 4:
                self.held += self.pending.decode("utf-8", errors="replace")
                self.pending = b""
        for st in self.stop:
            k = self.held.find(st)
            if k >= 0:
                out, self.held = self.held[:k], ""
                return out, True
        keep = max(
            (n for st in self.stop for n in range(1, len(st)) if self.held.endswith(st[:n])),
            default=0,
        )
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out, False

    def flush(self) -> str:
        out = self.held + self.pending.decode("utf-8", errors="replace")
        self.held, self.pending = "", b""
        return out


def assistant_turn(
    engine: Engine,
    messages: list[dict],
    s: SamplingConfig,
    tools: dict | None = None,
    max_calls: int = 4,
    on_message=None,
    on_text=None,
) -> list[dict]:
    """The assistant's reply to a conversation, running the tool calls it makes on the way.

    Generation stops at <|end|> (the turn is over) or <|/tool_call|> (a call is complete): the
    call is parsed and run, its result appended as a `tool` message, and generation goes on.
    A malformed call or a failing tool becomes an error message the model sees, never a crash.
    Returns the new messages (assistant, tool, ..., assistant); `on_message` sees each one,
    `on_text` the assistant's text as it streams (tool-call JSON excluded)."""
    from llmos.agent.tools import TOOLS, run_tool_call
    from llmos.tokenizer import render

    tools = TOOLS if tools is None else tools
    tok, sp = engine.tok, engine.tok.special_ids
    call_open, call_close = sp["<|tool_call|>"], sp["<|/tool_call|>"]
    saved = engine.stop_ids
    engine.stop_ids = saved | {sp["<|end|>"], call_close}
    new: list[dict] = []
    try:
        for n_calls in range(max_calls + 1):
            prompt, _ = render(tok, messages + new, add_generation_prompt=True)
            ids: list[int] = []
            for _, t, piece, _ in engine.stream([prompt], s):
                ids.append(t)
                if on_text and call_open not in ids and t not in sp.values():
                    on_text(piece)
            if not ids or ids[-1] != call_close or n_calls == max_calls:
                text = tok.decode(i for i in ids if i not in sp.values())
                new.append({"role": "assistant", "content": text})
                break
            k = ids.index(call_open) if call_open in ids else len(ids) - 1
            raw = tok.decode(ids[k + 1 : -1])
            call, result = run_tool_call(raw, tools)
            if call is None:
                name, args = "invalid", json.dumps(raw)
            else:
                name, args = str(call.get("name")), json.dumps(call.get("arguments", {}))
            content = tok.decode(i for i in ids[:k] if i not in sp.values())
            fn = {"name": name, "arguments": args}
            call_id = f"call_{len(new)}"
            new.append(
                {
                    "role": "assistant",
                    "content": content,
                    "tool_calls": [{"id": call_id, "type": "function", "function": fn}],
                }
            )
            new.append({"role": "tool", "tool_call_id": call_id, "content": result})
            if on_message:
                on_message(new[-2])
                on_message(new[-1])
    finally:
        engine.stop_ids = saved
    if on_message:
        on_message(new[-1])
    return new
