#!/usr/bin/env python3
"""The second file: run a Llama-format model directory with numpy and the standard library alone.

    python llmos/run.py MODEL_DIR --prompt "ROMEO:" --max-new-tokens 100 [--temperature 0]

It reads config.json, model.safetensors (fp32, fp16 or bf16) and tokenizer.json (byte-level BPE)
by itself, keeps a KV cache, and handles grouped-query attention and tied embeddings. In the
spirit of llama2.c's run.c: the whole inference path on one screen, no framework.
"""

import argparse
import json
import mmap
import re
import struct
import sys
import time
from pathlib import Path

import numpy as np

# -- the parameters file ---------------------------------------------------------------------


def read_safetensors(path):
    """{name: float32 array} from a .safetensors file: 8-byte header size, JSON header, data."""
    f = open(path, "rb")
    buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = np.frombuffer(buf, dtype=np.uint8, count=end - start, offset=8 + n + start)
        if info["dtype"] == "F32":
            a = raw.view("<f4")
        elif info["dtype"] == "F16":
            a = raw.view("<f2").astype(np.float32)
        elif info["dtype"] == "BF16":  # bf16 is the top half of an fp32
            a = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            sys.exit(f"{path}: tensor {name} has dtype {info['dtype']}; run.py reads F32/F16/BF16")
        out[name] = a.reshape(info["shape"])
    return out


def load_weights(model_dir, cfg):
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    w = {}
    for f in files:
        w.update(read_safetensors(d / f))
    if "lm_head.weight" not in w:  # tied embeddings
        w["lm_head.weight"] = w["model.embed_tokens.weight"]
    # Keep every matrix as W^T, contiguous: x @ Wt streams memory in order (batch-1 decode is
    # memory-bound, so the access pattern is the speed).
    return {
        k: (
            np.ascontiguousarray(v.T)
            if v.ndim == 2 and "embed" not in k
            else np.asarray(v, np.float32)
        )
        for k, v in w.items()
    }


# -- the network -----------------------------------------------------------------------------


class Llama:
    def __init__(self, model_dir, max_len):
        c = json.loads((Path(model_dir) / "config.json").read_text())
        self.n_layers = c["num_hidden_layers"]
        self.n_heads = c["num_attention_heads"]
        self.n_kv = c.get("num_key_value_heads") or self.n_heads
        self.hd = c.get("head_dim") or c["hidden_size"] // self.n_heads
        self.eps = c.get("rms_norm_eps", 1e-5)
        theta = (c.get("rope_parameters") or {}).get("rope_theta") or c.get("rope_theta", 10000.0)
        self.w = load_weights(model_dir, c)
        inv = 1.0 / theta ** (np.arange(0, self.hd, 2, dtype=np.float32) / self.hd)
        ang = np.outer(np.arange(max_len, dtype=np.float32), inv)
        self.cos, self.sin = np.cos(ang), np.sin(ang)  # (max_len, hd/2), applied to both halves
        self.k = np.zeros((self.n_layers, max_len, self.n_kv, self.hd), np.float32)
        self.v = np.zeros_like(self.k)
        self.pos = 0

    def norm(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, start):
        # Rotate the two halves of each head, as Hugging Face does (rotate_half).
        T, half = x.shape[0], self.hd // 2
        cos, sin = self.cos[start : start + T, None, :], self.sin[start : start + T, None, :]
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    def forward(self, tokens):
        """Logits of the last position after feeding `tokens` at positions pos, pos+1, ..."""
        w, T, p0 = self.w, len(tokens), self.pos
        x = w["model.embed_tokens.weight"][tokens].astype(np.float32)
        group = self.n_heads // self.n_kv
        for i in range(self.n_layers):
            L = f"model.layers.{i}."
            h = self.norm(x, w[L + "input_layernorm.weight"])
            q = self.rope(
                (h @ w[L + "self_attn.q_proj.weight"]).reshape(T, self.n_heads, self.hd), p0
            )
            k = self.rope((h @ w[L + "self_attn.k_proj.weight"]).reshape(T, self.n_kv, self.hd), p0)
            self.k[i, p0 : p0 + T] = k
            self.v[i, p0 : p0 + T] = (h @ w[L + "self_attn.v_proj.weight"]).reshape(
                T, self.n_kv, self.hd
            )
            K, V = self.k[i, : p0 + T], self.v[i, : p0 + T]  # (S, kv, hd)
            qg = q.reshape(T, self.n_kv, group, self.hd)  # query heads share their group's key
            scores = (
                np.einsum("tkgd,skd->kgts", qg, K) * self.hd**-0.5
            )  # a Python float: keeps float32 (NEP 50)
            causal = np.arange(p0 + T)[None, :] > (p0 + np.arange(T))[:, None]
            scores = np.where(causal, -np.inf, scores)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            att = np.einsum("kgts,skd->tkgd", scores, V).reshape(T, -1)
            x = x + att @ w[L + "self_attn.o_proj.weight"]
            h = self.norm(x, w[L + "post_attention_layernorm.weight"])
            gate = h @ w[L + "mlp.gate_proj.weight"]
            x = (
                x
                + (gate / (1 + np.exp(-gate)) * (h @ w[L + "mlp.up_proj.weight"]))
                @ w[L + "mlp.down_proj.weight"]
            )
        self.pos += T
        return self.norm(x[-1], w["model.norm.weight"]) @ w["lm_head.weight"]


