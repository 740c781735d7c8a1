"""`llmos serve`: an OpenAI-compatible API and a web chat for a model directory.

Routes: GET /v1/models, POST /v1/chat/completions and /v1/completions (streaming over SSE or
not), GET /health, the web chat at / with its conversations under /api/conversations.
Profiles ("GPTs", agent/profiles.py) are models too: `/v1/models` lists each, and a request for
one gets its instructions (a system message before the request's own) and its sampling
defaults (where the request sets none). The API never runs tools: it returns the calls, and
the client (its user) decides whether to run them, side effects included. Every
error has OpenAI's shape, {"error": {"message", "type", "param", "code"}}, so clients report it
as they would OpenAI's (serve/errors.py). Generation goes through the continuous batcher
(serve/batcher.py); OpenAI's request and response shapes are in serve/openai_shapes.py, the
web chat's routes in serve/web.py and the labeling page's in serve/label.py.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from llmos import tasks
from llmos.agent.browser import Site
from llmos.agent.profiles import NAME as PROFILE_NAME
from llmos.agent.profiles import Profile, ProfileError, default_dir, list_profiles, load_profile
from llmos.agent.tools import ToolError, pick_tools
from llmos.checkpoint import load_model
from llmos.common import arg, log
from llmos.data.store import Store, default_path
from llmos.infer.engine import DTYPE_HELP, DTYPES, Engine, SamplingConfig
from llmos.infer.speculative import make_speculative
from llmos.serve.batcher import Batcher, Busy, Inbox
from llmos.serve.batcher import Request as Generation
from llmos.serve.errors import APIError, BearerAuth, add_error_handlers, read_body
from llmos.serve.label import add_labeling
from llmos.serve.openai_shapes import (
    Body,
    ChatBody,
    ChoiceState,
    CompletionBody,
    chat_prompt,
    sse,
    usage_of,
    with_profile,
)
from llmos.serve.web import add_web_chat
from llmos.tokenizer import Tokenizer


@dataclass
class ServeConfig:
    model_dir: str = arg("", "the model directory to serve", positional=True)
    host: str = arg("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = arg(8000, "port to listen on", lo=0, hi=65535)
    api_key: str = arg("", 'when set (or LLMOS_API_KEY), /v1 and /api need "Bearer KEY"')
    dtype: str = arg("auto", DTYPE_HELP, choices=["auto", *DTYPES])
    max_batch: int = arg(16, "requests decoded together (KV-cache rows)", lo=1)
    context: int = arg(2048, "tokens per request, prompt included (0: the model's context)", lo=0)
    max_queue: int = arg(64, "requests waiting beyond max-batch; more get 429", lo=0)
    max_tokens: int = arg(2048, "the largest max_tokens a request may ask for", lo=1)
    default_max_tokens: int = arg(512, "max_tokens when a request gives none", lo=1)
    max_n: int = arg(8, "the largest n (choices per request)", lo=1)
    max_prompt_tokens: int = arg(0, "the longest prompt; 0: the context minus one", lo=0)
    db: str = arg("", "the web chat's SQLite file; empty: chats.sqlite in the llmos cache")
    tools: str = arg(
        "calculator",
        "tools the web chat's assistant may call, run on the server: calculator, python "
        "(sandboxed; its plots show in the chat), search and open (with --web)",
    )
    web: str = arg("", "a directory of pages served on loopback for the search and open tools")
    label_prompts: str = arg(
        "hallucination:1,knowledge:1",
        "the labeling page's (/label) queue: tasks' questions and JSONL files of prompts, "
        "comma-separated name[:weight] (50 questions a unit)",
    )
    label_endpoints: str = arg(
        "",
        "other models whose answers join the labeling page's candidates: OpenAI-compatible "
        "servers, comma-separated URL[#MODEL] (API key: OPENAI_API_KEY, kept on this server)",
    )
    request_timeout: float = arg(
        600.0,
        "seconds a request may take, waiting included; then it ends as if out of tokens",
        lo=0.001,
    )
    profiles: str = arg("", "the profiles directory (each NAME.toml is a model); empty: llmos's")
    draft: str = arg("", "speculative decoding of single requests: a smaller model, same tokenizer")
    prompt_lookup: bool = arg(False, "speculative decoding of single requests by prompt lookup")
    speculate: int = arg(4, "tokens guessed per target pass when speculating", lo=1)


MAX_STOP_CHARS = 256

# -- the model -------------------------------------------------------------------------------


class Served:
    """A model directory being served: tokenizer, engine, batcher and the request limits."""

    def __init__(self, model_dir: str | Path, c: ServeConfig):
        self.dir, self.c = Path(model_dir), c
        self.name = self.dir.resolve().name
        self.tok = Tokenizer.load(self.dir)
        self.engine = Engine(load_model(self.dir), self.tok, c.dtype)
        self.batcher = Batcher(self.engine, c.max_batch, c.max_queue, c.context)
        # Speculative decoding serves one request at a time (its lock): it cuts one user's
        # latency; the batcher serves many at once.
        self.spec = make_speculative(self.engine, c.draft, c.prompt_lookup, c.speculate, c.dtype)
        self.spec_lock = threading.Lock()
        self.profiles_dir = Path(c.profiles) if c.profiles else default_dir()
        self.context = self.batcher.max_len
        self.max_prompt = c.max_prompt_tokens or self.context - 1
        self.inbox: Inbox | None = None
        sp = self.tok.special_ids
        self.hidden = frozenset(sp.values())
        self.stop_ids = frozenset(self.engine.stop_ids)
        self.call_open = self.call_close = None
        if self.tok.llmos_format:
            self.call_open, self.call_close = sp["<|tool_call|>"], sp["<|/tool_call|>"]
            self.stop_ids |= {sp["<|end|>"], self.call_close}

    def profile(self, name: str) -> Profile | None:
        """The profile of that name, read afresh (the web UI may have just edited it)."""
        if not PROFILE_NAME.fullmatch(name) or not (self.profiles_dir / f"{name}.toml").exists():
            return None
        try:
            return load_profile(name, self.profiles_dir)
        except ProfileError as e:  # a file the owner broke: say which, and serve the rest
            raise APIError(400, str(e), param="model") from None

    def check(self, body: Body) -> Profile | None:
        """Refuse an unknown model or too large an n; the profile asked for, if any."""
        profile = None if body.model in (self.name, str(self.dir)) else self.profile(body.model)
        if body.model not in (self.name, str(self.dir)) and not profile:
            raise APIError(
                404,
                f"The model '{body.model}' does not exist; this server has '{self.name}' "
                "and its profiles (GET /v1/models lists them).",
                param="model",
                code="model_not_found",
            )
        if body.n > self.c.max_n:
            raise APIError(400, f"n is {body.n}; at most {self.c.max_n} here.", param="n")
        return profile

    def sampling(self, body: Body, prompt_len: int, max_tokens: int | None) -> SamplingConfig:
        if prompt_len > self.max_prompt:
            raise APIError(
                400,
                f"This model's maximum context length is {self.context} tokens and prompts may "
                f"use {self.max_prompt}. However, your prompt resulted in {prompt_len} tokens.",
                param="messages" if isinstance(body, ChatBody) else "prompt",
                code="context_length_exceeded",
            )
        if max_tokens is not None and max_tokens > self.c.max_tokens:
            raise APIError(
                400,
                f"max_tokens is {max_tokens}; at most {self.c.max_tokens} here.",
                param="max_tokens",
            )
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4:
            raise APIError(400, "At most 4 stop sequences.", param="stop")
        if any(len(x) > MAX_STOP_CHARS for x in stop):
            # Each token checks every suffix of the held-back text against every stop string:
            # the cost grows with their length, so it is bounded for everyone's sake.
            raise APIError(
                400, f"Stop sequences are at most {MAX_STOP_CHARS} characters.", param="stop"
            )
        return SamplingConfig(
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            max_new_tokens=min(max_tokens or self.c.default_max_tokens, self.context - prompt_len),
            stop=stop,
        )

    def logit_bias(self, body: Body) -> dict[int, float]:
        """OpenAI's logit_bias: token id -> a bias in [-100, 100] added to its logit."""
        out = {}
        for k, v in (body.logit_bias or {}).items():
            ok = re.fullmatch(r"[0-9]{1,9}", k) and int(k) < self.tok.vocab_size
            if not ok or not -100 <= v <= 100:
                raise APIError(
                    400,
                    f"logit_bias: {k!r}: {v} is not a token id with a bias in [-100, 100]",
                    param="logit_bias",
                )
            out[int(k)] = float(v)
        return out

    def submit(self, prompts: list[list[int]], s: SamplingConfig, n: int, bias: dict):
        """Start n generations per prompt; events (choice index, token, text, finish) arrive
        on the returned asyncio queue. Returns (queue, generations)."""
        if self.inbox is None:
            self.inbox = Inbox(asyncio.get_running_loop())
        inbox, q = self.inbox, asyncio.Queue()
        deadline = time.monotonic() + self.c.request_timeout
        if self.spec and n == 1 and len(prompts) == 1:
            emit = lambda *ev: inbox.put(q, (0, *ev))  # noqa: E731
            return q, [self._speculate(prompts[0], s, emit, deadline, bias)]
        gens: list[Generation] = []
        try:
            for p_i, prompt in enumerate(prompts):
                for j in range(n):
                    i = p_i * n + j
                    # n choices with one seed still differ: choice j draws with seed + j
                    si = replace(s, seed=None if s.seed is None else s.seed + j)

                    def emit(t, text, finish, i=i):
                        inbox.put(q, (i, t, text, finish))

                    g = Generation(prompt, si, emit, self.stop_ids, self.hidden, bias, deadline)
                    gens.append(self.batcher.submit(g))
        except Busy as e:
            for g in gens:
                g.cancel()
            raise APIError(
                429, f"The server is busy ({e}); retry shortly.", code="rate_limit_exceeded"
            ) from None
        return q, gens

    def _speculate(self, prompt: list[int], s: SamplingConfig, emit, deadline: float, bias):
        """One generation by speculative decoding, on a thread; emits as the batcher does."""
        g = Generation(prompt, s, emit, self.stop_ids, self.hidden, {}, deadline)

        def work() -> None:
            # As the batcher: each token is one event, the last carries the finish reason.
            n = 0
            try:
                with self.spec_lock:
                    stream = self.spec.stream(prompt, s, self.stop_ids, self.hidden, bias)
                    for t, text, stopped in stream:
                        if g.cancelled:
                            return
                        n += 1
                        late = time.monotonic() > deadline
                        finish = "stop" if stopped else None
                        if not stopped and (n >= s.max_new_tokens or late):
                            finish = "length"
                        emit(t, text, finish)
                        if finish:
                            return
            except Exception as e:  # the request ends with an error; the server goes on
                log.warning("speculative decoding failed: %s", e)
                emit(None, "internal error: speculative decoding failed", "error")
                return
            emit(None, "", "length")

        threading.Thread(target=work, name="llmos-speculative", daemon=True).start()
        return g


