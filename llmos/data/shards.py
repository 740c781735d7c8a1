"""Token shards: a corpus tokenized once into flat memory-mapped files, and a batch loader.

Each document becomes `<|bos|> tokens...`, documents are concatenated and cut into shards of
at most `shard_tokens` tokens (uint16 when the vocabulary fits, as in nanoGPT). A `meta.json`
records a fingerprint of the tokenizer and the documents, so re-running on unchanged inputs
does nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llmos.checkpoint import atomic_write_text
from llmos.data.corpora import Doc
from llmos.tokenizer import Tokenizer


def fingerprint(docs: list[Doc], tok: Tokenizer | None = None) -> str:
    """A short hash of the documents (and the tokenizer): the cache key of derived files."""
    h = hashlib.sha256(tok.tk.to_str().encode() if tok else b"")
    for d in docs:
        h.update(d.id.encode() + b"\0" + d.text.encode() + b"\0")
    return h.hexdigest()[:16]


def build_shards(
    docs: list[Doc], tok: Tokenizer, out_dir: str | Path, shard_tokens: int = 100_000_000
) -> Path:
    """Tokenize `docs` into out_dir/shard_NNNN.bin; skipped if out_dir already holds them."""
    out = Path(out_dir)
    key = fingerprint(docs, tok)
    meta_path = out / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("fingerprint") == key:
        return out
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    files, buf, n_buf, total = [], [], 0, 0

    def flush():
        nonlocal buf, n_buf
        if not n_buf:
            return
        path = out / f"shard_{len(files):04d}.bin"
        tmp = path.with_suffix(".tmp")
        np.concatenate(buf).astype(dtype).tofile(tmp)
        tmp.replace(path)
        files.append({"file": path.name, "tokens": n_buf})
        buf, n_buf = [], 0

    bar = tqdm(total=sum(len(d.text) for d in docs), unit="char", unit_scale=True, desc="tokenize")
    for i in range(0, len(docs), 256):
        chunk = docs[i : i + 256]
        for ids in tok.encode_batch([d.text for d in chunk]):
            arr = np.array([tok.bos_id, *ids], dtype=np.int64)
            buf.append(arr)
            n_buf += len(arr)
            total += len(arr)
            if n_buf >= shard_tokens:
                flush()
        bar.update(sum(len(d.text) for d in chunk))
    bar.close()
    flush()
    meta = {
        "fingerprint": key,
        "dtype": np.dtype(dtype).name,
        "tokens": total,
        "docs": len(docs),
        "bytes": sum(len(d.text.encode()) for d in docs),
        "shards": files,
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return out


class TokenLoader:
    """(inputs, targets) batches of windows of seq_len+1 tokens, in a shuffled order per epoch.

    The position (epoch, index) is the whole state, so a resumed run sees exactly the batches
    an uninterrupted one would have."""

    def __init__(self, shard_dir: str | Path, batch_size: int, seq_len: int, seed: int = 0):
        d = Path(shard_dir)
        meta = json.loads((d / "meta.json").read_text())
        self.meta = meta
        self.shards = [
            np.memmap(d / s["file"], dtype=meta["dtype"], mode="r") for s in meta["shards"]
        ]
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        counts = [max(0, (len(s) - 1) // seq_len) for s in self.shards]
        if sum(counts) < 1:
            raise ValueError(f"{d}: {meta['tokens']} tokens is less than one window of {seq_len}")
        self.starts = np.cumsum([0, *counts])  # window index where each shard begins
        self.n_windows = int(self.starts[-1])
        self.epoch, self.index = 0, 0
        self._order = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index, self._order = state["epoch"], state["index"], None

    def _window(self, w: int) -> np.ndarray:
        s = int(np.searchsorted(self.starts, w, side="right") - 1)
        off = (w - int(self.starts[s])) * self.seq_len
        return np.asarray(self.shards[s][off : off + self.seq_len + 1], dtype=np.int64)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(self.batch_size):
            if self._order is None:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(
                    self.n_windows
                )
            rows.append(self._window(int(self._order[self.index])))
            self.index += 1
            if self.index == self.n_windows:
                self.epoch, self.index, self._order = self.epoch + 1, 0, None
        batch = torch.from_numpy(np.stack(rows))
        return batch[:, :-1], batch[:, 1:]

    def sequential(self, max_windows: int | None = None):
        """Every window once, in order (for evaluation)."""
        n = self.n_windows if max_windows is None else min(max_windows, self.n_windows)
        for i in range(0, n, self.batch_size):
            batch = torch.from_numpy(
                np.stack([self._window(w) for w in range(i, min(i + self.batch_size, n))])
            )
            yield batch[:, :-1], batch[:, 1:]
