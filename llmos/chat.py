"""`llmos chat`: a terminal chat with streaming, custom instructions, tools and slash commands.

llmos models use llmos's conversation format and can call tools (shown as they happen).
Imported models with a chat template of their own (SmolLM2) are rendered with that template.
The conversation is saved after every turn (in the llmos cache, under chats/), so a crash or a
closed terminal loses nothing: `--resume` reopens the last one. Ctrl-C stops the reply being
written, not the chat.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from llmos.agent.loop import assistant_turn
from llmos.agent.memory import fit_with_memory, memory_tools
from llmos.agent.profiles import knowledge_tools, load_profile
from llmos.agent.tools import TOOLS, Guard, pick_tools
from llmos.chat_format import ConversationError, check_conversation
from llmos.checkpoint import load_model
from llmos.common import LlmosError, arg, cache_dir, check_value, write_json
from llmos.data.store import Store
from llmos.infer.engine import DTYPE_HELP, DTYPES, Engine, SamplingConfig
from llmos.tokenizer import Tokenizer


@dataclass
class ChatConfig:
    model_dir: str = arg("", "the model directory to chat with", positional="optional")
    system: str = arg("", "custom instructions (a system message)")
    temperature: float = arg(0.7, "sampling temperature; 0 is greedy", lo=0, hi=100)
    max_new_tokens: int = arg(256, "the longest reply, in tokens", lo=1)
    dtype: str = arg("auto", DTYPE_HELP, choices=["auto", *DTYPES])
    resume: bool = arg(False, "reopen the last conversation (each one is saved as it goes)")
    profile: str = arg("", "a profile (name or TOML path): instructions, tools, knowledge, model")
    memory: bool = arg(
        False,
        "long-term memory (remember/recall/forget, in the llmos store); turns that outgrow "
        "the context are paged out to it instead of dropped",
    )


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


def history_dir() -> Path:
    return cache_dir() / "chats"


def load_conversation(path: str | Path) -> list[dict]:
    """The messages of a conversation saved by /save or the autosave, checked."""
    try:
        messages = json.loads(Path(path).read_text())["messages"]
        check_conversation(messages, str(path))
    except (ValueError, KeyError, TypeError, ConversationError) as e:
        raise LlmosError(f"{path}: not a saved conversation ({e})") from None
    return messages


def confirm_on_terminal(name: str, arguments: dict) -> bool:
    """The chat's confirmation of a side effect: the person says yes or no."""
    answer = input(f"\n  allow {name}({json.dumps(arguments)[:300]})? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def chat(c: ChatConfig) -> None:
    """The terminal chat: read a message, stream the reply, until /quit or end of input."""
    profile = load_profile(c.profile) if c.profile else None
    model_dir = c.model_dir or (profile.model if profile else "")
    if not model_dir:
        raise LlmosError("give a model directory (or a profile with a model)")
    tok = Tokenizer.load(model_dir)
    if not tok.llmos_format and not tok.chat_template:
        raise LlmosError(f"{model_dir}: no chat template; a base model (try llmos sample)")
    engine = Engine(load_model(model_dir), tok, c.dtype)
    temperature = profile.sampling.get("temperature", c.temperature) if profile else c.temperature
    s = SamplingConfig(temperature=temperature, max_new_tokens=c.max_new_tokens)
    system = c.system
    store = Store() if c.memory else None
    extra = memory_tools(store) if store else {}
    if profile:  # the profile's instructions outrank the user's own custom instructions
        system = "\n\n".join(x for x in (profile.instructions.strip(), c.system) if x)
        extra |= knowledge_tools(profile)
    names = ",".join((profile.tools if profile and profile.tools else list(TOOLS)) + list(extra))
    tools = pick_tools(names, extra=extra)
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    autosave = history_dir() / time.strftime("%Y%m%d-%H%M%S.json")
    if c.resume:
        saved = sorted(history_dir().glob("*.json"))
        if not saved:
            raise LlmosError(f"{history_dir()}: no saved conversation to resume")
        autosave = saved[-1]
        messages = load_conversation(autosave)
        print(f"resumed {autosave} ({len(messages)} messages)")
    print(f"chatting with {model_dir} (/help for commands; tools: {', '.join(tools)})")
    budget = engine.model.cfg.max_position_embeddings - c.max_new_tokens
    while True:
        try:
            text = read_message()
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, as in a shell
            print("\n(Ctrl-D or /quit leaves)")
            continue
        if text is None or text.strip() == "/quit":
            print()
            return
        cmd, _, rest = text.strip().partition(" ")
        rest = rest.strip()
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
                value = float(rest)
                check_value("temperature", value, {"lo": 0, "hi": 100})
                s.temperature = value
            elif cmd in ("/save", "/load") and not rest:
                print(f"usage: {cmd} FILE")
            elif cmd == "/save":
                write_json(rest, {"messages": messages})
                print(f"saved {len(messages)} messages to {rest}")
            elif cmd == "/load":
                messages = load_conversation(rest)
                print(f"loaded {len(messages)} messages")
            elif cmd.startswith("/"):
                print(f"unknown command {cmd}; /help lists them")
            else:
                asked = messages + [{"role": "user", "content": text}]
                shown = asked
                if store is not None:  # what does not fit goes to memory, not away
                    shown, _ = fit_with_memory(tok, asked, budget, store, autosave.stem)
                messages = asked + reply(engine, shown, s, tools)[1:]
            if messages:
                write_json(autosave, {"messages": messages})  # atomic: Ctrl-C keeps the last
        except (OSError, ValueError, KeyError, TypeError, LlmosError) as e:
            # A mistyped command or an unreadable file must not end the conversation.
            print(f"error: {e}")
        except KeyboardInterrupt:  # Ctrl-C just after a reply ended, before the prompt
            print()


def reply(engine: Engine, messages: list[dict], s: SamplingConfig, tools=None) -> list[dict]:
    """The user's message and the reply, streamed (llmos models run their tool calls; a side
    effect asks the person first)."""
    sys.stdout.write("assistant> ")
    stop = threading.Event()
    # Ctrl-C while the reply streams ends the reply at its next token (what was written is
    # kept); the chat goes on. Outside a reply, Ctrl-C is the prompt's again.
    main = threading.current_thread() is threading.main_thread()  # signals go to it only
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if main else None
    try:
        new = assistant_turn(
            engine,
            messages,
            s,
            on_message=show_tool_message,
            on_text=lambda p: (sys.stdout.write(p), sys.stdout.flush()),
            should_stop=stop.is_set,
            tools=tools,
            guard=Guard.of(messages, confirm_on_terminal),
        )
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    print(" [stopped]" if stop.is_set() else "")
    return [messages[-1], *new]
