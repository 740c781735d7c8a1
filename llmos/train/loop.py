"""The training loop every stage shares: pretraining, fine-tuning, and later reward models,
DPO and RL.

A stage hands it a model, a loader with next()/state()/load_state(), a step function
`step(model, batch) -> (loss, tokens processed)` and an evaluation. The stage decides what a
batch is and what the loss is (next-token cross-entropy, a pairwise reward loss, DPO against a
frozen reference); the loop owns everything else: the optimizer (AdamW, warmup and cosine
decay), gradient accumulation and clipping, precision, the device, metrics.jsonl with
FLOPs, checkpoints (the model directory plus train_state.pt, written atomically), exact resume
and Ctrl-C.

Under `torchrun --nproc_per_node N` the same loop trains data-parallel: DDP (every rank holds
the model; gradients are averaged in backward) or, with --fsdp, FSDP2 (`fully_shard`: each rank
holds 1/N of every weight, gradient and optimizer state, gathered layer by layer). --batch-size
is the global batch, split across ranks, so a run's config, losses and checkpoints do not
depend on how many processes trained it: a run started on 2 ranks resumes on 1. Rank 0
prints, writes metrics and checkpoints; every rank evaluates (the same numbers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from llmos import runs
from llmos.checkpoint import clean_partial_writes, load_state, save_checkpoint
from llmos.common import (
    LlmosError,
    arg,
    check_config,
    device,
    dist_info,
    init_distributed,
    is_main,
    pick_dtype,
    write_json,
)
from llmos.model import Transformer


class ResumeError(LlmosError):
    """A --resume with nothing to resume or a different config, or a silent overwrite."""


@dataclass
class TrainConfig:
    """The optimisation settings every training stage shares. A stage's config extends this
    class (one level, no deeper) and may change a default by declaring the field again."""

    batch_size: int = arg(
        16, "sequences (rows) per micro-batch, over all ranks under torchrun", lo=1
    )
    grad_accum: int = arg(1, "micro-batches per optimizer step (the batch is their sum)", lo=1)
    max_steps: int = arg(1000, "optimizer steps to train for", lo=1)
    lr: float = arg(3e-3, "peak learning rate (AdamW), reached after the warmup", lo=0)
    min_lr_ratio: float = arg(0.1, "the cosine decay ends at lr times this", lo=0, hi=1)
    warmup_steps: int = arg(50, "steps of linear warmup from 0 to lr", lo=0)
    weight_decay: float = arg(0.1, "AdamW weight decay on matrices (never on norms)", lo=0)
    grad_clip: float = arg(1.0, "clip the gradient's global norm to this", lo=0)
    dtype: str = arg(
        "auto",
        "matmul precision: auto (bf16 autocast where the hardware computes in bf16: CUDA, "
        "AVX512-BF16 or AMX; else fp32), fp32, or bf16 (weights and optimizer stay fp32)",
        choices=["auto", "fp32", "bf16"],
    )
    fsdp: bool = arg(False, "under torchrun: shard weights, grads and optimizer (FSDP2), not DDP")
    compile: str = arg(
        "auto",
        "torch.compile the model for training: auto (on CUDA only; on a 2-core CPU it measured "
        "slower, bench/train.py), on, off",
        choices=["auto", "on", "off"],
    )
    eval_every: int = arg(100, "evaluate every this many steps (and at the last)", lo=1)
    eval_windows: int = arg(64, "val batches per periodic eval; the final eval uses all", lo=1)
    checkpoint_every: int = arg(250, "write a checkpoint every this many steps", lo=1)
    seed: int = arg(0, "seed for initialisation, data order and sampling")


def next_token_step(model: Transformer, batch) -> tuple[torch.Tensor, int]:
    """The language-modelling loss: (inputs, targets) or, for packed rows, (inputs, targets,
    segments); targets of -1 are not learned (prompts, padding)."""
    x, y, *segments = batch
    return model(x, y, segments=segments[0] if segments else None), x.numel()


def to_device(batch, dev: torch.device):
    """Every tensor in a (nested) tuple, list or dict of a batch, moved to `dev`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(dev, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, dev) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, dev) for v in batch)
    return batch


