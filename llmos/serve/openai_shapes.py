"""OpenAI's shapes, in and out: the request bodies of /v1/chat/completions and /v1/completions,
the prompt a chat request renders to (tool_choice included), and the choices, tool calls, usage
and server-sent events that go back. The model and the routes are in serve/api.py; `served`
below is its `Served` (not imported: api.py imports this module).
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmos.agent.profiles import Profile
from llmos.chat_format import (
    ConversationError,
    ToolCallError,
    hermes_tool_calls,
    parse_tool_call,
    render,
)
from llmos.serve.errors import APIError

# -- request bodies --------------------------------------------------------------------------


class Body(BaseModel):
    """The fields both completions APIs share."""

    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=300)  # OpenAI's limit


class ChatBody(Body):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None


class CompletionBody(Body):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions


# -- chat ------------------------------------------------------------------------------------


def text_content(m: dict, i: int) -> dict:
    """OpenAI allows content as a list of parts; the text parts are joined."""
    content = m.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise APIError(
                    400,
                    f"messages[{i}]: content part '{kind}' is not supported by this model",
                    param=f"messages.{i}.content",
                )
            texts.append(str(part.get("text", "")))
        m = {**m, "content": "".join(texts)}
    return m


def chat_prompt(served, body: ChatBody) -> tuple[list[int], str, list[int]]:
    """(prompt ids, the forced start of a tool call, token ids to ban) for a chat request.

    tool_choice "required" or a named function is met by starting the assistant's reply with
    the call token (and the function's name): the model writes the rest."""
    messages = [text_content(m, i) for i, m in enumerate(body.messages)]
    try:
        ids, _ = render(served.tok, messages, add_generation_prompt=True, tools=body.tools)
    except ConversationError as e:
        raise APIError(400, str(e), param="messages") from None
    choice = body.tool_choice or ("auto" if body.tools else "none")
    if served.call_open is None:
        return ids, "", []
    if choice == "none":
        return ids, "", [served.call_open]
    forced = ""
    if choice == "required":
        ids = ids + [served.call_open]
    elif isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise APIError(400, "tool_choice needs function.name", param="tool_choice")
        forced = '{"name": ' + json.dumps(name) + ', "arguments": '
        ids = ids + [served.call_open] + served.tok.encode(forced)
    return ids, forced, []


def openai_call(call: dict, index: int) -> dict:
    """A parsed call ({"name", "arguments"}) in OpenAI's shape: arguments as a JSON string."""
    fn = {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}
    return {
        "index": index,
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": fn,
    }


class ChoiceState:
    """One choice's output as events arrive: content, and the tool call after <|tool_call|>."""

    def __init__(self, served, forced_call: str, forced: bool):
        self.served, self.content, self.finish = served, "", None
        self.in_call, self.call_text, self.tokens = forced, forced_call, 0

    def add(self, token: int | None, text: str) -> str:
        """Take one event; return the new content (not the call) to show."""
        if token is not None:
            self.tokens += 1
        if token is not None and token == self.served.call_open:
            self.in_call = True
            return ""
        if self.in_call:
            if token is not None and token not in self.served.hidden:
                self.call_text += self.served.tok.decode([token])
            return ""
        self.content += text
        return text

    def tool_calls(self) -> list[dict]:
        if self.in_call:
            try:
                return [openai_call(parse_tool_call(self.call_text), 0)]
            except ToolCallError:
                return []
        if self.served.call_open is None:  # a model with its own template: Hermes-style tags
            return [openai_call(c, k) for k, c in enumerate(hermes_tool_calls(self.content)[0])]
        return []

    def unparsed_call(self) -> str:
        """The text of a call that does not parse: sent as content, so the client sees what
        the model wrote instead of an empty reply."""
        return self.call_text if self.in_call and not self.tool_calls() else ""

    def finish_reason(self, reason: str) -> str:
        return "tool_calls" if reason == "stop" and self.tool_calls() else reason

    def message(self) -> dict:
        calls = self.tool_calls()
        content = self.content + self.unparsed_call()
        if calls and self.served.call_open is None:
            content = hermes_tool_calls(content)[1]
        msg: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
        if calls:
            msg["tool_calls"] = calls
        return msg


def usage_of(prompt_tokens: int, choices) -> dict:
    completion = sum(c.tokens for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def with_profile(body: ChatBody, p: Profile) -> None:
    """A request for a profile: its instructions first, its sampling where the request has none."""
    body.messages = p.system_message() + body.messages
    for key, value in p.sampling.items():
        if key not in body.model_fields_set:
            setattr(body, key, value)