# -- the tokenizer: byte-level BPE (GPT-2) ----------------------------------------------------

# GPT-2's pre-tokenizer regex, with \p{L} and \p{N} spelled in the standard library's `re`.
GPT2_SPLIT = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:(?![^\W\d_]|\d)\S)+|\s+(?!\S)|\s+"""
)


def bytes_to_unicode():
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


class Tokenizer:
    def __init__(self, model_dir):
        d = Path(model_dir)
        t = json.loads((d / "tokenizer.json").read_text())
        if t["model"]["type"] != "BPE":
            sys.exit(f"{d}/tokenizer.json: {t['model']['type']} model; run.py reads byte-level BPE")
        self.vocab = t["model"]["vocab"]
        merges = [
            tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in t["model"]["merges"]
        ]
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.id_to_piece = {i: s for s, i in self.vocab.items()}
        self.special = {a["id"]: a["content"] for a in t.get("added_tokens", [])}
        self.id_to_piece.update(self.special)
        pre = json.dumps(t.get("pre_tokenizer"))
        self.split_digits = '"individual_digits": true' in pre
        self.b2u = bytes_to_unicode()
        self.u2b = {c: b for b, c in self.b2u.items()}
        self.cache = {}
        # BOS (or whatever the tokenizer's post-processor puts before a single text).
        post = t.get("post_processor") or {}
        posts = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
        self.prefix = []
        for p in posts:
            for item in p.get("single", []) if p.get("type") == "TemplateProcessing" else []:
                if "Sequence" in item:
                    break
                self.prefix.append(p["special_tokens"][item["SpecialToken"]["id"]]["ids"][0])
        # Stop at the end-of-sequence tokens of tokenizer_config.json and generation_config.json.
        self.stop = set()
        for name in ("tokenizer_config.json", "generation_config.json"):
            c = json.loads((d / name).read_text()) if (d / name).exists() else {}
            eos = c.get("eos_token_id", c.get("eos_token"))
            for e in eos if isinstance(eos, list) else [eos]:
                e = e.get("content") if isinstance(e, dict) else e
                self.stop.add(
                    e if isinstance(e, int) else {v: k for k, v in self.special.items()}.get(e)
                )
        self.stop.discard(None)

    def bpe(self, word):
        """Merge the lowest-ranked adjacent pair until none is in the merge table."""
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [
                (self.ranks.get((a, b), 1 << 62), i)
                for i, (a, b) in enumerate(zip(parts, parts[1:]))
            ]
            rank, i = min(pairs)
            if rank == 1 << 62:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        pieces = re.findall(r"\d|\D+", text) if self.split_digits else [text]
        ids = []
        for piece in pieces:
            for word in GPT2_SPLIT.findall(piece):
                ids += self.bpe("".join(self.b2u[b] for b in word.encode("utf-8")))
        return ids

    def decode_bytes(self, ids):
        out = b""
        for i in ids:
            piece = self.id_to_piece[i]
            out += piece.encode() if i in self.special else bytes(self.u2b[c] for c in piece)
        return out


# -- sampling and the main loop -------------------------------------------------------------


def sample(logits, temperature, top_p, rng):
    if temperature <= 0:
        return int(np.argmax(logits))
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(len(p), p=p))


def generate(model, tok, prompt_ids, max_new_tokens, temperature=0.0, top_p=1.0, seed=None):
    """Yield new token ids: prefill the prompt in one pass, then one token per forward."""
    rng = np.random.default_rng(seed)
    logits = model.forward(np.array(prompt_ids))
    for _ in range(max_new_tokens):
        t = sample(logits, temperature, top_p, rng)
        yield t
        if t in tok.stop:
            return
        logits = model.forward(np.array([t]))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="run.py", description="Run a Llama-format model with numpy.")
    ap.add_argument("model_dir")
    ap.add_argument("--prompt", default="")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--ids", action="store_true", help="print token ids, not text")
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        ap.error("--max-new-tokens must be >= 1, --temperature >= 0, --top-p in (0, 1]")
    try:
        tok = Tokenizer(args.model_dir)
        prompt = tok.prefix + tok.encode(args.prompt)
        model = Llama(args.model_dir, len(prompt) + args.max_new_tokens)
    except OSError as e:  # a missing or unreadable file: its name, not a traceback
        sys.exit(f"run.py: error: {e.filename or args.model_dir}: {e.strerror or e}")
    except (ValueError, KeyError, TypeError) as e:  # a file not as a model directory has it
        sys.exit(f"run.py: error: {args.model_dir}: not a model directory run.py reads ({e!r})")
    t0, out, pending = time.time(), [], b""
    if not args.ids:
        sys.stdout.write(args.prompt)
    for t in generate(
        model, tok, prompt, args.max_new_tokens, args.temperature, args.top_p, args.seed
    ):
        out.append(t)
        if not args.ids:
            pending += tok.decode_bytes([t])
            try:
                sys.stdout.write(pending.decode("utf-8"))
                pending = b""
            except UnicodeDecodeError:
                pass
            sys.stdout.flush()
    print(" ".join(map(str, out)) if args.ids else "")
    print(f"{len(out) / (time.time() - t0):.1f} tokens/s", file=sys.stderr)


if __name__ == "__main__":
    main()