def lr_at(step: int, c: TrainConfig, horizon: int | None = None) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio·lr (Loshchilov & Hutter 2017) over
    `horizon` steps (c.max_steps). A run extended past its horizon goes on at the minimum."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    t = (step - c.warmup_steps) / max(1, (horizon or c.max_steps) - c.warmup_steps)
    return c.lr * (
        c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1)))
    )


def make_optimizer(model: Transformer, c: TrainConfig) -> torch.optim.AdamW:
    # Only what trains (LoRA freezes the base); no weight decay on norms (1-D); betas as in
    # GPT-3 / Llama.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": c.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=c.lr, betas=(0.9, 0.95), eps=1e-8)


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _check_resume(out: Path, c: TrainConfig) -> None:
    try:
        saved = json.loads((out / "run.json").read_text())["config"]
    except (OSError, ValueError, KeyError) as e:
        raise ResumeError(f"{out / 'run.json'}: unreadable ({e})") from None
    now = dataclasses.asdict(c)
    # max_steps may change: raising it extends a run (finished or not).
    diff = [
        f"{k}: {saved.get(k)!r} -> {v!r}"
        for k, v in now.items()
        if saved.get(k) != v and k not in ("max_steps", "fsdp", "compile")
    ]
    if diff:
        raise ResumeError(
            f"{out / 'run.json'}: --resume with a different config; fields that differ: "
            + "; ".join(diff)
        )


def check_start(out: Path, c: TrainConfig, resume: bool) -> bool:
    """Refuse a resume with a different config and a silent overwrite; clean what a killed
    write left behind. True when there is nothing to do: a --resume of a run that has already
    trained c.max_steps steps (it says so). A --resume of a run killed before its first
    checkpoint starts it again from step 0."""
    check_config(c)
    world = dist_info()[1]
    if c.batch_size % world:
        raise LlmosError(f"--batch-size {c.batch_size} does not split evenly over {world} ranks")
    state_path = out / "train_state.pt"
    if out.is_dir() and is_main():
        gone = clean_partial_writes(out)
        if gone:
            print(f"removed {len(gone)} leftovers of an interrupted write in {out}")
    if resume:
        if not state_path.exists():
            if not (out / "run.json").exists():
                raise ResumeError(f"{state_path}: nothing to resume (no training state)")
            _check_resume(out, c)
            print(f"{out}: stopped before its first checkpoint; starting again from step 0")
            return False
        _check_resume(out, c)
        step = load_state(state_path)["step"]
        if step >= c.max_steps:
            print(
                f"{out}: already trained {step} steps (--max-steps {c.max_steps}); nothing to "
                "do. Raise --max-steps to train on."
            )
            return True
    elif state_path.exists():
        raise ResumeError(f"{out} already holds a run; pass --resume or choose another --out")
    return False


