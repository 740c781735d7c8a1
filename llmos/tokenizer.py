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

from llmos.chat_format import CHAT_TEMPLATE
from llmos.common import LlmosError, atomic_write_text

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
            raise LlmosError(f"vocab size {vocab_size} is below 256 bytes + special tokens")
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
        if not path.is_file():
            raise LlmosError(f"{path}: missing (a model dir needs tokenizer.json)")
        try:
            tk = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise LlmosError(f"{path}: not a Hugging Face tokenizer file ({e})") from None
        cfg_path = d / "tokenizer_config.json"
        try:
            cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        except json.JSONDecodeError as e:
            raise LlmosError(f"{cfg_path}: not valid JSON ({e})") from None

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
