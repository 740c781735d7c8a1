"""The tool loop: an assistant turn that runs the tool calls the model makes on the way.

One loop for every front end: `llmos chat`, the web chat (on the server, through the batcher),
task evaluation, and later RL rollouts and `llmos agent`. The model writes
`<|tool_call|>{"name": ..., "arguments": {...}}<|/tool_call|>`; generation stops there, the
call is parsed (chat_format.parse_tool_call) and run, and the result goes back as a `tool`
message. The model is anything with a tokenizer `tok` and `session(prompt ids)`, a growing
token sequence (infer.engine.Session, or serve.batcher.Batcher's), so the tool's result is
appended to the sequence the model already read, never re-rendered from the start.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from llmos.agent.tools import TOOLS, Guard, run_tool_call
from llmos.chat_format import render, split_reasoning
from llmos.infer.engine import SamplingConfig


def assistant_turn(
    model,
    messages: list[dict],
    s: SamplingConfig,
    tools: dict | None = None,
    max_calls: int = 4,
    on_message: Callable[[dict], None] | None = None,
    on_text: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    save_files: Callable[[dict[str, bytes]], list[dict]] | None = None,
    guard: Guard | None = None,
) -> list[dict]:
    """The assistant's reply to a conversation: the new messages (assistant, tool, ...,
    assistant). A malformed call or a failing tool becomes a result the model sees, never a
    crash. `on_message` sees each new message as it completes, `on_text` the assistant's text
    as it streams (the tool-call JSON excluded). `should_stop()` true ends the turn at the next
    token (a user pressed stop, a client hung up). Files a tool made (a plot from `python`) go
    to `save_files`, whose descriptions ({"name", "url", "type"}) the tool message carries as
    "attachments"; without it they are dropped (the result text still names them).

    Every call passes `guard` (default: this conversation's, with nobody to confirm, so a
    side effect is refused): a call that writes runs only if the system or user asked for it."""
    tools = TOOLS if tools is None else tools
    guard = guard or Guard.of(messages)
    tok, sp = model.tok, model.tok.special_ids
    specials = set(sp.values())
    # A turn ends at <|end|> (or EOS); a call is complete at <|/tool_call|>. A model with a
    # template of its own (SmolLM2) has none of these tokens: its turn is one reply to EOS.
    call_open, call_close, end = (sp.get(t) for t in ("<|tool_call|>", "<|/tool_call|>", "<|end|>"))
    stops = frozenset({end, call_close, tok.eos_id} - {None})
    prompt, _ = render(tok, messages, add_generation_prompt=True)
    seq = model.session(prompt)
    new: list[dict] = []
    for n_calls in range(max_calls + 1):
        ids: list[int] = []
        stream = seq.stream(s, stops)
        for t, piece, _ in stream:
            ids.append(t)
            if on_text and call_open not in ids and t not in specials:
                on_text(piece)
            if should_stop and should_stop():
                stream.close()  # frees what the generation holds (a batcher row)
                break
        stopped = bool(should_stop and should_stop())
        if not ids or ids[-1] != call_close or n_calls == max_calls or stopped:
            reasoning, rest = split_reasoning(tok, ids)  # a worked solution before the answer
            new.append(
                {"role": "assistant", "content": tok.decode(i for i in rest if i not in specials)}
            )
            if reasoning is not None:
                new[-1]["reasoning_content"] = reasoning
            break
        k = ids.index(call_open) if call_open in ids else len(ids) - 1
        raw = tok.decode(ids[k + 1 : -1])
        call, result = run_tool_call(raw, tools, guard)
        if call is None:
            name, args = "invalid", json.dumps(raw)
        else:
            name, args = call["name"], json.dumps(call["arguments"])
        call_id = f"call_{len(new)}"
        new.append(
            {
                "role": "assistant",
                "content": tok.decode(i for i in ids[:k] if i not in specials),
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": args},
                    }
                ],
            }
        )
        new.append({"role": "tool", "tool_call_id": call_id, "content": str(result)})
        if save_files and getattr(result, "files", None):
            new[-1]["attachments"] = save_files(result.files)
        # The result continues the sequence exactly as the renderer would write it:
        # ...<|/tool_call|><|end|><|tool|>result<|end|><|assistant|>
        seq.append([end, sp["<|tool|>"], *tok.encode(result), end, sp["<|assistant|>"]])
        if on_message:
            on_message(new[-2])
            on_message(new[-1])
    if on_message:
        on_message(new[-1])
    return new
