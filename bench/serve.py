"""Serving throughput: aggregate generated tokens/s and time to first token at 1, 4 and 16
concurrent streaming clients against `llmos serve` (continuous batching), in one run.

The server runs in its own process; each client streams one chat completion of exactly
--new-tokens tokens (the special tokens are biased out, so no reply ends early), and every
client runs --rounds requests back to back. The peer is the same server with one client:
the target is 16 clients ≥ 4x one client's aggregate tokens/s.

    python bench/serve.py [--model DIR] [--preset stories15M] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from llmos.checkpoint import save_model_dir
from llmos.config import preset
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer

WORDS = "the king queen sword river light dark night day fair love crown ship sea wind".split()


def random_model(name: str, out: Path) -> Path:
    """A model of a preset's shape with random weights and a small trained tokenizer."""
    r = random.Random(0)
    texts = [" ".join(r.choice(WORDS) for _ in range(200)) for _ in range(50)]
    tok = Tokenizer.train(texts, 512, show_progress=False)
    model = Transformer(preset(name, vocab_size=tok.vocab_size))
    model.init_weights(seed=0)
    save_model_dir(model, tok, out)
    return out


def start_server(model_dir: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llmos.cli", "serve", str(model_dir), "--port", str(port)]
    cmd += ["--max-batch", str(max_batch), "--db", str(model_dir / "chats.sqlite")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


async def one_stream(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, int]:
    """(seconds to the first token, tokens received) for one streamed completion."""
    t0, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first or float("nan"), tokens


async def load(url: str, model: str, clients: int, rounds: int, new_tokens: int, bias) -> dict:
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker(k: int):
            out = []
            for j in range(rounds):
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": f"Tell story {k}-{j} of the sea."}],
                    "max_tokens": new_tokens,
                    "temperature": 0.8,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "logit_bias": bias,
                }
                out.append(await one_stream(client, url, body))
            return out

        t = time.perf_counter()
        results = [x for w in await asyncio.gather(*(worker(k) for k in range(clients))) for x in w]
        wall = time.perf_counter() - t
    ttft = [r[0] for r in results]
    return {
        "clients": clients,
        "tok_s": sum(r[1] for r in results) / wall,
        "ttft_ms": 1000 * statistics.median(ttft),
        "ttft_p90_ms": 1000 * sorted(ttft)[math.ceil(0.9 * len(ttft)) - 1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a model directory (default: random weights, --preset)")
    ap.add_argument("--preset", default="stories15M")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,16")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else random_model(args.preset, Path(tmp) / "m")
        tok = Tokenizer.load(model_dir)
        bias = {str(i): -100 for i in tok.special_ids.values()}
        proc, url = start_server(model_dir, max(levels))
        try:
            name = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            asyncio.run(load(url, name, 1, 1, 8, bias))  # warm up
            rows = [
                asyncio.run(load(url, name, c, args.rounds, args.new_tokens, bias)) for c in levels
            ]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    base = rows[0]["tok_s"]
    print(f"llmos serve, {args.model or args.preset + ' (random weights)'}, {os.cpu_count()} CPUs")
    print(f"{args.new_tokens} tokens per request, {args.rounds} requests per client")
    print("| clients | aggregate tok/s | vs 1 client | TTFT median | TTFT p90 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['tok_s']:.0f} | {r['tok_s'] / base:.1f}x |"
            f" {r['ttft_ms']:.0f} ms | {r['ttft_p90_ms']:.0f} ms |"
        )
    top = rows[-1]
    ratio = top["tok_s"] / base
    verdict = "met" if ratio >= 4 else "missed"
    print(f"target: {top['clients']} clients ≥ 4x one client: {ratio:.1f}x ({verdict})")


if __name__ == "__main__":
    main()
