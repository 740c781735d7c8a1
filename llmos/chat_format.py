"""Conversations as tokens: the one renderer (ids + loss mask), the same format as a Jinja
chat template, and tool calls written and parsed.

Conversations are OpenAI-style message lists (system, user, assistant with `tool_calls`, tool).
llmos models use llmos's special tokens (below); imported models with a template of their own
(SmolLM2's ChatML) are rendered through that template, as transformers would.
"""

from __future__ import annotations

import json
import re

from llmos.common import LlmosError

# The format:
#
# <|bos|><|system|>...<|end|><|user|>...<|end|><|assistant|>text<|tool_call|>{"name": ...,
# "arguments": {...}}<|/tool_call|><|end|><|tool|>result<|end|><|assistant|>...<|end|>
#
# The model is trained on what follows <|assistant|>: its text, its tool calls and the <|end|>
# that closes its turn (so it learns to stop); never on system, user or tool text. An
# assistant message's `reasoning_content` (the field DeepSeek's and vLLM's APIs use for a
# model's thinking) comes first, between <|think|> and <|/think|>: a worked solution the model
# writes before its answer, learned like the rest of the turn and kept apart from `content`.

ROLES = ("system", "user", "assistant", "tool")


class ConversationError(LlmosError):
    """A conversation that breaks the format; the message names the message and field."""


def tool_call_json(call: dict) -> str:
    """One OpenAI-style tool call as the JSON the model writes; `arguments` kept verbatim when
    it is already a JSON string (as OpenAI sends it), so the Jinja template can match."""
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return '{"name": ' + json.dumps(fn["name"], ensure_ascii=False) + ', "arguments": ' + args + "}"


class ToolCallError(LlmosError):
    """A tool call the model wrote that cannot be run as written."""


