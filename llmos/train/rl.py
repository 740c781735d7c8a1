"""`llmos rl`: reinforcement learning with verifiable rewards, by GRPO.

Where a program can check the answer (a sum, a countdown expression), the reward needs no
model of human preference, and there is nothing to hack but the checker: the model practises
against it and can improve past whatever taught it, as AlphaGo's policy did against the game
(Silver et al. 2016). Each step: G answers to each of the batch's training questions from the
current policy (the engine prefills a question once and forks it G ways), each scored by the
task's checker, and the GRPO update (Shao et al. 2024, DeepSeekMath):

    A_i  = (r_i - mean(r)) / (std(r) + eps)                          over the question's group
    loss = -1/G sum_i 1/|o_i| sum_t [ min(rho A_i, clip(rho, 1-e, 1+e) A_i) - beta KL_t ]

with rho = pi(o_t) / pi_old(o_t), the policy against itself when the answers were sampled.
Normalising by the group's spread makes every question's signal the same size whether its
rewards are 0/1 or 0.05/1 (reasoning-gym's partial credit); a group that is all right or all
wrong has no signal and contributes nothing. The KL term is the "k3" estimator
pi_ref/pi - log(pi_ref/pi) - 1 (Schulman 2020), unbiased and never negative; beta 0 (the
default, as DAPO and Dr. GRPO run it) skips the reference entirely. The sampling, the
reference's log-probs and the loop are `llmos rlhf`'s (train/rlhf.py, RolloutLoader); only the
advantage, the clipped per-token loss and the evaluation differ.

Held-out evaluation at every eval: greedy accuracy by the checkers, and pass@1 and pass@k
from k samples per question at the sampling temperature (the unbiased estimator of Chen et al.
2021): RL typically raises pass@1 much more than pass@k (it sharpens what the model can
already sample; Yue et al. 2025).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from llmos import runs, tasks
from llmos.checkpoint import load_model
from llmos.common import LlmosError, arg, atomic_write_text, dist_info, is_main, write_json
from llmos.eval.tasks import heldout
from llmos.tokenizer import Tokenizer
from llmos.train import lora
from llmos.train.loop import TrainConfig, check_start, train_loop
from llmos.train.rlhf import RolloutLoader, k3, make_scorer, token_logps


@dataclass
class RLConfig(TrainConfig):
    base: str = arg("", "the policy to start from (and the KL's reference)", positional=True)
    task: str = arg("chain", "the task: its train questions, its checker as the reward")
    reward: str = arg("task", "task (the checker), or rm:DIR (a reward model or verifier)")
    group_size: int = arg(8, "answers sampled per question (GRPO's G)", lo=2)
    clip: float = arg(0.2, "the ratio's clip range e (PPO's epsilon)", lo=0)
    kl_coef: float = arg(
        0.0, "beta of the k3 KL to the reference in the loss; 0: no reference", lo=0
    )
    updates_per_batch: int = arg(
        1, "optimizer steps on each batch of rollouts (GRPO's mu; >1 makes the clip bite)", lo=1
    )
    missing_eos_penalty: float = arg(
        1.0, "subtracted from the reward of an answer that never ends its turn", lo=0
    )
    max_new_tokens: int = arg(0, "longest answer; 0: the task's evaluation budget", lo=0)
    temperature: float = arg(1.0, "sampling temperature of the rollouts (and of pass@k)", lo=0.05)
    eval_n: int = arg(50, "held-out questions at each eval", lo=1)
    eval_k: int = arg(8, "samples per held-out question for pass@1 and pass@k", lo=1)
    task_size: int = arg(2000, "training questions", lo=1)
    lora_rank: int = lora.rank_arg()
    lora_alpha: float = lora.alpha_arg()
    # RL defaults (help as in TrainConfig); batch_size counts questions.
    batch_size: int = 8
    max_steps: int = 200
    lr: float = 1e-5
    min_lr_ratio: float = 1.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    eval_every: int = 20


def grpo_advantages(returns: torch.Tensor, k: int, eps: float = 1e-4) -> torch.Tensor:
    """Each return minus its group's mean, over the group's standard deviation (groups of k
    consecutive entries). A group whose returns are all equal gets advantages of 0.

    >>> [round(a, 3) for a in grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4).tolist()]
    [0.866, -0.866, -0.866, 0.866]
    """
    g = returns.view(-1, k)
    return ((g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + eps)).flatten()


def grpo_step(model, batch: dict, clip: float, kl_coef: float, temperature: float = 1.0):
    """The GRPO loss of a batch of rollouts: the clipped surrogate per token, minus beta times
    the k3 KL per token, averaged over each answer's tokens and then over answers."""
    logp = token_logps(model, batch["ids"], batch["targets"], temperature)
    mask = (batch["targets"] >= 0).float()
    ratio = torch.exp(logp - batch["old_logp"])
    adv = batch["advantage"][:, None]
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    per_token = -surrogate
    metrics = {}
    if kl_coef:
        kl = k3(batch["ref_logp"], logp)
        per_token = per_token + kl_coef * kl
        metrics["kl"] = ((kl * mask).sum() / mask.sum().clamp(min=1)).detach()
    lengths = mask.sum(-1).clamp(min=1)
    loss = ((per_token * mask).sum(-1) / lengths).mean()
    clipped = ((ratio - 1).abs() > clip).float()
    metrics |= {
        "reward": batch["reward"].mean(),
        "length": batch["length"].mean(),
        "clipped": (clipped * mask).sum() / mask.sum().clamp(min=1),
        "entropy": -(logp.detach() * mask).sum() / mask.sum().clamp(min=1),
    }
    return loss, int(mask.sum()), metrics


