"""Byte-level BPE (Sennrich et al. 2016; GPT-2's byte-to-unicode trick) on Hugging Face tokenizers.

Every byte is a token, so any input, even invalid UTF-8, round-trips. The special tokens chat
and tool use need are reserved from day one at ids 0..15, and plain text never produces one:
`encode` treats "<|user|>" typed by a person as the characters it is made of. Only code that
renders conversations puts special ids into a sequence, by id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [
    BOS,  # starts every document and every conversation
    EOS,  # ends a completion
    PAD,
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",  # a tool's result, as a message
    "<|end|>",  # ends a message
    "<|tool_call|>",  # {"name": ..., "arguments": {...}}
    "<|/tool_call|>",
    "<|think|>",
    "<|/think|>",
    "<|image|>",
    "<|audio|>",
    "<|reserved_0|>",
    "<|reserved_1|>",
]


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (the alphabet of byte-level BPE)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


class Tokenizer:
    """A `tokenizer.json` plus the special tokens named in `tokenizer_config.json`."""

    def __init__(
        self,
        tk: HFTokenizer,
        bos: str = BOS,
        eos: str = EOS,
        pad: str | None = PAD,
        chat_template: str | None = None,
    ):
        self.tk = tk
        self.tk.encode_special_tokens = True  # plain text never yields a special token
        self.bos_token, self.eos_token, self.pad_token = bos, eos, pad
        self.bos_id = tk.token_to_id(bos)
        self.eos_id = tk.token_to_id(eos)
        self.vocab_size = tk.get_vocab_size()
        self.special_ids = {t.content: i for i, t in tk.get_added_tokens_decoder().items()}
        # llmos's own conversation format where its tokens exist; a model's own template wins.
        self.llmos_format = all(t in self.special_ids for t in SPECIAL_TOKENS[:10])
        self.chat_template = chat_template or (CHAT_TEMPLATE if self.llmos_format else None)
        unbyte = {c: b for b, c in byte_to_unicode().items()}
        self.id_bytes: list[bytes] = [b""] * self.vocab_size
        for piece, i in tk.get_vocab().items():
            if piece in self.special_ids:
                self.id_bytes[i] = piece.encode()
            else:
                self.id_bytes[i] = bytes(unbyte[c] for c in piece)
        self._byte_id = {self.id_bytes[i]: i for i in range(self.vocab_size)}

    # -- training and files ------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, show_progress: bool = True) -> Tokenizer:
        if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
            raise ValueError(f"vocab size {vocab_size} is below 256 bytes + special tokens")
        tk = HFTokenizer(models.BPE())
        # Digits one by one (as Llama does) so arithmetic sees place value consistently.
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        tk.train_from_iterator(texts, trainer)
        # A text on its own (a document, a prompt to continue) starts with BOS, as in training.
        tk.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", special_tokens=[(BOS, tk.token_to_id(BOS))]
        )
        return cls(tk)

    @classmethod
    def load(cls, model_dir: str | Path) -> Tokenizer:
        d = Path(model_dir)
        path = d / "tokenizer.json"
        try:
            tk = HFTokenizer.from_file(str(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing (a model dir needs tokenizer.json)") from None
        except Exception as e:
            raise ValueError(f"{path}: not a Hugging Face tokenizer file ({e})") from None
        cfg_path = d / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}

        def name(key: str, default: str | None) -> str | None:
            v = cfg.get(key, default)
            return v.get("content") if isinstance(v, dict) else v

        return cls(
            tk,
            name("bos_token", BOS),
            name("eos_token", EOS),
            name("pad_token", PAD),
            cfg.get("chat_template"),
        )

    def save(self, model_dir: str | Path, model_max_length: int = 2048) -> None:
        from llmos.checkpoint import atomic_write_text

        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "tokenizer.json", self.tk.to_str(pretty=False))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        atomic_write_text(d / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")

    # -- text <-> ids ------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ids of plain text: no BOS added, no special token ever produced."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """Ids of text rendered by a chat template, where "<|im_start|>" means the token."""
        self.tk.encode_special_tokens = False
        try:
            return self.tk.encode(text, add_special_tokens=False).ids
        finally:
            self.tk.encode_special_tokens = True

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a text to continue: the tokenizer's prefix (BOS for llmos models) + text."""
        return self.tk.encode(text, add_special_tokens=True).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids of arbitrary bytes: valid UTF-8 runs as text, any other byte as its byte token."""
        ids: list[int] = []
        while data:
            try:
                ids += self.encode(data.decode("utf-8"))
                break
            except UnicodeDecodeError as e:
                ids += self.encode(data[: e.start].decode("utf-8"))
                ids += [self._byte_id[bytes([b])] for b in data[e.start : e.end]]
                data = data[e.end :]
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.id_bytes[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """UTF-8 length of each token, 0 for special tokens: the denominator of bits per byte."""
        n = [0 if i in self.special_ids.values() else len(b) for i, b in enumerate(self.id_bytes)]
        return np.array(n, dtype=np.int64)

    def bytes_per_token(self, texts: Iterable[str]) -> float:
        texts = list(texts)
        n_bytes = sum(len(t.encode()) for t in texts)
        n_tokens = sum(len(ids) for ids in self.encode_batch(texts))
        return n_bytes / max(n_tokens, 1)


# -- conversations --------------------------------------------------------------------------
#
# <|bos|><|system|>...<|end|><|user|>...<|end|><|assistant|>text<|tool_call|>{"name": ...,
# "arguments": {...}}<|/tool_call|><|end|><|tool|>result<|end|><|assistant|>...<|end|>
#
# The model is trained on what follows <|assistant|>: its text, its tool calls and the <|end|>
# that closes its turn (so it learns to stop); never on system, user or tool text.

ROLES = ("system", "user", "assistant", "tool")


class ConversationError(ValueError):
    pass


def tool_call_json(call: dict) -> str:
    """One OpenAI-style tool call as the JSON the model writes; `arguments` kept verbatim when
    it is already a JSON string (as OpenAI sends it), so the Jinja template can match."""
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return '{"name": ' + json.dumps(fn["name"], ensure_ascii=False) + ', "arguments": ' + args + "}"


def check_conversation(messages, where: str = "conversation") -> None:
    if not isinstance(messages, list) or not messages:
        raise ConversationError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ConversationError(f"{where}: message {i} needs a role in {ROLES}")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise ConversationError(f"{where}: message {i} 'content' must be a string")
        if m.get("tool_calls") and m["role"] != "assistant":
            raise ConversationError(f"{where}: message {i}: only assistants make tool calls")
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise ConversationError(f"{where}: message {i}: a tool call needs a function name")


def render(
    tok: Tokenizer,
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


def template_text(
    tok: Tokenizer, messages: list[dict], add_generation_prompt: bool, tools=None
) -> str:
    """A conversation through the model's own Jinja chat template (as transformers does)."""
    import jinja2

    if not tok.chat_template:
        raise ConversationError("this tokenizer has no chat template (a base model?)")
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env.from_string(tok.chat_template).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        bos_token=tok.bos_token or "",
        eos_token=tok.eos_token or "",
    )


def _render_with_template(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool, tools):
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
