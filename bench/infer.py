"""Decode speed at batch 1: llmos against llama.cpp, transformers and its own numpy runner.

Batch-1 decode reads every weight once per token, so its ceiling is memory bandwidth over
weight bytes. This script measures this machine's read bandwidth in the same run and prints
each engine's tokens/s and its fraction of that bound, for the llama2.c stories15M and
stories110M shapes (random weights, a synthetic full-size BPE vocabulary) and SmolLM2-135M
(real weights, `llmos pull smollm2`). Peers, measured in the same run:

- llama.cpp through `llama-cpp-python` (pip install '.[bench]' builds it from its sdist for
  this CPU), on GGUFs that llmos exports: F32, F16 and Q8_0; one decode call + argmax per token
- transformers `generate` (fp32, greedy), and llmos's own `run.py` (numpy)
- llmos's torch decoder (the path used on GPUs and where no C compiler is found)

llmos rows go through `Engine.stream` (sampling included). The table ends with the ratios the
targets are stated in.

    python bench/infer.py [--models stories15M,stories110M,smollm2] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmos import run as runpy
from llmos.checkpoint import load_model, save_model_dir
from llmos.common import pick_dtype, set_threads
from llmos.config import preset
from llmos.infer.engine import Decoder, Engine, SamplingConfig
from llmos.infer.native import native_error
from llmos.model import Transformer
from llmos.tokenizer import SPECIAL_TOKENS, Tokenizer, byte_to_unicode

PROMPT = [1 + j for j in range(16)]


def read_bandwidth(gb: float = 1.0) -> float:
    """Bytes/s of the fastest streaming read we find: sums over an array far larger than the
    caches, by torch (all threads) and numpy (1 thread)."""
    a = torch.ones(int(gb * 2**30) // 4)
    best = min(min(_timed(f) for _ in range(5)) for f in (a.sum, a.numpy().sum))
    return a.numel() * 4 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def weight_bytes(model: Transformer, dtype: str) -> int:
    """Bytes read per decoded token: every matrix but the embedding table, plus norms (Q8:
    1 byte per weight and a 4-byte scale per 32)."""
    per = {"fp32": 4, "F32": 4, "bf16": 2, "F16": 2, "int8": 1.125, "Q8_0": 1.0625}[dtype]
    total = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name and not model.cfg.tie_word_embeddings:
            continue
        total += p.numel() * (per if p.dim() == 2 else 4)  # a tied table counts once, as the head
    return int(total)


def best_of(runs: int, fn) -> float:
    """The best of several runs: this machine is shared and noisy."""
    return max(fn() for _ in range(runs))


def engine_speed(engine: Engine, n: int, batch: int = 1) -> float:
    """Tokens/s of all rows together, after the prefill (which gives each row's first)."""

    def once() -> float:
        s = SamplingConfig(temperature=0, max_new_tokens=n + 1)
        stream = engine.stream([PROMPT] * batch, s)
        for _ in range(batch):
            next(stream)
        t = time.perf_counter()
        count = sum(1 for _ in stream)
        return count / (time.perf_counter() - t)

    return best_of(3, once)


def llama_cpp_speed(gguf: Path, n: int) -> float:
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=len(PROMPT) + n + 8, n_threads=torch.get_num_threads(),
                n_threads_batch=torch.get_num_threads(), verbose=False)  # fmt: skip
    vocab = llm.n_vocab()

    def once() -> float:
        llm.reset()
        llm.eval(PROMPT)
        logits = lambda: np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))  # noqa: E731
        tok = int(np.argmax(logits()))
        t = time.perf_counter()
        for _ in range(n):
            llm.eval([tok])
            tok = int(np.argmax(logits()))
        return n / (time.perf_counter() - t)

    speed = best_of(3, once)
    llm.close()
    return speed


def hf_speed(model_dir: Path, n: int) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    x = torch.tensor([PROMPT])

    def gen(k):
        with torch.no_grad():
            hf.generate(x, max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=0)

    gen(2)
    return best_of(3, lambda: (n - 1) / (_timed(lambda: gen(n)) - _timed(lambda: gen(1))))


