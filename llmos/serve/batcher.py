"""Continuous batching (Yu et al. 2022, "Orca"): many requests share one batched decode.

One worker thread owns the model and a KV cache with a row per running request. Each loop it
admits waiting requests (prefilling each into a free row), then runs one decode step for every
running row at once, each at its own position (`Decoder.decode_rows`). A request that finishes
or is cancelled (its client went away) frees its row before the next step, and the next waiting
request takes it. Every request samples with its own settings and its own seeded generator, so
what it generates does not depend on who else is in the batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from llmos.infer.engine import Engine, SamplingConfig, TextState, sample_next
from llmos.model import KVCache

log = logging.getLogger("llmos")


class Busy(Exception):
    """Too many requests running and waiting."""


@dataclass
class Request:
    """One generation. `emit(token, text, finish_reason)` is called on the worker thread for
    every token (finish_reason None until the last: "stop", "length" or "error")."""

    prompt: list[int]
    sampling: SamplingConfig
    emit: Callable[[int | None, str, str | None], None]
    stop_ids: frozenset[int] = frozenset()
    hidden_ids: frozenset[int] = frozenset()  # tokens that produce no text (special tokens)
    logit_bias: dict[int, float] = field(default_factory=dict)  # added to the logits
    deadline: float = math.inf  # time.monotonic() after which it ends with "length"
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True  # the worker frees the row before its next step


@dataclass
class _Row:
    req: Request
    pos: int  # where the next token's key/value goes
    last: int = 0  # the token to feed next
    n: int = 0  # tokens generated
    gen: torch.Generator | None = None
    seen: torch.Tensor | None = None
    text: TextState | None = None


class Inbox:
    """Events from the batcher's thread to the event loop. One decode step makes an event per
    running request; they are handed over in one loop wakeup, not one each (at 16 streams the
    wakeups alone cost more than the step)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock = loop, threading.Lock()
        self.pending: list = []

    def put(self, q: asyncio.Queue, event) -> None:
        with self.lock:
            self.pending.append((q, event))
            if len(self.pending) > 1:
                return  # a delivery is already scheduled
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.pending = self.pending, []
        for q, event in items:
            q.put_nowait(event)


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16, max_queue: int = 64, context: int = 0):
        """`context` caps each row's length (0: the model's context); the KV cache holds
        max_batch rows of it, allocated once."""
        self.engine, self.decoder = engine, engine.model
        cfg = self.decoder.cfg
        self.max_len = min(context or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.cache = KVCache(cfg, max_batch, self.max_len, self.decoder.dtype)
        self.rows: list[_Row | None] = [None] * max_batch
        self.max_queue = max_queue
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.lock = threading.Lock()
        self.closed = False
        self.generated = 0  # tokens sampled since start (/health reports it)
        self.in_flight = 0  # requests submitted and not yet finished, waiting or running
        self.thread = threading.Thread(target=self._run, name="llmos-batcher", daemon=True)
        self.thread.start()

    @property
    def tok(self):
        return self.engine.tok

    def session(self, prompt: list[int]) -> BatchedSession:
        """A growing sequence generated through the batcher: the agent loop's model on the
        server (the web chat's tool calls run there, sharing decode steps with the API)."""
        return BatchedSession(self, prompt)

    @property
    def running(self) -> int:
        return sum(r is not None for r in self.rows)

    def submit(self, req: Request) -> Request:
        if not req.prompt:
            raise ValueError("empty prompt")
        if len(req.prompt) >= self.max_len:
            raise ValueError(f"prompt of {len(req.prompt)} tokens; the context is {self.max_len}")
        with self.lock:
            if self.in_flight >= len(self.rows) + self.max_queue:
                raise Busy(f"{len(self.rows)} requests running and {self.max_queue} waiting")
            self.in_flight += 1
            self.waiting.put(req)
        return req

    def close(self) -> None:
        self.closed = True
        self.waiting.put(None)  # wake the worker
        self.thread.join(timeout=10)

    # -- the worker ---------------------------------------------------------------------------

    @torch.inference_mode()
    def _run(self) -> None:
        # The whole life of the server's model: admit, step, repeat. Only this thread touches
        # the model and the cache, so neither needs a lock; other threads talk to it through
        # the `waiting` queue (in) and each request's `emit` (out).
        while not self.closed:
            try:
                self._admit()
                self._step()
            except Exception as e:  # a bug must not take the server down: fail the running ones
                log.exception("batcher step failed")
                for b, row in enumerate(self.rows):
                    if row is not None:
                        row.req.emit(None, f"internal error: {e}", "error")
                        self._free(b)

    def _admit(self) -> None:
        """Prefill waiting requests into free rows; block only when nothing is running."""
        while None in self.rows:
            try:
                req = self.waiting.get(block=self.running == 0)
            except queue.Empty:
                return
            if req is None:
                continue
            if req.cancelled or time.monotonic() > req.deadline:
                if not req.cancelled:
                    req.emit(None, "", "length")  # its time ran out while it waited
                self._done()
                continue
            try:
                self._prefill(req)
            except Exception as e:  # this request's fault or not, it ends only this request
                log.exception("prefill failed")
                req.emit(None, f"internal error: {type(e).__name__}", "error")
                rows = [b for b, r in enumerate(self.rows) if r is not None and r.req is req]
                if rows:
                    self._free(rows[0])
                else:
                    self._done()

    def _prefill(self, req: Request) -> None:
        """Take a free row for `req`, prefill its prompt and sample its first token."""
        # Prefill between decode steps: the running rows wait for this one prompt (a long
        # prompt delays their next token by its prefill time), but the new request starts
        # without waiting for any of them to finish, which is what keeps time to first
        # token low under load (Orca's iteration-level scheduling).
        b = self.rows.index(None)
        s = req.sampling
        text = TextState(self.engine.tok, s.stop, req.hidden_ids)
        row = _Row(req, pos=len(req.prompt), text=text)
        # Per-row state that must not leak between requests: a seeded request gets its own
        # generator, and the repetition penalty its own record of the tokens seen.
        if s.seed is not None:
            row.gen = torch.Generator().manual_seed(s.seed % 2**64)
        if s.repetition_penalty != 1.0:
            row.seen = torch.zeros(1, self.decoder.cfg.vocab_size, dtype=torch.bool)
            row.seen[0, req.prompt] = True
        self.rows[b] = row
        # The row's slice of the shared cache is a view, so the prefill writes the prompt's
        # keys and values straight into row b; whatever the previous tenant left beyond
        # the prompt is never read (each row attends only up to its own position).
        x = torch.tensor([req.prompt])
        logits = self.decoder(x, cache=self.cache.row(b), last_only=True)[:, -1]
        self._advance([b], logits)

    def _step(self) -> None:
        """One decode step for every running row, each at its own position."""
        now = time.monotonic()
        for b, row in enumerate(self.rows):
            if row is not None and row.req.cancelled:
                self._free(b)
            elif row is not None and now > row.req.deadline:  # out of time: end it as if
                row.req.emit(None, row.text.flush(), "length")  # out of tokens
                self._free(b)
        live = [b for b, row in enumerate(self.rows) if row is not None]
        if not live:
            return
        tokens = np.array([self.rows[b].last for b in live])
        pos = np.array([self.rows[b].pos for b in live])
        logits = self.decoder.decode_rows(tokens, pos, self.cache, live)
        for b in live:
            self.rows[b].pos += 1
        self._advance(live, logits)

    def _free(self, b: int) -> None:
        self.rows[b] = None
        self._done()

    def _done(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int | None]:
        """Next tokens. Rows with the same settings and no generator of their own (no seed)
        sample in one call; a seeded row uses its own generator, so its draw does not depend
        on its neighbours."""
        # OpenAI's logit_bias is added before anything else, so it also shapes greedy picks.
        for k, row in enumerate(rows):
            if row.req.logit_bias:
                ids = list(row.req.logit_bias)
                logits[k, ids] += torch.tensor([row.req.logit_bias[i] for i in ids])
        # Grouping keeps the common case (many unseeded requests with default settings) at one
        # softmax and one multinomial per step instead of one per row.
        out = [0] * len(rows)
        groups: dict = {}
        for k, row in enumerate(rows):
            s = row.req.sampling
            shared = row.gen is None and row.seen is None
            key = (s.temperature, s.top_k, s.top_p, s.min_p) if shared else ("own", k)
            groups.setdefault(key, []).append(k)
        for ks in groups.values():
            row = rows[ks[0]]
            try:
                picked = sample_next(logits[ks], row.req.sampling, row.gen, row.seen).tolist()
            except Exception:  # rows whose settings fail the sampler end; the others go on
                log.exception("sampling failed")
                picked = [None] * len(ks)
            for k, t in zip(ks, picked):
                out[k] = t
        return out

    def _advance(self, live: list[int], logits: torch.Tensor) -> None:
        """Sample the next token of each live row (logits (len(live), V)), hand it to its
        request, and free the rows that are done."""
        rows = [self.rows[b] for b in live]
        for b, row, t in zip(live, rows, self._sample(rows, logits.float())):
            req, s = row.req, row.req.sampling
            if t is None:
                req.emit(None, "internal error: sampling failed", "error")
                self._free(b)
                continue
            if row.seen is not None:
                row.seen[0, t] = True
            row.n += 1
            self.generated += 1
            # The row's TextState turns the token into text the client may see now (no half
            # characters, no partial stop strings) and says whether a stop string completed.
            piece, stopped = row.text.push(t, t in req.stop_ids)
            finish = "stop" if stopped else None
            if finish is None and (row.n >= s.max_new_tokens or row.pos >= self.max_len):
                piece += row.text.flush()
                finish = "length"
            # emit runs on this thread: it must only hand the event over (a queue put or an
            # asyncio call_soon_threadsafe), never block, or every row waits for it.
            req.emit(t, piece, finish)
            if finish or req.cancelled:
                self._free(b)
            else:
                row.last = t


class BatchedSession:
    """engine.Session's interface over the batcher: each `stream` is one request whose prompt
    is the sequence so far. Unlike Session it prefills the whole sequence again after a tool
    call (the batcher frees a request's row when it finishes), but conversations still share
    decode steps with everything else the server runs."""

    def __init__(self, batcher: Batcher, prompt: list[int]):
        self.batcher, self.ids = batcher, list(prompt)

    def append(self, ids: list[int]) -> None:
        self.ids += ids

    def stream(self, s: SamplingConfig, stop_ids=None):
        """Yield (token id, new text, finished by a stop) as the batcher's worker emits them.
        Closing the generator early (the client went away) cancels the request."""
        events: queue.Queue = queue.Queue()
        hidden = frozenset(self.batcher.tok.special_ids.values())
        stop_ids = self.batcher.engine.stop_ids if stop_ids is None else frozenset(stop_ids)
        req = self.batcher.submit(
            Request(list(self.ids), s, lambda *ev: events.put(ev), stop_ids, hidden)
        )
        try:
            while True:
                token, text, finish = events.get()
                if finish == "error":
                    raise RuntimeError(text)
                self.ids.append(token)
                yield token, text, finish == "stop"
                if finish:
                    return
        finally:
            req.cancel()  # a no-op once finished; else the worker frees the row