async def _events(request: Request, q: asyncio.Queue, gens: list[Generation]):
    """Events until every generation has finished; cancels them all if the client leaves."""
    left, checked = len(gens), time.monotonic()
    try:
        while left:
            try:
                ev = await asyncio.wait_for(q.get(), timeout=1.0)
            except asyncio.TimeoutError:
                ev = None
            # A client that hung up is noticed within a second whether or not tokens flow
            # (a non-streaming request has no write to fail on).
            if time.monotonic() - checked > 1.0 or ev is None:
                checked = time.monotonic()
                if await request.is_disconnected():
                    return
            if ev is None:
                continue
            if ev[3] is not None:
                left -= 1
            yield ev
    finally:
        for g in gens:
            g.cancel()


# -- the app ---------------------------------------------------------------------------------


def create_app(model_dir: str | Path, c: ServeConfig | None = None) -> FastAPI:
    c = c or ServeConfig()
    served = Served(model_dir, c)
    api_key = c.api_key or os.environ.get("LLMOS_API_KEY", "")
    if not c.db:
        c.db = str(default_path())
    store = Store(c.db)
    site = Site(c.web) if c.web else None
    try:
        tools = pick_tools(c.tools, site)
    except ToolError as e:
        raise ToolError(f"--tools: {e}") from None

    @asynccontextmanager
    async def lifespan(_):
        yield
        served.batcher.close()
        if site:
            site.close()

    app = FastAPI(title="llmos", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.served = served
    add_error_handlers(app)

    if api_key:
        app.add_middleware(BearerAuth, key=api_key)

    @app.get("/health")
    async def health():
        b = served.batcher
        return {
            "status": "ok",
            "model": served.name,
            "running": b.running,
            "in_flight": b.in_flight,  # running + waiting; 0 when idle (else a slot leaked)
            "generated_tokens": b.generated,
            "waiting": b.waiting.qsize(),
        }

    @app.get("/v1/models")
    async def models():
        cards = [_profile_card(served, p) for p in list_profiles(served.profiles_dir)]
        return {"object": "list", "data": [_model_card(served), *cards]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        if name == served.name:
            return _model_card(served)
        if p := served.profile(name):
            return _profile_card(served, p)
        raise APIError(
            404, f"The model '{name}' does not exist.", param="model", code="model_not_found"
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body: ChatBody = await read_body(request, ChatBody)
        if profile := served.check(body):
            with_profile(body, profile)
        prompt, forced, banned = chat_prompt(served, body)
        s = served.sampling(body, len(prompt), body.max_completion_tokens or body.max_tokens)
        bias = served.logit_bias(body) | {t: -math.inf for t in banned}
        q, gens = served.submit([prompt], s, body.n, bias)
        states = [
            ChoiceState(served, forced, prompt[-1] == served.call_open or bool(forced))
            for _ in gens
        ]
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": profile.name if profile else served.name}
        if not body.stream:
            async for i, t, text, finish in _events(request, q, gens):
                states[i].add(t, text)
                if finish:
                    states[i].finish = states[i].finish_reason(finish)
            choices = [
                {"index": i, "message": st.message(), "logprobs": None, "finish_reason": st.finish}
                for i, st in enumerate(states)
            ]
            return {
                **head,
                "object": "chat.completion",
                "choices": choices,
                "usage": usage_of(len(prompt), states),
            }

        def chunk(i, delta, finish=None):
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse({**head, "object": "chat.completion.chunk", "choices": [choice]})

        async def stream():
            for i in range(len(gens)):
                yield chunk(i, {"role": "assistant", "content": ""})
            async for i, t, text, finish in _events(request, q, gens):
                new = states[i].add(t, text)
                if new:
                    yield chunk(i, {"content": new})
                if finish:
                    calls = states[i].tool_calls()
                    if states[i].unparsed_call():
                        yield chunk(i, {"content": states[i].unparsed_call()})
                    if calls:
                        yield chunk(i, {"tool_calls": calls})
                    yield chunk(i, {}, states[i].finish_reason(finish))
            if (body.stream_options or {}).get("include_usage"):
                usage = usage_of(len(prompt), states)
                yield sse(
                    {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                )
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body: CompletionBody = await read_body(request, CompletionBody)
        served.check(body)
        p = body.prompt
        if isinstance(p, str) or (p and isinstance(p[0], str)):
            prompts = [served.tok.encode_prompt(x) for x in ([p] if isinstance(p, str) else p)]
        else:
            prompts = [list(p)]
        if not all(prompts) or any(t < 0 or t >= served.tok.vocab_size for x in prompts for t in x):
            raise APIError(400, "prompt is empty or has ids outside the vocabulary", param="prompt")
        s = served.sampling(body, max(len(x) for x in prompts), body.max_tokens)
        q, gens = served.submit(prompts, s, body.n, served.logit_bias(body))
        texts, finishes, counts = [""] * len(gens), [None] * len(gens), [0] * len(gens)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": served.name}
        prompt_tokens = sum(len(x) for x in prompts) * body.n

        def usage():
            done = sum(counts)
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": done,
                "total_tokens": prompt_tokens + done,
            }

        if not body.stream:
            async for i, t, text, finish in _events(request, q, gens):
                texts[i] += text
                counts[i] += t is not None
                finishes[i] = finish
            choices = [
                {"index": i, "text": texts[i], "logprobs": None, "finish_reason": finishes[i]}
                for i in range(len(gens))
            ]
            return {**head, "choices": choices, "usage": usage()}

        async def stream():
            async for i, t, text, finish in _events(request, q, gens):
                counts[i] += t is not None
                if text or finish:
                    choice = {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                    yield sse({**head, "choices": [choice]})
            if (body.stream_options or {}).get("include_usage"):
                yield sse({**head, "choices": [], "usage": usage()})
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    add_web_chat(app, store, served, tools, site, Path(c.db).parent / "files")
    queue = tasks.prompts(c.label_prompts, 50, 0) if c.label_prompts else []
    endpoints = [e.strip() for e in c.label_endpoints.split(",") if e.strip()]
    add_labeling(app, store, [r["prompt"] for r in queue], served.name, endpoints)
    return app


def _profile_card(served: Served, p: Profile) -> dict:
    return {**_model_card(served), "id": p.name, "description": p.description,
            "root": served.name}  # fmt: skip


def _model_card(served: Served) -> dict:
    return {
        "id": served.name,
        "object": "model",
        "created": int(served.dir.stat().st_mtime),
        "owned_by": "llmos",
        "context_length": served.context,
    }


def serve(c: ServeConfig) -> None:
    import uvicorn

    app = create_app(c.model_dir, c)
    served = app.state.served
    kv = sum(t.numel() * t.element_size() for t in served.batcher.cache.k + served.batcher.cache.v)
    print(
        f"serving {served.name} at http://{c.host}:{c.port}/ (API under /v1): up to"
        f" {c.max_batch} requests of {served.context} tokens, KV cache {kv / 2**20:.0f} MiB"
    )
    uvicorn.run(app, host=c.host, port=c.port, log_level="info")