def runpy_speed(model_dir: Path, n: int) -> float:
    def once() -> float:
        m = runpy.Llama(model_dir, len(PROMPT) + n + 1)
        tok = int(np.argmax(m.forward(np.array(PROMPT))))
        t = time.perf_counter()
        for _ in range(n):
            tok = int(np.argmax(m.forward(np.array([tok]))))
        return n / (time.perf_counter() - t)

    return best_of(3, once)


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE of exactly vocab_size tokens (bytes, then pairs of bytes as merges,
    then llmos's special tokens): what a random-weight model needs to export to GGUF."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    chars = list(byte_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    merges = []
    pairs = ((a, b) for a in chars for b in chars)
    while len(vocab) < vocab_size - len(SPECIAL_TOKENS):
        a, b = next(pairs)
        merges.append((a, b))
        vocab[a + b] = len(vocab)
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIAL_TOKENS)
    return Tokenizer(tk)


def model_dir_for(name: str, tmp: Path) -> Path:
    if name == "smollm2":
        from llmos.convert import pull

        return pull("smollm2", tmp / name)
    m = Transformer(preset(name))
    m.init_weights(seed=0)
    save_model_dir(m, synthetic_tokenizer(m.cfg.vocab_size), tmp / name)
    return tmp / name


def show(name, engine, tps, bound) -> None:
    print(f"{name:12s} {engine:26s} {tps:9.1f} {bound:9.1f} {tps / bound:8.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="stories15M,stories110M,smollm2")
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    set_threads()
    n = args.new_tokens
    bw = read_bandwidth()
    try:
        import llama_cpp  # noqa: F401

        have_llama_cpp = True
    except ImportError:
        have_llama_cpp = False
    print(
        f"read bandwidth {bw / 1e9:.1f} GB/s; {torch.get_num_threads()} threads; decode {n} "
        f"tokens after a {len(PROMPT)}-token prompt, batch 1, greedy, best of 3\n"
        f"llmos native decode: {native_error() or 'built'}; --dtype auto chooses "
        f"{pick_dtype('auto', 'decode')}; llama.cpp: "
        f"{'llama-cpp-python' if have_llama_cpp else 'not installed (pip install .[bench])'}"
    )
    print(f"{'model':12s} {'engine':26s} {'tok/s':>9s} {'bound':>9s} {'of bound':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            d = model_dir_for(name, Path(tmp))
            model = load_model(d)
            tok = Tokenizer.load(d)
            speed = {}
            for dtype in ("fp32", "bf16", "int8"):
                speed[dtype] = engine_speed(Engine(model, tok, dtype), n)
                show(name, f"llmos {dtype}", speed[dtype], bw / weight_bytes(model, dtype))
            for dtype in ("fp32", "int8"):  # the batcher's case: 8 rows share each weight read
                speed[dtype, 8] = engine_speed(Engine(model, tok, dtype), n, batch=8)
                print(f"{name:12s} {'llmos ' + dtype + ', batch 8':26s} {speed[dtype, 8]:9.1f}")
            torch_engine = Engine(model, tok, "fp32")
            torch_engine.model = Decoder(model, "fp32")
            speed["torch"] = engine_speed(torch_engine, n)
            show(name, "llmos torch decoder fp32", speed["torch"], bw / weight_bytes(model, "fp32"))
            if have_llama_cpp:
                from llmos.convert import export_gguf

                for qtype in ("F32", "F16", "Q8_0"):
                    gguf = export_gguf(d, Path(tmp) / f"{name}-{qtype}.gguf", qtype)
                    speed[qtype] = llama_cpp_speed(gguf, n)
                    show(name, f"llama.cpp {qtype}", speed[qtype], bw / weight_bytes(model, qtype))
                    gguf.unlink()
            speed["hf"], speed["run.py"] = hf_speed(d, n), runpy_speed(d, n)
            show(name, "HF generate fp32", speed["hf"], bw / weight_bytes(model, "fp32"))
            show(name, "run.py (numpy)", speed["run.py"], bw / weight_bytes(model, "fp32"))
            ratios = [
                f"fp32 / run.py {speed['fp32'] / speed['run.py']:.2f}x",
                f"fp32 / torch decoder {speed['fp32'] / speed['torch']:.2f}x",
                f"fp32 / HF {speed['fp32'] / speed['hf']:.1f}x",
                f"fp32 batch 8 / batch 1 {speed['fp32', 8] / speed['fp32']:.1f}x",
            ]
            if have_llama_cpp:
                ratios += [
                    f"fp32 / llama.cpp F32 {speed['fp32'] / speed['F32']:.2f}x",
                    f"int8 / llama.cpp Q8_0 {speed['int8'] / speed['Q8_0']:.2f}x",
                ]
            print(f"{name}: " + ", ".join(r for r in ratios if r))


if __name__ == "__main__":
    main()
