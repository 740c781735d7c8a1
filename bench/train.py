"""Training throughput and model FLOPs utilization (MFU) of a preset, against this machine's peak.

Achieved FLOP/s counts 6·N per token (forward 2N, backward 4N; Kaplan et al. 2020), N the
parameters without the input embedding (the output head counted). The peak is a large square
matmul measured in the same run, in fp32 and in bf16, so the ratio is robust to a noisy machine.

    python bench/train.py --preset micro --batch-size 16
"""

from __future__ import annotations

import argparse
import time

import torch

from llmos.common import set_threads
from llmos.config import preset
from llmos.model import Transformer
from llmos.train.loop import TrainConfig, make_optimizer


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def train_speed(name: str, batch: int, bf16: bool, steps: int) -> float:
    cfg = preset(name)
    model = Transformer(cfg)
    model.init_weights()
    opt = make_optimizer(model, TrainConfig())
    T = cfg.max_position_embeddings
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, T), generator=g)
    y = torch.randint(0, cfg.vocab_size, (batch, T), generator=g)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * T * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    set_threads()
    cfg = preset(args.preset)
    n = cfg.n_params_no_embedding
    print(
        f"preset {args.preset}: {cfg.n_params / 1e6:.2f}M parameters, N = {n / 1e6:.2f}M "
        f"without the embedding; batch {args.batch_size}×{cfg.max_position_embeddings}; "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(
        f"matmul peak (2048³): fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s"
    )
    print(f"{'precision':22s} {'tokens/s':>10s} {'GFLOP/s':>9s} {'MFU':>7s}")
    for label, bf16 in (("fp32", False), ("bf16 autocast", True)):
        tps = train_speed(args.preset, args.batch_size, bf16, args.steps)
        flops = 6 * n * tps
        ref = peak["bf16" if bf16 else "fp32"]
        print(f"{label:22s} {tps:10,.0f} {flops / 1e9:9.1f} {flops / ref:7.1%}")


if __name__ == "__main__":
    main()
