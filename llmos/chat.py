"""`llmos chat`: a terminal chat with streaming, custom instructions, tools and slash commands.

llmos models use llmos's conversation format and can call tools (shown as they happen).
Imported models with a chat template of their own (SmolLM2) are rendered with that template.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from llmos.agent.loop import assistant_turn
from llmos.checkpoint import load_model
from llmos.common import LlmosError, arg
from llmos.infer.engine import DTYPES, Engine, SamplingConfig
from llmos.tokenizer import Tokenizer


@dataclass
class ChatConfig:
    model_dir: str = arg("", "the model directory to chat with", positional=True)
    system: str = arg("", "custom instructions (a system message)")
    temperature: float = arg(0.7, "sampling temperature; 0 is greedy", lo=0, hi=100)
    max_new_tokens: int = arg(256, "the longest reply, in tokens", lo=1)
    dtype: str = arg("fp32", "weights in the engine", choices=list(DTYPES))


HELP = """commands:
  /reset            start over (keeps the system prompt)
  /system TEXT      set custom instructions
  /temp T           set the sampling temperature
  /save FILE        save the conversation as JSON
  /load FILE        load a conversation saved with /save
  /quit             leave (or Ctrl-D)
end a line with \\ to continue the message on the next line"""


def read_message(prompt: str = "you> ") -> str | None:
    """One user message; a trailing backslash continues it on the next line."""
    lines = []
    while True:
        try:
            line = input(prompt if not lines else "...> ")
        except EOFError:
            return None
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def show_tool_message(m: dict) -> None:
    if m.get("tool_calls"):
        fn = m["tool_calls"][0]["function"]
        print(f"\n  [tool call] {fn['name']}({fn['arguments']})")
    elif m["role"] == "tool":
        print(f"  [tool result] {m['content']}")
        sys.stdout.write("assistant> ")


def chat(c: ChatConfig) -> None:
    """The terminal chat: read a message, stream the reply, until /quit or end of input."""
    tok = Tokenizer.load(c.model_dir)
    if not tok.llmos_format and not tok.chat_template:
        raise LlmosError(f"{c.model_dir}: no chat template; a base model (try llmos sample)")
    engine = Engine(load_model(c.model_dir), tok, c.dtype)
    s = SamplingConfig(temperature=c.temperature, max_new_tokens=c.max_new_tokens)
    system = c.system
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    print(f"chatting with {c.model_dir} (/help for commands)")
    while True:
        text = read_message()
        if text is None or text.strip() == "/quit":
            print()
            return
        cmd, _, rest = text.strip().partition(" ")
        try:
            if cmd == "/help":
                print(HELP)
            elif cmd == "/reset":
                messages = [{"role": "system", "content": system}] if system else []
            elif cmd == "/system":
                system = rest
                messages = [m for m in messages if m["role"] != "system"]
                messages = ([{"role": "system", "content": system}] if system else []) + messages
            elif cmd == "/temp":
                s.temperature = float(rest)
            elif cmd == "/save":
                Path(rest).write_text(json.dumps({"messages": messages}, indent=2))
                print(f"saved {len(messages)} messages to {rest}")
            elif cmd == "/load":
                messages = json.loads(Path(rest).read_text())["messages"]
                print(f"loaded {len(messages)} messages")
            elif cmd.startswith("/"):
                print(f"unknown command {cmd}; /help lists them")
            else:
                messages += reply(engine, messages + [{"role": "user", "content": text}], s)
        except (OSError, ValueError, KeyError, TypeError, LlmosError) as e:
            # A mistyped command or an unreadable file must not end the conversation.
            print(f"error: {e}")


def reply(engine: Engine, messages: list[dict], s: SamplingConfig) -> list[dict]:
    """The user's message and the reply, streamed (llmos models run their tool calls)."""
    sys.stdout.write("assistant> ")
    new = assistant_turn(
        engine,
        messages,
        s,
        on_message=show_tool_message,
        on_text=lambda p: (sys.stdout.write(p), sys.stdout.flush()),
    )
    print()
    return [messages[-1], *new]