@contextlib.contextmanager
def _ctrl_c_ends_the_step():
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler's or `kill`'s polite stop) lets the current step
    finish, then the loop saves and stops; a second one stops at once. A KeyboardInterrupt at
    an arbitrary point could leave a lock or a file half-written; a flag checked between steps
    cannot."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hits = []

    def on_sigint(*_):
        hits.append(1)
        if len(hits) > 1:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_sigint) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(hits)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train_loop(
    c: TrainConfig,
    out: Path,
    model: Transformer,
    tok,
    loader,
    evaluate: Callable[[Transformer, int | None], dict],
    kind: str,
    resume: bool = False,
    stop_at: int | None = None,
    export: Callable[[Transformer], Transformer] = lambda m: m,
    step_fn: Callable[[Transformer, object], tuple] = next_token_step,
) -> tuple[Transformer, bool]:
    """Train `model` for c.max_steps; (the model, whether it finished rather than stopped).

    Each micro-batch is `loader.next()` (this rank's share of the global batch), moved to the
    device, and `step_fn(model, batch)` gives its mean loss, the tokens it processed and,
    optionally, a dict of the stage's own metrics for metrics.jsonl (DPO's rewards/margins).
    `stop_at` ends early after that step, as Ctrl-C does. `export` turns the training model
    into the one saved as model.safetensors (LoRA merges there). Under torchrun every rank
    calls this; the model returned is whole (gathered from the shards with --fsdp)."""
    init_distributed()
    rank, world = dist_info()
    dev = device()
    model.to(dev)
    precision = pick_dtype(c.dtype, "training")
    state_path = out / "train_state.pt"
    step, flops, horizon = 0, 0.0, c.max_steps
    # Training FLOPs per token: 6N (forward 2N, backward 4N; Kaplan et al. 2020), N the
    # parameters that cost a multiply-add per token (all but the input embedding).
    flops_per_token = 6 * model.cfg.n_params_no_embedding
    state = load_state(state_path) if resume and state_path.exists() else None
    if state is not None:
        # The state holds the trainable tensors itself (all weights, or LoRA's adapters), so
        # it is complete on its own whatever happened to model.safetensors after it.
        missing = set(state["trainable"]) - set(dict(model.named_parameters()))
        if missing:
            raise ResumeError(f"{state_path}: parameters {sorted(missing)[:3]} not in the model")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in state["trainable"]:
                    p.copy_(state["trainable"][name])
    plain = model  # the module itself, whatever wraps or shards it for training
    model = _distribute(model, c) if world > 1 else model
    opt = make_optimizer(model, c)
    compiled = c.compile == "on" or (c.compile == "auto" and dev.type == "cuda")
    forward = torch.compile(model) if compiled else model  # what step_fn calls
    if state is not None:
        _load_optimizer(plain if not c.fsdp else model, opt, state["optimizer"])
        loader.load_state(state["loader"])
        _set_rng_state(state["rng"])
        step, flops = state["step"], state.get("flops", 0.0)
        # The LR schedule keeps the horizon it started with: raising --max-steps extends the
        # run at the minimum LR instead of jumping back up the cosine.
        horizon = state.get("horizon", c.max_steps)
        if is_main():
            runs.truncate_metrics(out, step)
            write_json(out / "run.json", {"config": dataclasses.asdict(c), "kind": kind})
            print(f"resuming from step {step}")
    elif is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        write_json(out / "run.json", {"config": dataclasses.asdict(c), "kind": kind})
    if world > 1 and is_main():
        print(f"{world} ranks, {'FSDP2' if c.fsdp else 'DDP'} over {dist.get_backend()}")

    def checkpoint():
        whole, opt_state = _gather(model, plain, opt, c)  # a collective under FSDP: all ranks
        if not is_main():
            return
        trainable = {n: p.detach().clone() for n, p in whole.named_parameters() if p.requires_grad}
        state = {
            "step": step,
            "flops": flops,
            "optimizer": opt_state,
            "loader": loader.state(),
            "rng": _rng_state(),
            "trainable": trainable,
            "horizon": horizon,
        }
        save_checkpoint(export(whole), tok, out, state)

    model.train()
    bar = tqdm(
        total=c.max_steps,
        initial=step,
        desc=kind,
        unit="step",
        dynamic_ncols=True,
        disable=not is_main(),
    )
    # Throughput is measured over windows of >= 10 s, so one slow step (an eval, a checkpoint,
    # another process stealing the CPU) does not dominate the figure.
    t_last, tokens_since = time.time(), 0
    with _ctrl_c_ends_the_step() as interrupted:
        while step < c.max_steps and not _any_rank(interrupted()):
            lr = lr_at(step, c, horizon)
            for g in opt.param_groups:
                g["lr"] = lr
            # Gradient accumulation: grad_accum micro-batches add their gradients, each loss
            # scaled by 1/grad_accum, so the step is the mean over the whole batch. Under DDP
            # only the last micro-batch averages gradients across ranks (no_sync before it).
            loss_sum, extras = 0.0, {}
            for micro in range(c.grad_accum):
                batch = to_device(loader.next(), dev)
                last = micro == c.grad_accum - 1
                sync = model.no_sync() if world > 1 and not c.fsdp and not last else _nothing()
                with sync, torch.autocast(dev.type, torch.bfloat16, enabled=precision == "bf16"):
                    loss, n_tokens, *more = step_fn(forward, batch)
                    (loss / c.grad_accum).backward()
                loss_sum += loss.detach() / c.grad_accum
                for k, v in (more[0] if more else {}).items():  # a stage's own metrics
                    extras[k] = extras.get(k, 0.0) + float(v) / c.grad_accum
                tokens_since += n_tokens * world
                flops += flops_per_token * n_tokens * world
            loss_sum = float(_mean_over_ranks(loss_sum))
            # Clipping the global norm keeps a rare huge gradient (a loss spike) from undoing
            # what was learned; the norm itself is logged as a health signal.
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: DTensor
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            dt = time.time() - t_last
            tps = tokens_since / dt if dt > 0 else 0.0
            row = {
                "step": step,
                "loss": loss_sum,
                "lr": lr,
                "grad_norm": float(norm),
                "tok_per_s": tps,
                "flops": flops,
                **extras,
            }
            if step % c.eval_every == 0 or step == c.max_steps:
                row |= evaluate(plain if not c.fsdp else model, c.eval_windows)
                model.train()
                shown = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("val_"))
                if is_main():
                    bar.write(f"step {step}: loss {loss_sum:.3f}, {shown}")
            if is_main():
                runs.append_metrics(out, [row])
            bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            if dt > 10:
                t_last, tokens_since = time.time(), 0
            if step % c.checkpoint_every == 0 and step < c.max_steps:
                checkpoint()
            if stop_at is not None and step >= stop_at:
                break
    finished = step >= c.max_steps
    bar.close()
    # Always checkpoint on the way out: after the last step, after Ctrl-C, after stop_at.
    checkpoint()
    if not finished and is_main():
        print(f"stopped at step {step}; checkpoint saved in {out}; continue with --resume")
    whole = _gather(model, plain, None, c)[0] if c.fsdp and world > 1 else plain
    whole.eval()
    return whole, finished


