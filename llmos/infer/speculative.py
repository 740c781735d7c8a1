"""Speculative decoding: a cheap draft guesses k tokens, the target checks them all in one pass;
and `llmos sample`, which streams from the engine with or without it.

Batch-1 decoding is memory-bound: a forward pass over k + 1 tokens reads every weight once,
as one token does, so checking k guesses costs about one step. Leviathan et al. (2023) make it
exact: with draft distribution q and target distribution p at each position, accept the
draft's token x with probability min(1, p(x) / q(x)); at the first rejection, sample from the
residual max(0, p - q) (renormalised) and stop; if all k are accepted, sample one more token
from p. The tokens are then distributed exactly as the target's own samples (greedy: the
target's argmax, token for token), whatever the draft; a good draft only makes it faster.

Drafts:

- `ModelDraft`: a smaller model with the same tokenizer (the speedrun's base for its
  assistant, or a small model distilled from a bigger one), on its own KV cache.
- `PromptLookup` (Saxena 2023): no model at all. The last n tokens are looked up earlier in
  the context, and what followed them there is the guess: answers that quote their sources
  (retrieval, code edits, summaries) copy long runs. Its q is one-hot, so the rule becomes
  "accept with probability p(x)".

    >>> # spec = Speculative(engine, PromptLookup(), k=4)
    >>> # for token, text, stopped in spec.stream(prompt_ids, SamplingConfig(temperature=0)):
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from llmos.checkpoint import load_model
from llmos.common import LlmosError, arg
from llmos.infer.engine import (
    DTYPE_HELP,
    DTYPES,
    Engine,
    SamplingConfig,
    TextState,
    next_token_probs,
)
from llmos.model import KVCache
from llmos.tokenizer import Tokenizer


class SpeculativeError(LlmosError):
    """A draft that cannot serve this target (another vocabulary) or sampling it cannot do."""


def _dist(logits: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    p = next_token_probs(logits, s)
    return p / p.sum(-1, keepdim=True)


class PromptLookup:
    """Guesses by copying: the continuation of the latest earlier occurrence of the context's
    last `ngram` tokens (trying shorter n-grams down to 1), up to k tokens.

    >>> PromptLookup(ngram=2).propose([5, 6, 7, 8, 9, 5, 6], 3, None)[0]
    [7, 8, 9]
    """

    def __init__(self, ngram: int = 3):
        self.ngram = ngram

    def propose(self, ids: list[int], k: int, s) -> tuple[list[int], None]:
        for n in range(min(self.ngram, len(ids) - 1), 0, -1):
            tail = ids[-n:]
            for start in range(len(ids) - n - 1, -1, -1):  # the latest match first
                if ids[start : start + n] == tail:
                    return ids[start + n : start + n + k], None
        return [], None


class ModelDraft:
    """A small model proposing k tokens by sampling (q: its distributions, with the same
    sampling settings as the target's), on a KV cache kept in step with the accepted text."""

    def __init__(self, engine: Engine, capacity: int = 512):
        self.engine, self.fed = engine, []
        m = engine.model
        self.cache = KVCache(m.cfg, 1, capacity, m.dtype)
        self.gen: torch.Generator | None = None

    def propose(self, ids: list[int], k: int, s: SamplingConfig):
        m = self.engine.model
        # Keep what the draft's cache already holds of `ids`, feed the rest.
        same = 0
        while same < min(len(self.fed), len(ids) - 1) and self.fed[same] == ids[same]:
            same += 1
        self.cache.pos, self.fed = same, self.fed[:same]
        self.cache.grow(len(ids) + k + 1)
        logits = m(torch.tensor([ids[same:]]), cache=self.cache, last_only=True)[:, -1]
        self.fed = list(ids)
        out, qs = [], []
        for i in range(k):
            q = _dist(logits, s)
            greedy = s.temperature <= 0
            t = int(q.argmax(-1) if greedy else torch.multinomial(q, 1, generator=self.gen))
            out.append(t)
            qs.append(q[0])
            if i < k - 1:
                logits = m(torch.tensor([[t]]), cache=self.cache, last_only=True)[:, -1]
                self.fed.append(t)
        return out, torch.stack(qs)


class Speculative:
    """Generation from `engine` (the target) sped up by `draft`, k guesses per target pass.
    Counts what it did: `drafted`, `accepted`, `passes` (target forward passes)."""

    def __init__(self, engine: Engine, draft, k: int = 4):
        if isinstance(draft, ModelDraft):
            dv, tv = draft.engine.model.cfg.vocab_size, engine.model.cfg.vocab_size
            probe = "Hello, world"
            if dv != tv or draft.engine.tok.encode(probe) != engine.tok.encode(probe):
                raise SpeculativeError("the draft model must share the target's tokenizer")
        self.engine, self.draft, self.k = engine, draft, k
        self.drafted = self.accepted = self.passes = 0

    @torch.no_grad()
    def stream(
        self,
        prompt: list[int],
        s: SamplingConfig,
        stop_ids: frozenset[int] | set[int] | None = None,
        hidden: frozenset[int] = frozenset(),
        bias: dict[int, float] | None = None,
    ) -> Iterator[tuple[int, str, bool]]:
        """Yield (token id, new text, finished by a stop), as Engine.stream does for one row
        (`hidden`: tokens that add no text, as the server's special tokens; `bias`: OpenAI's
        logit_bias, added to the target's logits, so a banned token is never accepted)."""
        if s.repetition_penalty != 1.0:
            raise SpeculativeError("speculative decoding does not do repetition_penalty")
        if not prompt:
            raise ValueError("the prompt needs at least one token (e.g. BOS)")
        target = self.engine.model
        stop_ids = self.engine.stop_ids if stop_ids is None else stop_ids
        gen = torch.Generator().manual_seed(s.seed) if s.seed is not None else None
        if isinstance(self.draft, ModelDraft):
            self.draft.gen = gen
        text = TextState(self.engine.tok, s.stop, hidden)
        # The cache holds every token but the last: each pass runs [last, guesses...], so its
        # first logits judge the first guess and no logits are ever computed twice.
        cache = KVCache(target.cfg, 1, len(prompt) + s.max_new_tokens + self.k + 2, target.dtype)
        if len(prompt) > 1:
            self.engine._prefill(torch.tensor([prompt[:-1]]), cache)
        ids, made = list(prompt), 0
        while made < s.max_new_tokens:
            k = min(self.k, s.max_new_tokens - made - 1)
            guesses, q = self.draft.propose(ids, k, s) if k > 0 else ([], None)
            base = cache.pos
            logits = target(torch.tensor([[ids[-1], *guesses]]), cache=cache)[0]
            if bias:  # not in place: the decoder's output is an inference-mode tensor
                logits = logits.index_add(1, torch.tensor(list(bias)), torch.tensor(
                    [list(bias.values())] * logits.shape[0], dtype=logits.dtype))  # fmt: skip
            self.passes += 1
            p = _dist(logits, s)  # (len(guesses) + 1, V): p[i] judges guess i
            new = []
            for i, x in enumerate(guesses):
                qx = float(q[i, x]) if q is not None else 1.0
                if s.temperature <= 0:
                    ok = int(p[i].argmax()) == x
                else:
                    ok = float(torch.rand(1, generator=gen)) < min(1.0, float(p[i, x]) / qx)
                if not ok:
                    # The residual max(0, p - q): what p has that the draft over-proposed.
                    if q is not None:
                        r = (p[i] - q[i]).clamp(min=0)
                    else:
                        r = p[i].clone()
                        r[x] = 0
                    new.append(self._pick(r, s, gen))
                    break
                new.append(x)
            else:
                new.append(self._pick(p[len(guesses)], s, gen))  # all accepted: one for free
            self.drafted += len(guesses)
            self.accepted += len(new) - 1
            cache.pos = base + len(new)  # [last, the accepted guesses]; the rest is overwritten
            for t in new:
                ids.append(t)
                made += 1
                piece, stopped = text.push(t, t in stop_ids)
                yield t, piece, stopped
                if stopped or made >= s.max_new_tokens:
                    return

    @staticmethod
    def _pick(r: torch.Tensor, s: SamplingConfig, gen) -> int:
        if s.temperature <= 0 or float(r.sum()) <= 0:
            return int(r.argmax())
        return int(torch.multinomial(r / r.sum(), 1, generator=gen))

    @property
    def acceptance(self) -> float:
        """The fraction of drafted tokens the target accepted."""
        return self.accepted / self.drafted if self.drafted else 0.0


def make_speculative(engine: Engine, draft_dir: str, prompt_lookup: bool, k: int, dtype: str):
    """Speculative decoding for `engine` as the CLI and server ask for it; None if neither a
    draft model nor prompt lookup was asked for."""
    if draft_dir and prompt_lookup:
        raise SpeculativeError("give a draft model or --prompt-lookup, not both")
    if prompt_lookup:
        return Speculative(engine, PromptLookup(), k)
    if draft_dir:
        draft = Engine(load_model(draft_dir), Tokenizer.load(draft_dir), dtype)
        return Speculative(engine, ModelDraft(draft), k)
    return None


# -- `llmos sample` -------------------------------------------------------------------------


@dataclass
class SampleConfig(SamplingConfig):
    model_dir: str = arg("", "the model directory to sample from", positional=True)
    prompt: str = arg("", "the text to continue (after BOS)")
    dtype: str = arg("auto", DTYPE_HELP, choices=["auto", *DTYPES])
    max_new_tokens: int = 200
    draft: str = arg("", "speculative decoding: a smaller model directory, same tokenizer")
    prompt_lookup: bool = arg(False, "speculative decoding: guess by copying from the prompt")
    speculate: int = arg(
        4, "tokens guessed per target pass (with --draft or --prompt-lookup)", lo=1
    )


def sample(c: SampleConfig) -> None:
    """Stream a continuation of c.prompt to stdout."""
    tok = Tokenizer.load(c.model_dir)
    engine = Engine(load_model(c.model_dir), tok, c.dtype)
    spec = make_speculative(engine, c.draft, c.prompt_lookup, c.speculate, c.dtype)
    prompt = tok.encode_prompt(c.prompt)
    rows = (
        spec.stream(prompt, c) if spec else ((t, p, s) for _, t, p, s in engine.stream([prompt], c))
    )
    sys.stdout.write(c.prompt)
    for _, piece, _ in rows:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if spec:
        print(f"[speculative: {spec.acceptance:.0%} of {spec.drafted} guesses accepted, "
              f"{spec.passes} target passes]", file=sys.stderr)  # fmt: skip
