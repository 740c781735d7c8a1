"""The inference engine: prefill then decode, batched, with a preallocated KV cache.

Batch-1 decode is memory-bound: each token reads every weight once, so tokens/s is bandwidth
over weight bytes. The engine therefore keeps each weight matrix pre-transposed and contiguous
(`x @ Wt` streams memory in order, several times faster than `F.linear` for bf16 here), in
fp32, bf16, or int8 with one scale per output channel (weight-only quantization as in
gpt-fast; activations stay bf16).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmos.common import arg, device, log, pick_dtype
from llmos.infer.native import NativeDecoder, native_error
from llmos.model import KVCache, Transformer, apply_rope, rope_and_mask, rope_tables


@dataclass
class SamplingConfig:
    temperature: float = arg(0.8, "divide the logits by this; 0 is greedy", lo=0, hi=100)
    top_k: int = arg(0, "sample from the k most likely tokens only; 0: off", lo=0)
    top_p: float = arg(
        1.0,
        "nucleus sampling (Holtzman et al. 2019): the smallest set of "
        "tokens whose probability reaches top_p; 1: off",
        lo=0,
        hi=1,
    )
    min_p: float = arg(0.0, "drop tokens below min_p times the top probability; 0: off", lo=0, hi=1)
    repetition_penalty: float = arg(
        1.0, "CTRL's penalty (Keskar et al. 2019) on tokens already seen; 1: off", lo=0.01, hi=100
    )
    seed: int | None = arg(None, "seed of the sampler; none: a different draw every time")
    max_new_tokens: int = arg(256, "tokens to generate at most", lo=1)
    stop: list[str] = arg([], "a stop string, not included in the text (repeatable)")


def sample_next(
    logits: torch.Tensor,
    s: SamplingConfig,
    gen: torch.Generator | None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V); `seen` (B, V) marks used tokens."""
    if s.temperature <= 0:
        return penalize(logits.float(), s, seen).argmax(-1)
    return torch.multinomial(next_token_probs(logits, s, seen), 1, generator=gen).squeeze(-1)


def penalize(logits: torch.Tensor, s: SamplingConfig, seen: torch.Tensor | None) -> torch.Tensor:
    if s.repetition_penalty == 1.0 or seen is None:
        return logits
    penalized = torch.where(
        logits > 0, logits / s.repetition_penalty, logits * s.repetition_penalty
    )
    return torch.where(seen, penalized, logits)


def next_token_probs(
    logits: torch.Tensor, s: SamplingConfig, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """The weights (B, V) sampling draws from, not yet summing to 1 after top-p or min-p:
    temperature, top-k, top-p and min-p applied (speculative decoding needs the whole
    distribution, to accept or reject a draft's token)."""
    logits = penalize(logits.float(), s, seen)
    if s.temperature <= 0:  # greedy: all the mass on the argmax
        return F.one_hot(logits.argmax(-1), logits.size(-1)).float()
    # Subtract the max first: then the top logit is 0 and the rest are <= 0 at any temperature,
    # so a tiny temperature gives -inf (never sampled) instead of inf - inf = NaN.
    logits = (logits - logits.max(-1, keepdim=True).values) / s.temperature
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
    return probs


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.bfloat16}
DTYPE_HELP = (
    "weights in the engine: auto (bf16 where the hardware computes in it, else fp32), fp32, "
    "bf16, or int8 (8-bit weights in blocks of 32, as llama.cpp's Q8_0)"
)


