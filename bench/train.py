"""Training throughput: llmos's layouts against nanoGPT, and MFU against this machine's peak.

The configuration is the issue's: 8 layers × 256 wide, vocab 8192, 256 tokens, batch 16, fp32
(llmos: a Llama with SwiGLU 688 wide, so both models have ~0.79M parameters a layer). Each
row is a full optimizer step (forward, backward, clip, AdamW) on the same random batch:

- nanoGPT: its `model.py` (GPT, `configure_optimizers`) driven the way its `train.py` drives it,
  from a checkout given by --nanogpt (not shipped with llmos); skipped without one
- llmos, one process on all cores: plain AdamW, fused AdamW, and `torch.compile` of the model
- llmos under torchrun: N processes of cores/N threads each, DDP over gloo, the global batch
  split among them (what `llmos pretrain` does under torchrun)

Achieved FLOP/s counts 6·N per token (Kaplan et al. 2020; N without the input embedding); the
peak is a 2048³ fp32 matmul measured in the same run. The fastest layout is printed last:
`llmos speedrun` uses it.

    python bench/train.py [--steps 8] [--nanogpt ~/src/nanoGPT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from llmos.common import dist_info, init_distributed, set_threads
from llmos.config import ModelConfig
from llmos.model import Transformer
from llmos.train.loop import TrainConfig, make_optimizer

SHAPE = dict(layers=8, dim=256, heads=8, vocab=8192, seq=256, batch=16)


def llmos_config() -> ModelConfig:
    s = SHAPE
    return ModelConfig(
        hidden_size=s["dim"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["heads"],
        intermediate_size=688,
        max_position_embeddings=s["seq"],
        vocab_size=s["vocab"],
        tie_word_embeddings=True,
    )


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def tokens_per_s(model, opt, batch: int, steps: int, loss_fn) -> float:
    """Tokens/s of full optimizer steps on one random batch (2 warmup steps first)."""
    g = torch.Generator().manual_seed(dist_info()[0])
    x = torch.randint(0, SHAPE["vocab"], (batch, SHAPE["seq"]), generator=g)
    y = torch.randint(0, SHAPE["vocab"], (batch, SHAPE["seq"]), generator=g)

    def step():
        loss_fn(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if dist_info()[1] > 1:
        torch.distributed.barrier()
    t = _timed(lambda: [step() for _ in range(steps)])
    return batch * SHAPE["seq"] * steps / t * dist_info()[1]


def llmos_speed(steps: int, fused: bool = False, compiled: bool = False, world: int = 1) -> float:
    torch.manual_seed(0)
    model = Transformer(llmos_config())
    model.init_weights()
    opt = make_optimizer(model, TrainConfig())
    if fused:
        opt = torch.optim.AdamW(opt.param_groups, betas=(0.9, 0.95), fused=True)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    fwd = torch.compile(model) if compiled else model
    return tokens_per_s(model, opt, SHAPE["batch"] // world, steps, lambda m, x, y: fwd(x, y))


def nanogpt_speed(path: str, steps: int) -> float:
    sys.path.insert(0, path)
    from model import GPT, GPTConfig  # nanoGPT's model.py

    s = SHAPE
    cfg = GPTConfig(s["seq"], s["vocab"], s["layers"], s["heads"], s["dim"], 0.0, False)
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")
    return tokens_per_s(model, opt, s["batch"], steps, lambda m, x, y: m(x, y)[1])


def torchrun_speed(world: int, steps: int) -> float:
    """DDP over `world` processes, started with torchrun as a user would."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(world), __file__, "--worker", "--steps", str(steps)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])["tok_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps per row")
    ap.add_argument("--nanogpt", default="", help="a nanoGPT checkout to measure as the peer")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_threads()
    if args.worker:  # one rank of torchrun_speed
        init_distributed()
        tps = llmos_speed(args.steps, world=dist_info()[1])
        if dist_info()[0] == 0:
            print(json.dumps({"tok_per_s": tps}))
        return
    cores = os.cpu_count() or 1
    n = llmos_config().n_params_no_embedding
    peak = matmul_peak()
    print(
        f"8 layers x 256, vocab 8192, seq 256, batch 16, fp32; N = {n / 1e6:.2f}M; {cores} cores; "
        f"torch {torch.__version__}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    rows = {}
    if args.nanogpt:
        rows["nanoGPT train.py loop"] = nanogpt_speed(args.nanogpt, args.steps)
    rows[f"llmos, 1 process x {cores} threads"] = llmos_speed(args.steps)
    rows["llmos, fused AdamW"] = llmos_speed(args.steps, fused=True)
    rows["llmos, torch.compile"] = llmos_speed(args.steps, compiled=True)
    for world in sorted({2, cores} - {1}):
        if world <= cores:
            rows[f"llmos, torchrun {world} x {cores // world} threads"] = torchrun_speed(
                world, args.steps
            )
    ref = rows.get("nanoGPT train.py loop")
    print(f"{'layout':34s} {'tokens/s':>9s} {'MFU':>6s} {'vs nanoGPT':>10s}")
    for name, tps in rows.items():
        vs = f"{tps / ref:.2f}x" if ref else "-"
        print(f"{name:34s} {tps:9,.0f} {6 * n * tps / peak:6.1%} {vs:>10s}")
    best = max((k for k in rows if k.startswith("llmos")), key=rows.get)
    print(f"fastest llmos layout here: {best}")


if __name__ == "__main__":
    main()