def rl(c: RLConfig, out: str | Path, resume: bool = False, stop_at: int | None = None) -> Path:
    """`llmos rl`: c.base improved against c.task's checker by GRPO, into `out`."""
    out = Path(out)
    if c.batch_size % dist_info()[1]:
        raise LlmosError("--batch-size must split evenly over the ranks")
    if not tasks.is_task(c.task):
        raise LlmosError(
            f"--task {c.task!r}: no task {c.task!r}; tasks: {', '.join(tasks.TASKS)}, gym:NAME"
        )
    if check_start(out, c, resume):
        return out
    t0 = time.time()
    torch.manual_seed(c.seed)
    tok = Tokenizer.load(c.base)
    policy = load_model(c.base)
    reference = None
    if c.kl_coef:
        reference = load_model(c.base)
        reference.requires_grad_(False)
    if c.lora_rank:
        lora.add_lora(policy, c.lora_rank, c.lora_alpha)
    recs = tasks.prompts(c.task, c.task_size, c.seed)
    score = make_scorer(c.reward, tok)
    rank, world = dist_info()
    # The loader reads the answer budget from its config: the task's, unless one was given.
    budget = replace(c, max_new_tokens=c.max_new_tokens or tasks.max_new_tokens(c.task))
    loader = RolloutLoader(
        budget,
        policy,
        reference,
        tok,
        recs,
        score,
        rank,
        world,
        grpo_advantages,
        False,
        c.updates_per_batch,
    )
    say = print if is_main() else (lambda *a: None)
    say(f"rl: {len(recs)} questions of {c.task}, {c.group_size} answers each; reward {c.reward}")
    export = lora.merged if c.lora_rank else (lambda m: m)

    def evaluate(model, windows):
        return heldout(export(model), tok, c.task, c.eval_n, c.eval_k, c.temperature, c.seed)

    start = evaluate(policy, None) if is_main() and not resume else None
    policy, finished = train_loop(
        c,
        out,
        policy,
        tok,
        loader,
        evaluate,
        "rl",
        resume,
        stop_at,
        export=export,
        step_fn=lambda model, batch: grpo_step(model, batch, c.clip, c.kl_coef, c.temperature),
    )
    if finished and is_main():
        write_report(out, c, start, time.time() - t0)
    return out


def write_report(out: Path, c: RLConfig, start: dict | None, seconds: float) -> None:
    rows = runs.read_metrics(out)
    runs.plot_curves(out, ["reward", "length"], "reward_length.png")
    evals = [{"step": 0, **(start or {})}] + [r for r in rows if "pass@1" in r]
    keys = [k for k in evals[-1] if k.startswith(("val_", "pass@"))]
    runs.plot_curves(out, keys, "heldout.png")
    table = "\n".join(
        f"| {r['step']} | "
        + " | ".join(f"{100 * r[k]:.0f}%" if k in r else "" for k in keys)
        + " |"
        for r in evals
    )
    first, last = evals[0], evals[-1]
    gain = {k: last.get(k, 0) - first.get(k, 0) for k in keys}
    change = ", ".join(
        f"{k.removeprefix('val_')} {100 * first.get(k, 0):.0f}% -> {100 * last.get(k, 0):.0f}%"
        for k in keys
    )
    text = f"""# RL report (GRPO)

- policy `{c.base}`; task `{c.task}`, reward `{c.reward}`; {c.group_size} answers per question,
  {c.batch_size} questions per step, {c.max_steps} steps, lr {c.lr}, clip {c.clip}, KL β
  {c.kl_coef}, temperature {c.temperature}{f", LoRA rank {c.lora_rank}" if c.lora_rank else ""};
  wall time {seconds / 60:.1f} min
- held-out ({c.eval_n} questions; greedy by the checker, and pass@k from {c.eval_k} samples):
  {change}

| step | {" | ".join(k.removeprefix("val_") for k in keys)} |
|---|{"---|" * len(keys)}
{table}

![held-out accuracy](heldout.png) ![reward and length](reward_length.png)
"""
    atomic_write_text(out / "report.md", text)
    write_json(out / "summary.json", {"start": first, "end": last, "gain": gain})
    print(f"report in {out}/report.md")
