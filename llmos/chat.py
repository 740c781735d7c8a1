"""`llmos chat`: a terminal chat with streaming, custom instructions, tools and slash commands.

llmos models use llmos's conversation format and can call tools (shown as they happen).
Imported models with a chat template of their own (SmolLM2) are rendered with that template.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llmos.checkpoint import load_model
from llmos.infer.engine import Engine, SamplingConfig, assistant_turn
from llmos.tokenizer import Tokenizer, render

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


def template_turn(engine: Engine, tok: Tokenizer, messages: list[dict], s: SamplingConfig) -> dict:
    """A reply rendered through the model's own Jinja chat template (no tool calls)."""
    ids, _ = render(tok, messages, add_generation_prompt=True)
    out = []
    for _, _, piece, _ in engine.stream([ids], s):
        sys.stdout.write(piece)
        sys.stdout.flush()
        out.append(piece)
    return {"role": "assistant", "content": "".join(out)}


def show_tool_message(m: dict) -> None:
    if m.get("tool_calls"):
        fn = m["tool_calls"][0]["function"]
        print(f"\n  [tool call] {fn['name']}({fn['arguments']})")
    elif m["role"] == "tool":
        print(f"  [tool result] {m['content']}")
        sys.stdout.write("assistant> ")


def chat_loop(args) -> None:
    tok = Tokenizer.load(args.model_dir)
    engine = Engine(load_model(args.model_dir), tok, args.dtype)
    if not tok.llmos_format and not tok.chat_template:
        sys.exit(f"{args.model_dir}: no chat template; this is a base model (try llmos sample)")
    s = SamplingConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    system = args.system
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    print(f"chatting with {args.model_dir} (/help for commands)")
    while True:
        text = read_message()
        if text is None or text.strip() == "/quit":
            print()
            return
        cmd, _, rest = text.strip().partition(" ")
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
            messages.append({"role": "user", "content": text})
            sys.stdout.write("assistant> ")
            if tok.llmos_format:
                messages += assistant_turn(
                    engine,
                    messages,
                    s,
                    on_message=show_tool_message,
                    on_text=lambda p: (sys.stdout.write(p), sys.stdout.flush()),
                )
            else:
                messages.append(template_turn(engine, tok, messages, s))
            print()
