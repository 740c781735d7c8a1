"""Decode speed: the llmos engine (fp32, bf16, int8) vs Hugging Face `generate` vs run.py.

Batch-1 decode reads every weight once per token, so its ceiling is memory bandwidth over
weight bytes. This script measures this machine's read bandwidth in the same run and prints
each engine's tokens/s as a fraction of that bound, for the llama2.c stories15M and
stories110M shapes (random weights) and SmolLM2-135M (real weights, `llmos pull smollm2`).

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
from llmos.checkpoint import load_model, save_weights
from llmos.common import set_threads
from llmos.config import preset
from llmos.infer.engine import Engine, SamplingConfig
from llmos.model import Transformer


class IdsOnly:
    """The engine's tokenizer interface without text: the benchmark needs only token ids."""

    eos_id = None

    def decode_bytes(self, ids) -> bytes:
        return b""


def read_bandwidth(gb: float = 1.0) -> float:
    """Bytes/s of the fastest streaming read we find: sums over an array far larger than the
    caches, by torch (2 threads) and numpy (1 thread)."""
    a = torch.ones(int(gb * 2**30) // 4)
    best = min(min(_timed(f) for _ in range(5)) for f in (a.sum, a.numpy().sum))
    return a.numel() * 4 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def weight_bytes(model: Transformer, dtype: str) -> int:
    """Bytes read per decoded token: every matrix but the embedding table, plus norms."""
    per = {"fp32": 4, "bf16": 2, "int8": 1}[dtype]
    total = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name and not model.cfg.tie_word_embeddings:
            continue
        total += p.numel() * (per if p.dim() == 2 else 4)  # a tied table counts once, as the head
    return total


def best_of(runs: int, fn) -> float:
    """The best of several runs: this machine is shared and noisy."""
    return max(fn() for _ in range(runs))


def engine_speed(model, dtype: str, batch: int, n: int) -> float:
    engine = Engine(model, IdsOnly(), dtype)
    return best_of(3, lambda: _engine_once(engine, batch, n))


def _engine_once(engine: Engine, batch: int, n: int) -> float:
    prompts = [[1 + (7 * i + j) % 100 for j in range(16)] for i in range(batch)]
    s = SamplingConfig(temperature=0, max_new_tokens=n + 1)
    stream = engine.stream(prompts, s)
    for _ in range(batch):  # the first token of each row comes from the prefill
        next(stream)
    t = time.perf_counter()
    count = sum(1 for _ in stream)
    return count / (time.perf_counter() - t)


def hf_speed(model_dir: Path, n: int) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    x = torch.tensor([[1 + j for j in range(16)]])

    def gen(k):
        with torch.no_grad():
            hf.generate(x, max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=0)

    gen(2)
    return best_of(3, lambda: (n - 1) / (_timed(lambda: gen(n)) - _timed(lambda: gen(1))))


def runpy_speed(model_dir: Path, n: int) -> float:
    def once() -> float:
        m = runpy.Llama(model_dir, 16 + n + 1)
        tok = int(np.argmax(m.forward(np.arange(1, 17))))
        t = time.perf_counter()
        for _ in range(n):
            tok = int(np.argmax(m.forward(np.array([tok]))))
        return n / (time.perf_counter() - t)

    return best_of(3, once)


def model_dir_for(name: str, tmp: Path) -> Path:
    if name == "smollm2":
        from llmos.convert import pull

        return pull("smollm2", tmp / name)
    d = tmp / name
    m = Transformer(preset(name))
    m.init_weights(seed=0)
    d.mkdir()
    save_weights(m, d / "model.safetensors")
    m.cfg.save(d / "config.json")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="stories15M,stories110M,smollm2")
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    set_threads()
    n = args.new_tokens
    bw = read_bandwidth()
    print(
        f"read bandwidth {bw / 1e9:.1f} GB/s; {torch.get_num_threads()} threads; "
        f"decode {n} tokens after a 16-token prompt"
    )
    show("model", "engine", "batch", "tok/s", "bound", "of bound")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            d = model_dir_for(name, Path(tmp))
            model = load_model(d)
            speed = {}
            for dtype in ("fp32", "bf16", "int8"):
                bound = bw / weight_bytes(model, dtype)
                for batch in (1, 8):
                    speed[dtype, batch] = tps = engine_speed(model, dtype, batch, n)
                    frac = tps / bound if batch == 1 else None  # the bound is for batch 1
                    show(name, f"llmos {dtype}", batch, tps, bound, frac)
            bound = bw / weight_bytes(model, "fp32")
            hf, rp = hf_speed(d, n), runpy_speed(d, n)
            show(name, "HF generate fp32", 1, hf, bound, hf / bound)
            show(name, "run.py (numpy)", 1, rp, bound, rp / bound)
            print(
                f"{name}: engine fp32 / HF = {speed['fp32', 1] / hf:.1f}x, "
                f"batch 8 / batch 1 = {speed['fp32', 8] / speed['fp32', 1]:.1f}x (fp32), "
                f"{speed['bf16', 8] / speed['bf16', 1]:.1f}x (bf16), run.py / HF = {rp / hf:.1f}x"
            )


def show(name, engine, batch, tps, bound, frac) -> None:
    cells = [f"{x:.1f}" if isinstance(x, float) else str(x) for x in (tps, bound)]
    frac = "" if frac is None else frac if isinstance(frac, str) else f"{frac:.0%}"
    print(f"{name:12s} {engine:16s} {batch!s:>5s} {cells[0]:>9s} {cells[1]:>9s} {frac:>8s}")


if __name__ == "__main__":
    main()
