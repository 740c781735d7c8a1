"""The web chat's routes: the page at / (static files, no CDN), its conversations in SQLite
under /api/conversations, and the server's own tools for the page's tool calls."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from llmos.agent.tools import TOOLS, run_tool_call
from llmos.serve.errors import APIError, read_body
from llmos.serve.store import ChatStore

STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere: scripts, styles and images only from this server.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class ToolCallBody(BaseModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ConversationBody(BaseModel):
    title: str | None = Field(None, max_length=200)
    messages: list[dict[str, Any]] | None = None
    settings: dict[str, Any] | None = None


def add_web_chat(app: FastAPI, store: ChatStore) -> None:
    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/tools")
    async def list_tools():
        return {"data": [t["schema"] for t in TOOLS.values()]}

    @app.post("/api/tools/run")
    async def run_tool(request: Request):
        """Run one of the server's own tools (the calculator) for the web chat's tool calls."""
        body: ToolCallBody = await read_body(request, ToolCallBody)
        call = json.dumps({"name": body.name, "arguments": body.arguments})
        _, result = await asyncio.to_thread(run_tool_call, call)
        return {"content": result}

    @app.get("/api/conversations")
    async def list_conversations():
        return {"data": store.list()}

    @app.get("/api/conversations/{cid}")
    async def get_conversation(cid: str):
        conv = store.get(cid)
        if conv is None:
            raise APIError(404, f"no conversation {cid}", code="not_found")
        return conv

    @app.put("/api/conversations/{cid}")
    async def put_conversation(cid: str, request: Request):
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cid):
            raise APIError(400, "conversation ids are 1-64 letters, digits, - or _", param="id")
        body: ConversationBody = await read_body(request, ConversationBody)
        return store.put(cid, body.title, body.messages, body.settings)

    @app.delete("/api/conversations/{cid}")
    async def delete_conversation(cid: str):
        if not store.delete(cid):
            raise APIError(404, f"no conversation {cid}", code="not_found")
        return {"id": cid, "deleted": True}