def parse_tool_call(text: str) -> dict:
    """{"name": str, "arguments": dict} from the JSON a model wrote for one call.

    The one parser of tool calls: the agent loop, the API and Hermes-style text all use it.
    `arguments` may be an object or, as OpenAI sends it, a string holding one.

    >>> parse_tool_call('{"name": "calculator", "arguments": {"expression": "1+2"}}')
    {'name': 'calculator', 'arguments': {'expression': '1+2'}}
    """
    try:
        call = json.loads(text)
        args = call.get("arguments", {}) if isinstance(call, dict) else None
        if isinstance(args, str):
            args = json.loads(args) if args.strip() else {}
    except json.JSONDecodeError as e:
        raise ToolCallError(f"malformed tool call (not JSON: {e})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ToolCallError('malformed tool call (needs {"name": ..., "arguments": {...}})')
    if not isinstance(args, dict):
        raise ToolCallError("malformed tool call (arguments must be an object)")
    return {"name": call["name"], "arguments": args}


# Models with a template of their own (SmolLM2, Qwen, Hermes) write calls as tagged JSON text.
HERMES_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def assistant_message(tok, ids: list[int]) -> dict:
    """The assistant message a model wrote as tokens in llmos's format: its text and, if it
    made one, the tool call between <|tool_call|> and <|/tool_call|> (a call that does not
    parse stays text). What a reward model must score: rendering the message again writes the
    call with its special tokens, as the comparisons it learned from did."""
    sp = tok.special_ids
    reasoning, ids = split_reasoning(tok, ids)
    specials = set(sp.values())
    start, close = sp.get("<|tool_call|>"), sp.get("<|/tool_call|>")
    k = ids.index(start) if start in ids else len(ids)
    msg = {"role": "assistant", "content": tok.decode(i for i in ids[:k] if i not in specials)}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    if start in ids and close in ids[k:]:
        raw = tok.decode(ids[k + 1 : ids.index(close, k)])
        try:
            call = parse_tool_call(raw)
        except ToolCallError:
            msg["content"] += raw
            return msg
        fn = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
        msg["tool_calls"] = [{"id": "call_0", "type": "function", "function": fn}]
    return msg


def split_reasoning(tok, ids: list[int]) -> tuple[str | None, list[int]]:
    """(the reasoning between <|think|> and <|/think|>, or None; the ids after it). Reasoning
    cut off before <|/think|> is all reasoning: the answer never started."""
    think, done = tok.special_ids.get("<|think|>"), tok.special_ids.get("<|/think|>")
    if think is None or not ids or ids[0] != think:
        return None, list(ids)
    end = ids.index(done) if done in ids else len(ids)
    specials = set(tok.special_ids.values())  # e.g. the <|end|> of a turn cut short
    return tok.decode(i for i in ids[1:end] if i not in specials), list(ids[end + 1 :])


def turn_end_ids(tok) -> frozenset[int]:
    """The tokens that end an assistant turn: <|end|> and EOS (a model with a template of its
    own has only EOS)."""
    return frozenset({tok.special_ids.get("<|end|>"), tok.eos_id} - {None})


def hermes_tool_calls(text: str) -> tuple[list[dict], str]:
    """(the calls parsed from <tool_call>{...}</tool_call> tags, the text without the tags).
    A tag whose JSON does not parse is left in the text."""
    calls = []

    def take(m: re.Match) -> str:
        try:
            calls.append(parse_tool_call(m.group(1)))
            return ""
        except ToolCallError:
            return m.group(0)

    rest = HERMES_CALL.sub(take, text)
    return calls, rest.strip() if calls else text


def check_conversation(messages, where: str = "conversation") -> None:
    if not isinstance(messages, list) or not messages:
        raise ConversationError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ConversationError(f"{where}: message {i} needs a role in {ROLES}")
        for field in ("content", "reasoning_content"):
            if m.get(field) is not None and not isinstance(m[field], str):
                raise ConversationError(f"{where}: message {i} '{field}' must be a string")
        if m.get("tool_calls") and m["role"] != "assistant":
            raise ConversationError(f"{where}: message {i}: only assistants make tool calls")
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise ConversationError(f"{where}: message {i}: a tool call needs a function name")


def render(
    tok,
    messages: list[dict],
    add_generation_prompt: bool = False,
    tools: list[dict] | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its loss mask (1 = an assistant token to learn).
    `tools` (OpenAI function specs) reach models with their own template, which list them in
    the prompt; llmos models learn their tools in fine-tuning."""
    check_conversation(messages)
    if not tok.llmos_format:
        return _render_with_template(tok, messages, add_generation_prompt, tools)
    sp = tok.special_ids
    ids, mask = [tok.bos_id], [0]

    def add(new: list[int], learn: int) -> None:
        ids.extend(new)
        mask.extend([learn] * len(new))

    for m in messages:
        add([sp[f"<|{m['role']}|>"]], 0)
        learn = int(m["role"] == "assistant")
        if m.get("reasoning_content") and learn:
            add([sp["<|think|>"], *tok.encode(m["reasoning_content"]), sp["<|/think|>"]], 1)
        add(tok.encode(m.get("content") or ""), learn)
        for call in m.get("tool_calls") or []:
            add(
                [sp["<|tool_call|>"], *tok.encode(tool_call_json(call)), sp["<|/tool_call|>"]],
                learn,
            )
        add([sp["<|end|>"]], learn)
    if add_generation_prompt:
        add([sp["<|assistant|>"]], 0)
    return ids, mask


# The same format for transformers' apply_chat_template (a test holds the two to the same ids).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>' }}"
    "{% if m['role'] == 'assistant' and m.get('reasoning_content') %}"
    "{{ '<|think|>' + m['reasoning_content'] + '<|/think|>' }}{% endif %}"
    "{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% for call in m.get('tool_calls') or [] %}"
    "{% set fn = call['function'] if call['function'] is defined else call %}"
    "{{ '<|tool_call|>{\"name\": ' + (fn['name'] | tojson) + ', \"arguments\": ' }}"
    "{% if fn['arguments'] is string %}{{ fn['arguments'] }}"
    "{% else %}{{ (fn['arguments'] if fn['arguments'] is defined else {}) | tojson }}{% endif %}"
    "{{ '}<|/tool_call|>' }}"
    "{% endfor %}"
    "{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


# For templates that know nothing of tools (SmolLM2-135M's): the Hermes convention, which the
# Qwen 2.5 and Hermes templates write themselves.
HERMES_TOOLS = (
    "You may call one or more functions to assist with the user query. The functions are "
    "listed within <tools></tools> tags:\n<tools>\n{tools}\n</tools>\n\nFor each call, "
    "return a JSON object with the function name and arguments within <tool_call></tool_call> "
    'tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n'
    "</tool_call>"
)


def hermes_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The conversation as a template without tool support can show it: the tool specs in the
    system message, and each earlier call as <tool_call> text in its assistant message (a
    template that ignores `tool_calls` would otherwise drop them, and the model would see
    results of calls it never made)."""
    out = [dict(m) for m in messages]
    for m in out:
        calls = m.pop("tool_calls", None) or []
        if calls:
            tags = "".join(f"<tool_call>\n{tool_call_json(c)}\n</tool_call>" for c in calls)
            m["content"] = ((m.get("content") or "") + "\n" + tags).strip()
    if tools:
        listed = HERMES_TOOLS.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0].get('content') or ''}\n\n{listed}".strip()
        else:
            out.insert(0, {"role": "system", "content": listed})
    return out


