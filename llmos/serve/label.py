"""The labeling page's routes: /label (the page), a queue of prompts to label, labels kept in
the SQLite store (who and when), undo, and the export as TRL comparisons; and /api/corrections,
where the web chat's "fix this answer" keeps a corrected conversation for `llmos sft --data
store:corrections`.

The page samples its K candidate answers through the OpenAI API this server already has
(`/v1/chat/completions` with n = K), so labeling needs no generation code of its own. With
`llmos serve --label-endpoints URL[#MODEL],...` other models join in: any OpenAI-compatible
server (another `llmos serve`, vLLM, llama.cpp's, a hosted API) answers through
`/api/label/sample`, a proxy here, so the endpoints' API key (OPENAI_API_KEY) stays on the
server and the browser talks to one origin. The K answers are shared out over the models and
shown blind (which model wrote which is recorded, not shown, so a name cannot sway the pick).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from llmos.chat_format import ConversationError, check_conversation
from llmos.common import LlmosError
from llmos.data.store import Store, label_comparisons
from llmos.serve.errors import APIError, read_body
from llmos.serve.web import CSP

STATIC = Path(__file__).parent / "static"


class Edit(BaseModel):
    index: int = Field(ge=0)
    text: str = Field(max_length=100_000)


class LabelBody(BaseModel):
    prompt: list[dict[str, Any]] = Field(min_length=1)
    answers: list[str] = Field(min_length=2, max_length=16)
    ranking: list[int] = Field(default_factory=list, max_length=16)
    verdict: Literal["ranked", "tie", "all_bad"] = "ranked"
    edited: list[Edit] = Field(default_factory=list, max_length=16)
    models: list[str] = Field(default_factory=list, max_length=16)
    labeler: str = Field("anonymous", min_length=1, max_length=100)


class SampleBody(BaseModel):
    source: int = Field(ge=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    n: int = Field(1, ge=1, le=16)
    temperature: float = Field(1.0, ge=0, le=2)
    max_tokens: int = Field(128, ge=1, le=4096)


class Endpoint:
    """An OpenAI-compatible server the labeling page samples from: `URL` or `URL#MODEL` (a
    fragment is never part of an API's URL; without one, the server's first listed model)."""

    def __init__(self, spec: str, timeout: float = 120.0):
        import openai

        self.url, _, self.model = spec.partition("#")
        if not self.url.startswith(("http://", "https://")):
            raise LlmosError(f"--label-endpoints: {spec!r} is not an http(s) URL[#MODEL]")
        key = os.environ.get("OPENAI_API_KEY") or "none"  # local servers need none
        self.openai = openai
        self.client = openai.AsyncOpenAI(
            base_url=self.url, api_key=key, timeout=timeout, max_retries=1
        )

    async def name(self) -> str:
        if not self.model:
            self.model = (await self.client.models.list()).data[0].id
        return self.model

    async def sample(self, body: SampleBody) -> list[str]:
        """n answers, as n requests of one (many servers, llama.cpp's among them, ignore n)."""

        async def one(model: str) -> str:
            r = await self.client.chat.completions.create(
                model=model, messages=body.messages, n=1,
                temperature=body.temperature, max_tokens=body.max_tokens,
            )  # fmt: skip
            return answer_text(r.choices[0].message.model_dump(exclude_none=True))

        try:
            model = await self.name()
            return list(await asyncio.gather(*(one(model) for _ in range(body.n))))
        except (self.openai.APIError, IndexError) as e:  # refused, timed out, an HTTP error
            raise APIError(
                502, f"{self.url}: {e}", code="upstream_error", kind="server_error"
            ) from None


def answer_text(m: dict) -> str:
    """An answer as the labeler reads it: its text, then any tool calls."""
    calls = [f"[tool call: {c['function']['name']}({c['function']['arguments']})]"
             for c in m.get("tool_calls") or []]  # fmt: skip
    return "\n".join(x for x in [m.get("content") or "", *calls] if x)


class CorrectionBody(BaseModel):
    messages: list[dict[str, Any]] = Field(min_length=2)
    original: str = Field("", max_length=100_000)
    labeler: str = Field("anonymous", min_length=1, max_length=100)


def add_labeling(
    app: FastAPI, store: Store, queue: list[list[dict]], served: str, endpoints: list[str]
) -> None:
    """`queue`: the prompts (message lists) the page offers, in order; a prompt already
    labelled is skipped. `served`: this server's model; `endpoints`: other models' servers."""
    lock = threading.Lock()
    others = [Endpoint(e) for e in endpoints]

    def labelled() -> set[str]:
        return {json.dumps(label["prompt"], sort_keys=True) for label in store.labels()}

    @app.get("/label")
    async def label_page():
        return FileResponse(STATIC / "label.html", headers={"Content-Security-Policy": CSP})

    @app.get("/api/label/next")
    async def next_prompt():
        with lock:
            done = labelled()
            left = [p for p in queue if json.dumps(p, sort_keys=True) not in done]
        return {"prompt": left[0] if left else None, "queue_left": len(left)}

    @app.get("/api/label/sources")
    async def sources():
        """The models answers come from: 0 is this server's (sampled through /v1), then each
        endpoint (through /api/label/sample)."""
        out = [{"id": 0, "model": served, "url": ""}]
        for i, e in enumerate(others, 1):
            try:
                out.append({"id": i, "model": await e.name(), "url": e.url})
            except Exception as err:  # the page still works with the models that answer
                out.append({"id": i, "model": None, "url": e.url, "error": str(err)})
        return {"sources": out}

    @app.post("/api/label/sample")
    async def sample(request: Request):
        body: SampleBody = await read_body(request, SampleBody)
        if body.source > len(others):
            raise APIError(400, f"source: 1 to {len(others)} (the endpoints)", param="source")
        try:
            check_conversation(body.messages, "messages")
        except ConversationError as e:
            raise APIError(400, str(e), param="messages") from None
        e = others[body.source - 1]
        return {"model": await e.name(), "answers": await e.sample(body)}

    @app.post("/api/labels")
    async def add_label(request: Request):
        body: LabelBody = await read_body(request, LabelBody)
        try:
            check_conversation(body.prompt, "prompt")
        except ConversationError as e:
            raise APIError(400, str(e), param="prompt") from None
        n = len(body.answers)
        if any(not 0 <= i < n for i in body.ranking) or len(set(body.ranking)) != len(body.ranking):
            raise APIError(400, f"ranking: distinct answer indices below {n}", param="ranking")
        if any(e.index >= n for e in body.edited):
            raise APIError(400, f"edited: answer indices below {n}", param="edited")
        if body.models and len(body.models) != n:
            raise APIError(400, f"models: one per answer ({n}) or none", param="models")
        if body.verdict == "ranked" and not body.ranking:
            raise APIError(400, "a ranked label needs the best answer first", param="ranking")
        label = body.model_dump()
        return {"id": store.add_label(label)}

    @app.delete("/api/labels/{lid}")
    async def delete_label(lid: int):
        if not store.delete_label(lid):
            raise APIError(404, f"no label {lid}", code="not_found")
        return {"id": lid, "deleted": True}

    @app.get("/api/labels/stats")
    async def stats():
        labels = store.labels()  # one read of the store for all three counts
        done = {json.dumps(label["prompt"], sort_keys=True) for label in labels}
        return {
            "labels": len(labels),
            "comparisons": sum(len(label_comparisons(label)) for label in labels),
            "queue_left": sum(json.dumps(p, sort_keys=True) not in done for p in queue),
        }

    @app.get("/api/labels/export")
    async def export():
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in store.comparisons())
        return Response(
            lines,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="comparisons.jsonl"'},
        )

    @app.post("/api/corrections")
    async def add_correction(request: Request):
        body: CorrectionBody = await read_body(request, CorrectionBody)
        try:
            check_conversation(body.messages, "messages")
        except ConversationError as e:
            raise APIError(400, str(e), param="messages") from None
        if body.messages[-1].get("role") != "assistant":
            raise APIError(
                400, "a correction ends with the fixed assistant message", param="messages"
            )
        return {"id": store.add_correction(body.messages, body.original, body.labeler)}
