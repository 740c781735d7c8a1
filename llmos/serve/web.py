"""The web chat's routes: the page at / (static files, no CDN), its conversations in SQLite
under /api/conversations, /api/chat, which runs an assistant turn with its tool calls on the
server (the tool loop of `llmos chat`, through the batcher) and streams what happens to the
page, /files/ID/NAME, the files those tools made (a python plot), shown inline, the profiles
("GPTs") under /api/profiles and the assistant's memory under /api/memory.

Side effects are confirmed by the person, in two steps. A turn whose model calls a
side-effecting tool (send_message) that is not confirmed gets the call refused, and the stream
carries {"type": "confirm", "call": {"name", "arguments"}}; the page asks, and on "allow" sends
the same conversation again with `"confirm": [that call]`. A confirmed call runs once, and only
with exactly those arguments; a call that only data asked for is refused either way."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import re
import secrets
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from llmos.agent.loop import assistant_turn
from llmos.agent.memory import fit_with_memory, memory_tools
from llmos.agent.profiles import NAME as PROFILE_NAME
from llmos.agent.profiles import (
    Profile,
    ProfileError,
    knowledge_tools,
    list_profiles,
    parse_profile,
    save_profile,
)
from llmos.agent.tools import Guard, pick_tools, send_message_tool
from llmos.chat_format import ConversationError, check_conversation, fit_to_context
from llmos.common import LlmosError
from llmos.data.store import Store
from llmos.infer.engine import SamplingConfig
from llmos.serve.errors import APIError, read_body

STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere: scripts, styles and images only from this server.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# Tools' files are shown inline only as raster images; anything else (an SVG can hold a
# script) is a download, and no file may run anything if opened by itself.
INLINE = {"image/png", "image/jpeg", "image/gif", "image/webp"}
FILE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "X-Content-Type-Options": "nosniff",
}
NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"


class ChatTurnBody(BaseModel):
    messages: list[dict[str, Any]] = Field(min_length=1)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, le=4096)
    profile: str | None = Field(None, max_length=64)  # its instructions, tools and knowledge
    custom_instructions: str | None = Field(None, max_length=4000)  # the person's own
    memory: bool = False  # memory tools, and paging out what outgrows the context
    conversation: str | None = Field(None, max_length=64)  # whose turns are paged out
    confirm: list[dict[str, Any]] = Field(default_factory=list, max_length=8)  # allowed calls


class ProfileBody(BaseModel):
    description: str = Field("", max_length=500)
    instructions: str = Field("", max_length=8000)
    knowledge: list[str] = Field(default_factory=list, max_length=1)
    tools: list[str] = Field(default_factory=list, max_length=16)
    model: str = Field("", max_length=500)
    sampling: dict[str, float] = Field(default_factory=dict)


class MemoryBody(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


class ConversationBody(BaseModel):
    title: str | None = Field(None, max_length=200)
    messages: list[dict[str, Any]] | None = None
    settings: dict[str, Any] | None = None


def add_web_chat(app: FastAPI, store: Store, served, tools: dict, site, files_dir: Path) -> None:
    """`tools`: what the assistant may call in the web chat (a profile picks its own from
    those, `site`'s search and open, files, memory and send_message); `files_dir`: where the
    files they make are kept, each call's under an unguessable id."""
    batcher = served.batcher
    knowledge: dict[str, tuple[float, dict]] = {}  # profile -> (file mtime, its files tool)

    def turn_tools(profile: Profile | None, memory: bool) -> dict:
        """The server's --tools, or a profile's own; with memory, remember/recall/forget."""
        mem = memory_tools(store) if memory else {}
        if profile is None:
            return tools | mem
        extra = {"send_message": send_message_tool(files_dir.parent / "outbox.jsonl")}
        try:
            if profile.knowledge:  # indexed once, and again when the profile file changes
                mtime = (served.profiles_dir / f"{profile.name}.toml").stat().st_mtime
                if knowledge.get(profile.name, (None,))[0] != mtime:
                    tool = knowledge_tools(profile, served.profiles_dir)
                    knowledge[profile.name] = (mtime, tool)
                extra |= knowledge[profile.name][1]
            return pick_tools(",".join(profile.tools), site, extra) | mem
        except LlmosError as e:  # an unknown tool, a knowledge folder that cannot be indexed
            raise APIError(400, f"profile {profile.name}: {e}", param="profile") from None

    def save_files(files: dict[str, bytes]) -> list[dict]:
        # The id is the capability: /files/ needs no API key (an <img> cannot send one), so
        # a file is reachable only by whoever was shown its URL (128 random bits).
        fid = secrets.token_urlsafe(16)
        (files_dir / fid).mkdir(parents=True)
        out = []
        for name, data in files.items():
            name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name).lstrip("._")[:100] or "file"
            (files_dir / fid / name).write_bytes(data)
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            out.append({"name": name, "url": f"/files/{fid}/{name}", "type": kind})
        return out

    @app.get("/files/{fid}/{name}")
    async def tool_file(fid: str, name: str):
        path = files_dir / fid / name
        if not (re.fullmatch(r"[A-Za-z0-9_-]{22}", fid) and re.fullmatch(NAME, name)):
            raise APIError(404, "no such file", code="not_found")
        if not path.is_file():
            raise APIError(404, "no such file", code="not_found")
        kind = mimetypes.guess_type(name)[0]
        if kind in INLINE:
            return FileResponse(path, media_type=kind, headers=FILE_HEADERS)
        return Response(
            path.read_bytes(),
            media_type="application/octet-stream",
            headers={**FILE_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.post("/api/chat")
    async def chat_turn(request: Request):
        """The assistant's turn, tools run here: SSE events {"type": "text", "text"} as the
        reply streams, {"type": "message", "message"} as each message (a call, a tool's
        result, the answer) completes, {"type": "error", "message"}, then [DONE]."""
        body: ChatTurnBody = await read_body(request, ChatTurnBody)
        try:
            check_conversation(body.messages, "messages")
        except ConversationError as e:
            raise APIError(400, str(e), param="messages") from None
        profile = None
        if body.profile:
            profile = served.profile(body.profile)
            if profile is None:
                raise APIError(404, f"no profile {body.profile!r}", param="profile")
        # System and profile instructions, then the person's custom instructions: both
        # outrank what is said in the chat, and tool output outranks nothing.
        head = profile.system_message(body.custom_instructions or "") if profile else []
        if not profile and body.custom_instructions:
            head = [{"role": "system", "content": body.custom_instructions}]
        asked = head + body.messages
        turn = turn_tools(profile, body.memory)
        # A long chat outgrows a small model's context: the oldest turns are left out (the
        # page is told), or with memory on, paged out to memory where `recall` finds them.
        max_tokens = min(body.max_tokens, batcher.max_len // 2)
        budget = batcher.max_len - max_tokens
        try:
            if body.memory:
                cid = body.conversation or "web"
                messages, dropped = fit_with_memory(batcher.tok, asked, budget, store, cid)
            else:
                messages, dropped = fit_to_context(batcher.tok, asked, budget)
        except ConversationError as e:
            raise APIError(400, str(e), param="messages", code="context_length_exceeded") from None
        allowed = [(c.get("name"), c.get("arguments")) for c in body.confirm]

        def confirm(name: str, arguments: dict) -> bool:
            if (name, arguments) in allowed:
                allowed.remove((name, arguments))  # once
                return True
            emit({"type": "confirm", "call": {"name": name, "arguments": arguments}})
            return False

        guard = Guard.of(messages, confirm)
        s = SamplingConfig(
            temperature=body.temperature, top_p=body.top_p, max_new_tokens=max_tokens
        )
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        gone = threading.Event()  # the client hung up: the turn stops at its next token

        def emit(event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        if dropped:
            where = "moved to memory" if body.memory else "left out"
            notice = (
                f"The first {dropped} messages were {where}: the whole conversation does not "
                f"fit the model's context of {batcher.max_len} tokens."
            )
            emit({"type": "notice", "message": notice})

        def work() -> None:
            try:
                assistant_turn(
                    batcher,
                    messages,
                    s,
                    tools=turn,
                    guard=guard,
                    on_text=lambda piece: emit({"type": "text", "text": piece}),
                    on_message=lambda m: emit({"type": "message", "message": m}),
                    should_stop=gone.is_set,
                    save_files=save_files,
                )
            except Exception as e:  # the page shows it; the server goes on
                emit({"type": "error", "message": f"{type(e).__name__}: {e}"})
            finally:
                emit(None)

        threading.Thread(target=work, name="llmos-web-turn", daemon=True).start()

        async def stream():
            try:
                while (event := await events.get()) is not None:
                    yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                gone.set()

        return StreamingResponse(stream(), media_type="text/event-stream")

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

    # -- profiles ("GPTs") and memory ------------------------------------------------------

    @app.get("/api/profiles")
    async def get_profiles():
        return {"data": [vars(p) for p in list_profiles(served.profiles_dir)]}

    @app.put("/api/profiles/{name}")
    async def put_profile(name: str, request: Request):
        if not PROFILE_NAME.fullmatch(name):
            raise APIError(400, "a profile name is 1-64 of a-z 0-9 . _ -", param="name")
        body: ProfileBody = await read_body(request, ProfileBody)
        # A knowledge folder is readable through the files tool by whoever chats with the
        # profile: only the server's owner sets one (in the TOML file), never the web page.
        old = served.profile(name)
        if body.knowledge != (old.knowledge if old else []):
            raise APIError(
                400,
                "knowledge folders are set in the profile's TOML file on the server",
                param="knowledge",
            )
        try:
            p = parse_profile({"name": name, **body.model_dump()}, f"profile {name}")
            save_profile(p, served.profiles_dir)
        except ProfileError as e:
            raise APIError(400, str(e), param="profile") from None
        return vars(p)

    @app.delete("/api/profiles/{name}")
    async def delete_profile(name: str):
        path = served.profiles_dir / f"{name}.toml"
        if not PROFILE_NAME.fullmatch(name) or not path.exists():
            raise APIError(404, f"no profile {name}", code="not_found")
        path.unlink()
        return {"id": name, "deleted": True}

    @app.get("/api/memory")
    async def get_memory():
        return {"data": store.memories()}

    @app.post("/api/memory")
    async def add_memory(request: Request):
        body: MemoryBody = await read_body(request, MemoryBody)
        return {"id": store.remember(body.text, "user"), "text": body.text}

    @app.put("/api/memory/{mid}")
    async def edit_memory(mid: int, request: Request):
        body: MemoryBody = await read_body(request, MemoryBody)
        if not 0 < mid < 2**63 or not store.edit_memory(mid, body.text):  # SQLite's integers
            raise APIError(404, f"no memory {mid}", code="not_found")
        return {"id": mid, "text": body.text}

    @app.delete("/api/memory/{mid}")
    async def delete_memory(mid: int):
        if not 0 < mid < 2**63 or not store.forget(mid):
            raise APIError(404, f"no memory {mid}", code="not_found")
        return {"id": mid, "deleted": True}