def template_text(tok, messages: list[dict], add_generation_prompt: bool, tools=None) -> str:
    """A conversation through the model's own Jinja chat template (as transformers does). A
    template that does not mention tools gets them, and earlier calls, in Hermes' format."""
    import jinja2

    if not tok.chat_template:
        raise ConversationError("this tokenizer has no chat template (a base model?)")
    if "tool" not in tok.chat_template:
        messages, tools = hermes_messages(messages, tools), None
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env.from_string(tok.chat_template).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        bos_token=tok.bos_token or "",
        eos_token=tok.eos_token or "",
    )


def _render_with_template(tok, messages: list[dict], add_generation_prompt: bool, tools):
    """Ids and loss mask for a model's own template: render growing prefixes of the
    conversation, and learn exactly the text each assistant message adds after its prompt."""
    ids: list[int] = []
    mask: list[int] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = template_text(tok, messages[:i], True, tools)
            ids += (new := tok.encode_with_special_tokens(prompt[len(done) :]))
            mask += [0] * len(new)
            done = prompt
        text = template_text(tok, messages[: i + 1], False, tools)
        ids += (new := tok.encode_with_special_tokens(text[len(done) :]))
        mask += [int(m["role"] == "assistant")] * len(new)
        done = text
    if add_generation_prompt:
        prompt = template_text(tok, messages, True, tools)
        ids += (new := tok.encode_with_special_tokens(prompt[len(done) :]))
        mask += [0] * len(new)
    return ids, mask


def fit_to_context(tok, messages: list[dict], budget: int) -> tuple[list[dict], int]:
    """(messages, how many were left out) so the rendered prompt takes at most `budget` tokens.

    The oldest turns go first, whole: what remains starts at a user message, system messages
    (custom instructions) always stay, and the last user message is never cut. A conversation
    whose newest message alone is too long raises ConversationError."""
    system = [m for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    dropped = 0
    while True:
        ids, _ = render(tok, system + rest, add_generation_prompt=True)
        if len(ids) <= budget:
            return system + rest, dropped
        starts = [i for i, m in enumerate(rest) if m.get("role") == "user" and i > 0]
        if not starts:
            raise ConversationError(
                f"the last message alone takes {len(ids)} tokens; the model's context leaves "
                f"{budget} for the prompt"
            )
        dropped += starts[0]
        rest = rest[starts[0] :]