def make_decoder(model: Transformer, dtype: str = "auto") -> Decoder | NativeDecoder:
    """The fastest decoder for this model and machine: on the CPU the native one (native.c,
    one C call per step) when it builds, the torch Decoder otherwise (a GPU, no compiler)."""
    dtype = pick_dtype(dtype, "decode")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    if device().type == "cpu" and native_error() is None:
        try:
            return NativeDecoder(model, dtype)
        except ValueError as e:  # a shape native.c does not handle
            log.warning("native decode: %s; using torch", e)
    return Decoder(model, dtype)


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
        self.rope = rope_tables(self.cfg, self.cfg.max_position_embeddings)

    @torch.inference_mode()
    def __call__(self, idx, cache: KVCache | None = None, pad=None, last_only: bool = False):
        """Logits (B, T, V) for `idx` (B, T), or (B, 1, V) with last_only; see model.forward."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        cos, sin, mask = rope_and_mask(*self._rope(start + T), start, T, pad, idx.device)
        causal = mask is None and T > 1 and start == 0

        def kv(i, k, v):
            return cache.update(i, k, v) if cache is not None else (k, v)

        x = self._layers(idx, cos, sin, mask, causal, kv)
        if cache is not None:
            cache.pos += T
        return self._head(x[:, -1:] if last_only else x)

    @torch.inference_mode()
    def decode_rows(self, tokens, pos, cache: KVCache, rows) -> torch.Tensor:
        """One decode step for some rows of `cache`, each at its own position: token i is
        written at pos[i] of row rows[i] and attends to that row's first pos[i] + 1 entries.
        This is what continuous batching needs: requests of different ages share one batched
        matmul. Returns logits (len(rows), V).

        Rows 0..max(rows) all run, the idle ones among them with token 0 at position 0 (a key
        nobody reads): a gather of just the given rows would copy the cache every step, while
        an idle row costs only its share of one matmul."""
        rows = torch.as_tensor(rows)
        B = int(rows.max()) + 1
        tok, at = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
        tok[rows], at[rows] = torch.as_tensor(tokens, dtype=torch.long), torch.as_tensor(pos)
        L = int(at.max()) + 1
        cos, sin = (t[at][:, None, None] for t in self._rope(L))
        mask = (torch.arange(L)[None, :] <= at[:, None])[:, None, None]  # (B, 1, 1, L)
        every = torch.arange(B)

        def kv(i, k, v):  # scatter the new entry at each row's position, attend to the prefix
            cache.k[i][every, :, at] = k[:, :, 0]
            cache.v[i][every, :, at] = v[:, :, 0]
            return cache.k[i][:B, :, :L], cache.v[i][:B, :, :L]

        return self._head(self._layers(tok.view(B, 1), cos, sin, mask, False, kv))[rows, -1]

    def _rope(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables for at least n positions. Replaced as one tuple, never mutated, so two
        threads decoding at once always see a matching cos and sin."""
        if n > self.rope[0].shape[0]:
            self.rope = rope_tables(self.cfg, max(n, 2 * self.rope[0].shape[0]))
        return self.rope

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
    """Generates from a model and its tokenizer: token ids in, token ids (and their text) out.

    Stateless between calls (each call owns its KV cache), so two threads may call it at once.
    Stop tokens are per call: `stop_ids=None` means the tokenizer's EOS (`self.stop_ids`); a
    chat passes <|end|> and <|/tool_call|> too."""

    def __init__(self, model: Transformer, tok, dtype: str = "auto"):
        self.model, self.tok = make_decoder(model, dtype), tok
        self.stop_ids = frozenset({tok.eos_id} - {None})
        self.prefilled = 0  # prompt tokens run through prefill, ever (tests count them)
        self._lock = threading.Lock()

    def _prefill(self, x: torch.Tensor, cache: KVCache, pad=None) -> torch.Tensor:
        """Run tokens x (B, T) after what `cache` holds; the next-token logits (B, V)."""
        with self._lock:
            self.prefilled += x.numel() - (int(pad.sum()) if pad is not None else 0)
        return self.model(x, cache=cache, pad=pad, last_only=True)[:, -1]

    @torch.no_grad()
    def stream(
        self,
        prompts: list[list[int]],
        s: SamplingConfig,
        stop_ids: frozenset[int] | set[int] | None = None,
        n: int = 1,
    ) -> Iterator[tuple[int, int, str, bool]]:
        """Yield (row, token id, new text, row finished by a stop) as rows produce tokens.

        Each prompt is prefilled once and its KV cache forked into `n` rows (row i samples
        for prompt i // n): best-of-N and RL sample groups share one prefill. Prompts of
        different lengths are left-padded; padding is masked out and each row's positions
        start at its first real token, so a row's tokens do not depend on the batch."""
        m = self.model
        lens = [len(p) for p in prompts]
        if not prompts or min(lens) == 0:
            raise ValueError("every prompt needs at least one token (e.g. BOS)")
        T = max(lens)
        pad = torch.tensor([T - k for k in lens])
        x = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
        cache = KVCache(m.cfg, len(prompts), T + s.max_new_tokens, m.dtype)
        use_pad = pad if bool(pad.any()) else None
        logits = self._prefill(x, cache, use_pad)
        if n > 1:  # fork: every row's cache, padding and logits repeated n times
            cache.fork(n)
            logits = logits.repeat_interleave(n, 0)
            use_pad = use_pad.repeat_interleave(n, 0) if use_pad is not None else None
            prompts = [p for p in prompts for _ in range(n)]
        yield from self._decode(prompts, logits, cache, use_pad, s, stop_ids)

    def _decode(self, prompts, logits, cache, pad, s: SamplingConfig, stop_ids):
        """The sampling loop shared by `stream` and `Session`: sample a token for every row,
        hand it out, feed it back. On exit the cache holds everything but the last token
        sampled for each row (a Session feeds that one first if the sequence goes on)."""
        B = len(prompts)
        stop_ids = self.stop_ids if stop_ids is None else stop_ids
        gen = torch.Generator().manual_seed(s.seed) if s.seed is not None else None
        seen = None
        if s.repetition_penalty != 1.0:
            seen = torch.zeros(B, self.model.cfg.vocab_size, dtype=torch.bool)
            for i, p in enumerate(prompts):
                seen[i, p] = True
        texts = [TextState(self.tok, s.stop) for _ in range(B)]
        done = [False] * B
        for k in range(s.max_new_tokens):
            nxt = sample_next(logits, s, gen, seen)
            for i, t in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                piece, stopped = texts[i].push(t, t in stop_ids)
                yield i, t, piece, stopped
                done[i] = stopped
            if all(done) or k == s.max_new_tokens - 1:
                return
            if seen is not None:
                seen[torch.arange(B), nxt] = True
            # Finished rows are fed too (their tokens are never shown): one batched step for
            # all rows is cheaper than compacting the batch.
            logits = self.model(nxt.view(B, 1), cache=cache, pad=pad, last_only=True)[:, -1]

    def session(self, prompt: list[int]) -> Session:
        """A growing sequence starting with `prompt` (see Session): the agent loop's model."""
        return Session(self, prompt)

    def generate(
        self,
        prompts: list[list[int]],
        s: SamplingConfig,
        stop_ids: frozenset[int] | set[int] | None = None,
        n: int = 1,
    ) -> list[Completion]:
        """Completions of every prompt (n per prompt, row i for prompt i // n)."""
        ids: list[list[int]] = [[] for _ in range(len(prompts) * n)]
        texts = [""] * len(ids)
        finish = ["length"] * len(ids)
        for i, t, piece, stopped in self.stream(prompts, s, stop_ids, n):
            ids[i].append(t)
            texts[i] += piece
            if stopped:
                finish[i] = "stop"
        return [Completion(a, b, f) for a, b, f in zip(ids, texts, finish)]