# -- data parallel (torchrun) -------------------------------------------------------------


@contextlib.contextmanager
def _nothing():
    yield


def _distribute(model: Transformer, c: TrainConfig):
    """Wrap for DDP, or shard each block and then the rest with FSDP2 (fully_shard, the
    per-parameter DTensor FSDP of torch >= 2.4)."""
    if c.fsdp:
        from torch.distributed.fsdp import fully_shard

        if any(not p.requires_grad for p in model.parameters()):
            raise LlmosError("--fsdp trains every weight; use DDP (no --fsdp) with LoRA")
        for block in model.model.layers:
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    dev = device()
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    if dist_info()[1] > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= dist_info()[1]
    return x


def _any_rank(flag: bool) -> bool:
    """A stop asked of one rank (Ctrl-C reaches all of torchrun's, a SIGTERM maybe one) stops
    all of them at the same step, or the others would wait for it forever."""
    if dist_info()[1] == 1:
        return flag
    t = torch.tensor([float(flag)], device=device())
    dist.all_reduce(t)
    return bool(t.item())


def _gather(model, plain: Transformer, opt, c: TrainConfig):
    """(the whole model, the optimizer's state keyed by parameter name) for a checkpoint. Under
    FSDP every rank takes part and rank 0 receives them; otherwise the model is `plain`."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    sharded = c.fsdp and dist_info()[1] > 1
    if sharded:  # a forward without backward (an eval) leaves the root's weights gathered
        from torch.distributed.fsdp import FSDPModule

        for m in model.modules():
            if isinstance(m, FSDPModule):
                m.reshard()
    full = StateDictOptions(full_state_dict=True, cpu_offload=sharded)
    opt_state = (
        get_optimizer_state_dict(model if sharded else plain, opt, options=full) if opt else None
    )
    if not sharded:
        return plain, opt_state
    weights = get_model_state_dict(model, options=full)
    whole = type(plain)(plain.cfg)
    if is_main():
        whole.load_state_dict(weights)
    return whole, opt_state


def _load_optimizer(model, opt, saved: dict) -> None:
    """Optimizer state by parameter name (any world size, DDP or FSDP); the older state keyed by
    position loads as it was saved."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    if all(isinstance(k, int) for k in saved["state"]):
        opt.load_state_dict(saved)
        return
    sharded = (
        dist_info()[1] > 1
        and dist.is_initialized()
        and any(hasattr(p, "full_tensor") for p in model.parameters())
    )
    options = StateDictOptions(full_state_dict=True) if sharded else None
    set_optimizer_state_dict(model, opt, saved, options=options)
