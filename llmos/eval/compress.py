"""Compression, measured: the model's ideal code length next to gzip, bz2 and xz.

A model that assigns probability p to the next token can code it in -log2 p bits (with an
arithmetic coder, to within a couple of bits per file). Summed over a text and divided by its
bytes this is bits per byte, the same number as the val loss in nats / ln 2 / bytes-per-token,
and directly comparable to what general-purpose compressors achieve on the same bytes.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmos.checkpoint import load_model
from llmos.common import LlmosError, arg
from llmos.data.corpora import load_corpus, split
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer


@torch.no_grad()
def model_bits(
    model: Transformer,
    ids: np.ndarray,
    token_bytes: np.ndarray,
    seq_len: int,
    batch_size: int = 8,
    max_windows: int | None = None,
    bf16: bool = False,
) -> tuple[float, int, int]:
    """(bits, bytes, tokens) for every token of `ids` but the first, in windows of seq_len
    (or in `max_windows` of them spread evenly over the text).

    Windows overlap by one token, so each token is predicted exactly once. Special tokens
    (0 bytes, e.g. the BOS between documents) count in neither sum, as in nanochat."""
    ids = np.asarray(ids, dtype=np.int64)
    n = max(0, (len(ids) - 1 + seq_len - 1) // seq_len)
    windows = np.arange(n)
    if max_windows is not None and max_windows < n:  # spread evenly over the whole text
        windows = np.linspace(0, n - 1, max_windows).round().astype(int)
    tb = torch.from_numpy(np.asarray(token_bytes, dtype=np.int64))
    bits, n_bytes, n_tokens = 0.0, 0, 0
    was_training = model.training
    model.eval()
    for b in range(0, len(windows), batch_size):
        rows = [ids[w * seq_len : w * seq_len + seq_len + 1] for w in windows[b : b + batch_size]]
        width = max(len(r) for r in rows)
        x = torch.zeros(len(rows), width - 1, dtype=torch.long)
        y = torch.full((len(rows), width - 1), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            r = torch.from_numpy(r)
            x[i, : len(r) - 1], y[i, : len(r) - 1] = r[:-1], r[1:]
        y[tb[y.clamp(min=0)] == 0] = -1  # no bits, no bytes for special tokens and padding
        dev = next(model.parameters()).device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            nats = model(x.to(dev), y.to(dev), reduction="sum")
        bits += nats.item() / math.log(2)
        n_bytes += int(tb[y[y >= 0]].sum())
        n_tokens += int((y >= 0).sum())
    model.train(was_training)
    return bits, n_bytes, n_tokens


def compressor_bits(data: bytes) -> dict[str, float]:
    """Bits per byte of `data` under gzip -9, bz2 -9 and xz -9 (the standard library's codecs)."""
    n = max(len(data), 1)
    return {
        "gzip -9": 8 * len(gzip.compress(data, 9)) / n,
        "bz2 -9": 8 * len(bz2.compress(data, 9)) / n,
        "xz -9": 8 * len(lzma.compress(data, preset=9)) / n,
    }


def val_ids(model_dir: str | Path, tok: Tokenizer) -> np.ndarray:
    """The val split of the corpus a model was pretrained on, as `<|bos|> doc` token ids."""
    run = Path(model_dir) / "run.json"
    if not run.exists():
        raise LlmosError(f"{run}: missing, so the model's val text is unknown; pass --text")
    c = json.loads(run.read_text())["config"]
    _, val = split(load_corpus(c["corpus"]), c["val_fraction"])
    return np.array([i for d in val for i in (tok.bos_id, *tok.encode(d.text))], dtype=np.int64)


def compress_report(model_dir: str | Path, text_file: str | Path | None = None) -> dict[str, float]:
    """Print and return bits per byte of a text under the model and the standard compressors."""
    model, tok = load_model(model_dir), Tokenizer.load(model_dir)
    if text_file:
        try:
            data = Path(text_file).read_bytes()
        except OSError as e:
            raise LlmosError(f"{text_file}: cannot be read ({e.strerror})") from None
        ids = np.array([tok.bos_id, *tok.encode_bytes(data)])
    else:
        ids = val_ids(model_dir, tok)
    token_bytes = tok.token_bytes()
    bits, n_bytes, _ = model_bits(model, ids, token_bytes, model.cfg.max_position_embeddings)
    data = tok.decode_bytes(i for i in ids if token_bytes[i])
    result = {"model": bits / max(n_bytes, 1), **compressor_bits(data)}
    print(f"{text_file or 'val split'}: {len(data):,} bytes")
    for name, bpb in result.items():
        print(f"  {name:8s} {bpb:6.3f} bits/byte  ({bpb * len(data) / 8:12,.0f} bytes)")
    return result


@dataclass
class CompressConfig:
    model_dir: str = arg("", "the model directory", positional=True)
    text: str = arg("", "a text file; empty: the val split of the model's pretraining corpus")


def compress(c: CompressConfig) -> dict[str, float]:
    return compress_report(c.model_dir, c.text or None)