class Session:
    """One token sequence that grows: prefill a prompt, generate, append more tokens (a tool's
    result), generate again, on one KV cache. Appending runs only the new tokens through the
    model; re-rendering the conversation would prefill all of it again at every tool call.

    >>> # s = Session(engine, prompt); for t, piece, stop in s.stream(cfg, stops): ...
    >>> # s.append(tool_result_ids); for t, piece, stop in s.stream(cfg, stops): ...
    """

    def __init__(self, engine: Engine, prompt: list[int], capacity: int = 256):
        if not prompt:
            raise ValueError("a session starts with at least one token (e.g. BOS)")
        m = engine.model
        self.engine, self.ids, self.pending = engine, [], []
        self.cache = KVCache(m.cfg, 1, max(capacity, len(prompt) + 1), m.dtype)
        self.logits: torch.Tensor | None = None
        self.append(prompt)

    def append(self, ids: list[int]) -> None:
        """Feed tokens after the sequence so far (after the last generated token, which is
        pending: sampled and handed out, but not yet run through the model)."""
        new = self.pending + list(ids)
        if not new:
            return
        self.cache.grow(len(self.ids) + len(new) + 1)
        self.logits = self.engine._prefill(torch.tensor([new]), self.cache)
        self.ids += new
        self.pending = []

    @torch.no_grad()
    def stream(
        self, s: SamplingConfig, stop_ids: frozenset[int] | set[int] | None = None
    ) -> Iterator[tuple[int, str, bool]]:
        """Yield (token id, new text, finished by a stop) until a stop or s.max_new_tokens."""
        self.append([])  # a token left pending by the last stream goes in first
        self.cache.grow(len(self.ids) + s.max_new_tokens + 1)
        for _, t, piece, stopped in self.engine._decode(
            [self.ids], self.logits, self.cache, None, s, stop_ids
        ):
            # Every token but the last has been fed back by _decode; the last one is pending.
            if self.pending:
                self.ids += self.pending
            self.pending = [t]
            yield t, piece, stopped


class TextState:
    """One row's text as tokens arrive: bytes to UTF-8 without splitting a character, and stop
    strings cut out.

    A token is a run of bytes, and one character may span two tokens (byte-level BPE splits
    emoji and CJK), so undecodable bytes wait in `pending` until the character completes (or
    can no longer complete: then they show as U+FFFD). Text that might be the start of a stop
    string waits in `held` until it either completes the stop string (the row ends and the
    stop string is never shown) or cannot (it is shown). So a client never sees half a
    character or the beginning of a stop string it asked to be cut."""

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
            # Invalid in the middle, or 4+ bytes without completing: no character will come.
            if e.end < len(self.pending) or len(self.pending) - e.start >= 4:
                self.held += self.pending.decode("utf-8", errors="replace")
                self.pending = b""
        for st in self.stop:
            k = self.held.find(st)
            if k >= 0:
                out, self.held = self.held[:k], ""
                return out, True
        # Hold back the longest tail that is a prefix of some stop string.
        keep = max(
            (
                n
                for st in self.stop
                for n in range(1, min(len(st), len(self.held) + 1))
                if self.held.endswith(st[:n])
            ),
            default=0,
        )
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out, False

    def flush(self) -> str:
        out = self.held + self.pending.decode("utf-8", errors="replace")
        self.held, self.pending = "", b""
        return out
