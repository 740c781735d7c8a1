"""Pretraining: compress a corpus into the parameters by predicting the next token.

corpus -> tokenizer (trained and cached unless given) -> token shards (cached) -> AdamW with
warmup and cosine decay, gradient accumulation and clipping, optional bf16 autocast ->
a model directory that is also the run directory: config.json, model.safetensors and the
tokenizer files beside train_state.pt, run.json, metrics.jsonl, loss.png and report.md.
Resume continues exactly: same data position, RNG and optimizer state.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmos import runs
from llmos.common import arg, atomic_write_text, cache_dir, dist_info, is_main, pick_dtype
from llmos.config import PRESETS, preset
from llmos.data.corpora import load_corpus, split
from llmos.data.shards import TokenLoader, build_shards, fingerprint
from llmos.eval.compress import compressor_bits, model_bits
from llmos.infer.engine import Engine, SamplingConfig
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer
from llmos.train.loop import TrainConfig, check_start, train_loop

log = logging.getLogger("llmos")


@dataclass
class PretrainConfig(TrainConfig):
    preset: str = arg("micro", "model shape (llmos presets lists them)", choices=list(PRESETS))
    corpus: str = arg("default", "names, text files, globs or JSONL files, comma-separated")
    tokenizer: str = arg(
        "",
        "a model or tokenizer directory to take the tokenizer from; "
        "empty: train one on the corpus (cached)",
    )
    vocab_size: int = arg(0, "tokens in a trained tokenizer; 0: the preset's", lo=0)
    seq_len: int = arg(0, "tokens per training window; 0: the preset's context length", lo=0)
    val_fraction: float = arg(
        0.05, "share of the documents (by hash of their id) held out", lo=0, hi=0.9
    )


def prepare_tokenizer(c: PretrainConfig, train_docs, val_docs, vocab_size: int) -> Tokenizer:
    """The given tokenizer, or one trained on the train split (cached by corpus and size)."""
    if c.tokenizer:
        return Tokenizer.load(c.tokenizer)
    key = fingerprint(train_docs)
    d = cache_dir() / "tokenizers" / f"{key}-{vocab_size}"
    if (d / "tokenizer.json").exists():
        return Tokenizer.load(d)
    tok = Tokenizer.train((doc.text for doc in train_docs), vocab_size)
    tok.save(d)
    print(
        f"tokenizer: {tok.vocab_size} tokens, {tok.bytes_per_token(v.text for v in val_docs):.2f}"
        " bytes/token on val"
    )
    return tok


def pretrain(c: PretrainConfig, out: str | Path, resume: bool = False, stop_at: int | None = None):
    """Train and return the run directory. `stop_at` ends early after that step (as Ctrl-C)."""
    out = Path(out)
    if check_start(out, c, resume):
        return out
    t_start = time.time()
    torch.manual_seed(c.seed)

    docs = load_corpus(c.corpus)
    train_docs, val_docs = split(docs, c.val_fraction)
    if not val_docs:
        val_docs, train_docs = train_docs[-1:], train_docs[:-1] or train_docs
    cfg = preset(c.preset)
    tok = prepare_tokenizer(c, train_docs, val_docs, c.vocab_size or cfg.vocab_size)
    cfg = preset(
        c.preset,
        vocab_size=tok.vocab_size,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        **({"max_position_embeddings": c.seq_len} if c.seq_len else {}),
    )
    seq_len = cfg.max_position_embeddings
    shard_root = cache_dir() / "shards"
    train_dir = build_shards(train_docs, tok, shard_root / fingerprint(train_docs, tok))
    val_dir = build_shards(val_docs, tok, shard_root / fingerprint(val_docs, tok))
    rank, world = dist_info()  # under torchrun each rank reads its share of every batch
    loader = TokenLoader(train_dir, c.batch_size // world, seq_len, c.seed, rank, world)
    val_ids = np.concatenate([np.asarray(s) for s in TokenLoader(val_dir, 1, 1).shards])
    token_bytes = tok.token_bytes()

    model = Transformer(cfg)
    model.init_weights(c.seed)
    print(
        f"model: preset {c.preset}, {cfg.n_params / 1e6:.2f}M parameters "
        f"({cfg.n_params_no_embedding / 1e6:.2f}M without the embedding), "
        f"train {loader.meta['tokens']:,} tokens, val {len(val_ids):,} tokens"
    )

    def evaluate(model: Transformer, windows: int | None) -> dict:
        bf16 = pick_dtype(c.dtype, "training") == "bf16"
        bits, nb, nt = model_bits(model, val_ids, token_bytes, seq_len, 8, windows, bf16)
        return {"val_bpb": bits / nb, "val_loss": bits * math.log(2) / nt}

    model, finished = train_loop(c, out, model, tok, loader, evaluate, "pretrain", resume, stop_at)
    if not finished or not is_main():
        return out
    final = evaluate(model, None)
    runs.plot_curves(out, ["loss", "val_loss"])
    sample = sample_text(model, tok, "", 200, seed=c.seed)
    comp = compressor_bits(tok.decode_bytes(i for i in val_ids if token_bytes[i]))
    write_report(out, c, cfg, final, comp, sample, time.time() - t_start)
    bpb, xz = final["val_bpb"], comp["xz -9"]
    print(f"val bits per byte {bpb:.3f} (xz -9: {xz:.3f}); report in {out}/report.md")
    print("sample:\n" + sample)
    return out


def sample_text(model, tok: Tokenizer, prompt: str, n: int, seed: int = 0) -> str:
    """A continuation of `prompt` as a document begins in the shards: BOS, then the text.
    (Not `encode_prompt`: a borrowed tokenizer such as SmolLM2's adds no BOS, and an empty
    prompt was then no token at all.)"""
    s = SamplingConfig(temperature=0.8, top_k=50, seed=seed, max_new_tokens=n)
    ids = [tok.bos_id, *tok.encode(prompt)]
    return prompt + Engine(model, tok).generate([ids], s)[0].text


def write_report(out: Path, c, cfg, final: dict, comp: dict, sample: str, seconds: float) -> None:
    rows = runs.read_metrics(out)
    tps = [r["tok_per_s"] for r in rows if r.get("tok_per_s")]
    comp_rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in comp.items())
    text = f"""# Pretraining report

- preset `{c.preset}`: {cfg.n_params / 1e6:.2f}M parameters, {cfg.num_hidden_layers} layers,
  width {cfg.hidden_size}, context {cfg.max_position_embeddings}, vocab {cfg.vocab_size}
- corpus `{c.corpus}`; {c.max_steps} steps of {c.batch_size}×{c.grad_accum} sequences of
  {cfg.max_position_embeddings} tokens
- wall time {seconds / 60:.1f} min; median throughput {np.median(tps) if tps else 0:,.0f} tokens/s
  ({"bf16 autocast" if pick_dtype(c.dtype, "training") == "bf16" else "fp32"}, \
{dist_info()[1]} process(es) of {torch.get_num_threads()} threads)

## Result

Val bits per byte **{final["val_bpb"]:.3f}** (val loss {final["val_loss"]:.3f} nats/token).

| coder on the val text | bits per byte |
|---|---|
| this model (ideal code length) | {final["val_bpb"]:.3f} |
{comp_rows}

![loss](loss.png)

## Sample (temperature 0.8, top-k 50)

```
{sample}
```
"""
    atomic_write_text(out / "report.md", text)
