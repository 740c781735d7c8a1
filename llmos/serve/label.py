"""The labeling page's routes: /label (the page), a queue of prompts to label, labels kept in
the SQLite store (who and when), undo, and the export as TRL comparisons; and /api/corrections,
where the web chat's "fix this answer" keeps a corrected conversation for `llmos sft --data
store:corrections`.

The page samples its K candidate answers through the OpenAI API this server already has
(`/v1/chat/completions` with n = K), so labeling needs no generation code of its own.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from llmos.chat_format import ConversationError, check_conversation
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
    labeler: str = Field("anonymous", min_length=1, max_length=100)


class CorrectionBody(BaseModel):
    messages: list[dict[str, Any]] = Field(min_length=2)
    original: str = Field("", max_length=100_000)
    labeler: str = Field("anonymous", min_length=1, max_length=100)


def add_labeling(app: FastAPI, store: Store, queue: list[list[dict]]) -> None:
    """`queue`: the prompts (message lists) the page offers, in order; a prompt already
    labelled is skipped."""
    lock = threading.Lock()

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
