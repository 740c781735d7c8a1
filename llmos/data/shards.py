"""Token shards: a corpus tokenized once into flat memory-mapped files, and a batch loader.

Each document becomes `<|bos|> tokens...`, documents are concatenated and cut into shards of
at most `shard_tokens` tokens (uint16 when the vocabulary fits, as in nanoGPT). A `meta.json`
records a fingerprint of the tokenizer and the documents, so re-running on unchanged inputs
does nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llmos.common import arg, atomic_write_text
from llmos.data.corpora import CorpusError, Doc, load_corpus, split
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


class EpochOrder:
    """Item indices 0..n-1 in a fresh random order each epoch, the same for every rank; rank r
    of `world` takes positions r, r + world, r + 2·world, ... so ranks see disjoint data.

    (epoch, index) is the whole state: the order is recomputed from (seed, epoch), so a resumed
    run sees exactly the items an uninterrupted one would have."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.index, self._perm = 0, rank, None

    # The state is the global position (rank 0's): a run saved by N ranks resumes on M, each
    # rank starting at its own offset from it.
    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index - self.rank}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index, self._perm = state["epoch"], state["index"] + self.rank, None

    def peek(self) -> int:
        if self._perm is None:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return int(self._perm[self.index])

    def next(self) -> int:
        item = self.peek()
        self.index += self.world
        if self.index >= self.n:  # the epoch is over: the next one reshuffles
            self.epoch, self.index, self._perm = self.epoch + 1, self.rank, None
        return item


class TokenLoader:
    """(inputs, targets) batches of windows of seq_len+1 tokens, in a shuffled order per epoch.

    Windows are cut from the concatenated documents at fixed offsets (nanoGPT's way): a window
    may span a document boundary, where the BOS token tells the model a new text begins."""

    def __init__(
        self,
        shard_dir: str | Path,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        d = Path(shard_dir)
        meta = json.loads((d / "meta.json").read_text())
        self.meta = meta
        self.shards = [
            np.memmap(d / s["file"], dtype=meta["dtype"], mode="r") for s in meta["shards"]
        ]
        self.batch_size, self.seq_len = batch_size, seq_len
        counts = [max(0, (len(s) - 1) // seq_len) for s in self.shards]
        if sum(counts) < world:
            raise CorpusError(
                f"{d}: {meta['tokens']} tokens is less than one window of {seq_len} per rank"
            )
        self.starts = np.cumsum([0, *counts])  # window index where each shard begins
        self.n_windows = int(self.starts[-1])
        self.order = EpochOrder(self.n_windows, seed, rank, world)

    def state(self) -> dict:
        return self.order.state()

    def load_state(self, state: dict) -> None:
        self.order.load_state(state)

    def _window(self, w: int) -> np.ndarray:
        s = int(np.searchsorted(self.starts, w, side="right") - 1)
        off = (w - int(self.starts[s])) * self.seq_len
        return np.asarray(self.shards[s][off : off + self.seq_len + 1], dtype=np.int64)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self._window(self.order.next()) for _ in range(self.batch_size)]
        batch = torch.from_numpy(np.stack(rows))
        return batch[:, :-1], batch[:, 1:]


# -- `llmos tokenizer train` and `llmos tokenize` --------------------------------------------


@dataclass
class TokenizerTrainConfig:
    corpus: str = arg("default", "names, text files, globs or JSONL files, comma-separated")
    vocab_size: int = arg(
        4096, "tokens in the vocabulary (256 bytes + 16 special + merges)", lo=272
    )
    val_fraction: float = arg(
        0.05, "share of the documents held out (bytes/token is on these)", lo=0, hi=0.9
    )
    out: str = arg("", "the directory to write tokenizer.json into", required=True)


def train_tokenizer(c: TokenizerTrainConfig) -> Tokenizer:
    train, val = split(load_corpus(c.corpus), c.val_fraction)
    tok = Tokenizer.train((d.text for d in train), c.vocab_size)
    tok.save(c.out)
    bpt = tok.bytes_per_token(d.text for d in val)
    print(f"{c.out}: {tok.vocab_size} tokens; {bpt:.3f} bytes per token on the val split")
    return tok


@dataclass
class TokenizeConfig:
    corpus: str = arg("default", "names, text files, globs or JSONL files, comma-separated")
    tokenizer: str = arg("", "a model or tokenizer directory", required=True)
    val_fraction: float = arg(0.05, "share of the documents (by hash of their id) held out")
    out: str = arg("", "the directory for train/ and val/ shards", required=True)


def tokenize(c: TokenizeConfig) -> None:
    tok = Tokenizer.load(c.tokenizer)
    train, val = split(load_corpus(c.corpus), c.val_fraction)
    for name, docs in (("train", train), ("val", val)):
        d = build_shards(docs, tok, Path(c.out) / name)
        print(f"{d}: {len(docs)} documents")
