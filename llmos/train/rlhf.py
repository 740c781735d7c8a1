"""RLHF: improve the policy by sampling answers and reinforcing what the reward model prefers.

Each step: take prompts, sample K answers to each from the current policy (the engine prefills
a prompt once and forks its cache K ways), score each answer with the reward model (or a task's
checker), and subtract a KL penalty to the frozen SFT reference, β · Σ_t [log pi(y_t) - log
pi_ref(y_t)] over the answer's tokens (the per-token penalty of Ziegler et al. 2019 and Ouyang
et al. 2022, summed into the answer's return). Without it the policy drifts wherever the reward
model is wrong: with β = 0 reward climbs while quality falls (reward hacking, Gao et al. 2022).
That penalty charges an answer its whole log-ratio, so an answer the reference all but never
gives (-100 nats) costs β · 100 however good it is. `--kl-in loss` instead adds GRPO's k3 per
token to the loss (see `k3`): in expectation the gradient of KL(pi_ref || pi), which keeps the
policy covering what the reference does without charging it for a new answer. In the speedrun
(issue 14) only the second let RLHF teach "I don't know" (docs/LOG.md, session 14).

The update is RLOO, REINFORCE with a leave-one-out baseline (Kool et al. 2019; Ahmadian et al.
2024): the advantage of answer i is its return minus the mean return of the other K-1 answers
to the same prompt, and the loss is -advantage · log pi(answer). We use it rather than PPO
because it needs no value network (PPO's critic doubles the memory and has its own errors to
fit) and, being on-policy with one update per batch, no ratio clipping: the samples always come
from the weights being updated. GRPO (issue 15's `llmos rl`) is the same estimator with the
group's standard deviation as a scale.

RL can only reinforce what the policy samples. An answer the SFT model gives a log-probability
of -100 nats (issue 14's "I don't know who X is.") is never sampled, so no reward can teach
it; `--sft-weight` adds a likelihood term on the prompts' demonstrations (a comparison's
chosen answer) to the loss, as InstructGPT's PPO-ptx mixes in pretraining text, and
`--reward none` runs the same without the reward, to measure what the reward itself adds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmos import runs, tasks
from llmos.chat_format import assistant_message, render, turn_end_ids
from llmos.checkpoint import load_model
from llmos.common import LlmosError, arg, atomic_write_text, dist_info, is_main, write_json
from llmos.data.shards import EpochOrder
from llmos.eval.tasks import evaluate as evaluate_tasks
from llmos.infer.engine import Engine, SamplingConfig
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer
from llmos.train import lora
from llmos.train.loop import TrainConfig, check_start, train_loop
from llmos.train.reward import score_answers


@dataclass
class RLHFConfig(TrainConfig):
    base: str = arg("", "the policy to start from, also the frozen reference", positional=True)
    reward: str = arg(
        "",
        "rm:DIR (a reward model from `llmos rm train`), task (each prompt's task checker), or "
        "none (the ablation: what the likelihood term and the KL penalty do without a reward)",
        required=True,
    )
    prompts: str = arg(
        "hallucination:1,knowledge:1",
        "tasks (their train questions) and JSONL files of {prompt} (comparisons too) or "
        "{messages}, comma-separated name[:weight]",
    )
    eval_tasks: str = arg(
        "hallucination,knowledge", "tasks whose held-out questions the checkers score (greedy)"
    )
    eval_n: int = arg(20, "held-out questions per eval task", lo=1)
    kl_coef: float = arg(0.05, "β of the KL penalty to the reference; 0: none (reward hacks)", lo=0)
    kl_in: str = arg(
        "reward",
        "where the KL penalty acts: reward (log pi/pi_ref summed into each answer's return, "
        "InstructGPT's) or loss (GRPO's k3 per token: keeps what the reference does, lets "
        "the policy put mass where the reference had none)",
        choices=["reward", "loss"],
    )
    group_size: int = arg(4, "answers sampled per prompt (RLOO's K)", lo=2)
    missing_eos_penalty: float = arg(
        1.0,
        "subtracted from the reward of an answer that never ends its turn (TRL's "
        "missing_eos_penalty): else a policy can pad an answer with tokens the scorer never sees",
        lo=0,
    )
    sft_weight: float = arg(
        0.0,
        "weight of a likelihood term on the prompts' demonstrations (a comparison's chosen "
        "answer, a task's answer), added to the RL loss as InstructGPT's PPO-ptx adds "
        "pretraining text: it puts answers the policy never samples within its reach",
        lo=0,
    )
    max_new_tokens: int = arg(32, "longest answer sampled", lo=1)
    temperature: float = arg(
        1.0,
        "sampling temperature of the rollouts; the policy trained (and its KL) is the tempered "
        "one, softmax(logits / T), so the update stays on-policy (as TRL's PPO computes it)",
        lo=0.05,
        hi=10,
    )
    lora_rank: int = lora.rank_arg()
    lora_alpha: float = lora.alpha_arg()
    task_size: int = arg(200, "prompts a task gives per unit of weight", lo=1)
    # RLHF defaults (help as in TrainConfig); batch_size counts prompts.
    batch_size: int = 8
    max_steps: int = 100
    lr: float = 1e-5
    min_lr_ratio: float = 1.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    eval_every: int = 10


def make_scorer(spec: str, policy_tok) -> Callable[[list[dict], list[str]], torch.Tensor]:
    """score(records, answers) -> rewards (N,) of assistant messages: a reward model's score
    of prompt + answer, or each record's task checker (for task prompts)."""
    if spec == "none":
        return lambda recs, answers: torch.zeros(len(answers))
    if spec == "task":
        return lambda recs, answers: torch.tensor(
            [tasks.reward(r, a["content"]) for r, a in zip(recs, answers)]
        )
    if not spec.startswith("rm:"):
        raise LlmosError(f"--reward {spec!r}: use rm:DIR, task or none")
    rm, tok = load_model(spec[3:], reward=True), Tokenizer.load(spec[3:])
    return lambda recs, answers: score_answers(rm, tok, [r["prompt"] for r in recs], answers)


def rloo_advantages(returns: torch.Tensor, k: int) -> torch.Tensor:
    """Each return minus the mean of the other k-1 in its group of k (consecutive entries):
    a baseline that does not depend on the answer itself, so the gradient stays unbiased.

    >>> [round(a, 2) for a in rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), 4).tolist()]
    [-2.67, -1.33, 0.0, 4.0]
    """
    g = returns.view(-1, k)
    return (g - (g.sum(-1, keepdim=True) - g) / (k - 1)).flatten()


def token_logps(
    model: Transformer, ids: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log pi of each target token (B, T) under softmax(logits / temperature); 0 where the
    target is -1 (prompt, padding)."""
    logits = model(ids).float() / temperature
    logp = -F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none"
    )
    return logp.view(ids.shape)


def padded(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, mask) rows as right-padded ids (B, T) and next-token targets: the token to
    predict where the mask marks it as one to learn (the answer), else -1."""
    ids = torch.full((len(rows), max(len(r) for r, _ in rows)), pad)
    targets = torch.full_like(ids, -1)
    for i, (row, mask) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        learn = torch.tensor(row[1:], dtype=torch.long)
        targets[i, : len(row) - 1] = learn.masked_fill(torch.tensor(mask[1:]) == 0, -1)
    return ids, targets


class RolloutLoader:
    """Each next() samples a batch of answers from the current policy and scores them: the
    on-policy data of one RLHF step. The state is the position in the shuffled prompts (the
    sampler's RNG is torch's, saved with the training state)."""

    def __init__(
        self,
        c,
        policy,
        reference,
        tok,
        recs,
        score,
        rank=0,
        world=1,
        advantages=None,
        kl_in_reward: bool = True,
        updates_per_batch: int = 1,
    ):
        """`c`: an RLHFConfig or RLConfig (the fields they share). `advantages(returns, k)`:
        RLOO's by default, GRPO's for `llmos rl`. `kl_in_reward`: subtract the KL penalty
        from the return (RLHF) or leave it to the loss (GRPO). `updates_per_batch`: optimizer
        steps on each batch of rollouts (GRPO's μ); after the first the policy has moved, the
        samples are off-policy, and the loss's clipped ratio keeps the step small."""
        self.c, self.policy, self.reference, self.tok = c, policy, reference, tok
        self.recs, self.score = recs, score
        self.advantages = advantages or rloo_advantages
        self.kl_in_reward, self.updates = kl_in_reward, updates_per_batch
        self.batch, self.used = None, 0
        self.order = EpochOrder(len(recs), c.seed, rank, world)
        self.prompts_per_rank = c.batch_size // world
        self.stop_ids = turn_end_ids(tok)
        self.pad = tok.special_ids.get("<|pad|>", tok.eos_id)

    def state(self) -> dict:
        return self.order.state()

    def load_state(self, state: dict) -> None:
        self.order.load_state(state)

    def next(self) -> dict:
        if self.batch is None or self.used == self.updates:
            self.batch, self.used = self.rollouts(), 0
        self.used += 1
        return self.batch

    @torch.no_grad()
    def rollouts(self) -> dict:
        c, K = self.c, self.c.group_size
        recs = [self.recs[self.order.next()] for _ in range(self.prompts_per_rank)]
        prompts = [render(self.tok, r["prompt"], add_generation_prompt=True)[0] for r in recs]
        # Sample from the policy as it is now, no truncation, so the answers' probabilities are
        # exactly the (tempered) pi's: on-policy. A fresh engine sees the current weights.
        self.policy.eval()
        # The engine packs plain weights: adapters are folded into a copy first.
        sampler = lora.merged(self.policy) if c.lora_rank else self.policy
        engine = Engine(sampler, self.tok, dtype="fp32")
        s = SamplingConfig(
            temperature=c.temperature,
            max_new_tokens=c.max_new_tokens,
            seed=int(torch.randint(2**62, ())),
        )
        done = engine.generate(prompts, s, stop_ids=self.stop_ids, n=K)
        self.policy.train()
        rows = [
            (prompts[i // K] + d.ids, [0] * len(prompts[i // K]) + [1] * len(d.ids))
            for i, d in enumerate(done)
        ]
        ids, targets = padded(rows, self.pad)
        # What the policy wrote, as a message: a tool call stays a call (scored as rendered
        # with its special tokens, as the reward model learned it), not loose JSON text.
        answers = [assistant_message(self.tok, d.ids) for d in done]
        score = self.score([recs[i // K] for i in range(len(done))], answers)
        # The KL penalty: log pi - log pi_ref of each sampled token, summed over the answer
        # (a sample of KL(pi || pi_ref), the "k1" estimator). The policy's log-probs at
        # sampling time are also the "old" ones of the clipped ratio.
        T = c.temperature
        old_logp = token_logps(self.policy, ids, targets, T)
        ref_logp = token_logps(self.reference, ids, targets, T) if self.reference else old_logp
        kl = (old_logp - ref_logp).sum(-1)
        unfinished = torch.tensor([d.finish_reason == "length" for d in done], dtype=torch.float)
        score = score - c.missing_eos_penalty * unfinished
        ret = score - c.kl_coef * kl if self.kl_in_reward else score
        lengths = torch.tensor([len(d.ids) for d in done], dtype=torch.float)
        demos = self.demonstrations(recs) if getattr(c, "sft_weight", 0) else {}
        return demos | {
            "ids": ids,
            "targets": targets,
            "old_logp": old_logp,
            "ref_logp": ref_logp,
            "advantage": self.advantages(ret, K),
            "reward": score,
            "return": ret,
            "kl": kl,
            "length": lengths,
        }

    def demonstrations(self, recs: list[dict]) -> dict:
        """The batch's demonstrations as rows to learn (their assistant tokens)."""
        ids, targets = padded([render(self.tok, tasks.demonstration(r)) for r in recs], self.pad)
        return {"demo_ids": ids, "demo_targets": targets}


def k3(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """The "k3" sample of KL per token, pi_ref/pi - log(pi_ref/pi) - 1 (Schulman 2020): never
    negative, unbiased for KL(pi || pi_ref). As a loss its expected gradient is that of the
    other direction, KL(pi_ref || pi) (-E_{pi_ref}[grad log pi]), which pulls the policy back
    to where the reference has mass but barely charges it for mass where the reference had
    none; a penalty in the return charges such an answer its whole log-ratio."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def rloo_step(
    model, batch, sft_weight: float = 0.0, temperature: float = 1.0, kl_loss_coef: float = 0.0
):
    """REINFORCE with the batch's RLOO advantages: -A · log pi(answer), averaged over answers,
    plus `sft_weight` times the demonstrations' mean negative log-likelihood per token, plus
    `kl_loss_coef` times k3 summed over each answer (RLHF's --kl-in loss; with --kl-in reward
    the penalty is already in the advantages). The logged "reward" is the scorer's minus the
    missing-EOS penalty; "return" is what the advantages are computed from; "kl" is always
    the sampled answers' log pi/pi_ref, whichever way it is charged."""
    logp = token_logps(model, batch["ids"], batch["targets"], temperature)
    n_tokens = (batch["targets"] >= 0).sum()
    loss = -(batch["advantage"] * logp.sum(-1)).mean()
    metrics = {}
    if kl_loss_coef:
        # No mask needed: where there is no target both log-probs are 0, and so is k3.
        loss = loss + kl_loss_coef * k3(batch["ref_logp"], logp).sum(-1).mean()
    if sft_weight:
        demo = token_logps(model, batch["demo_ids"], batch["demo_targets"])
        nll = -demo.sum() / (batch["demo_targets"] >= 0).sum()
        loss = loss + sft_weight * nll
        metrics["sft_nll"] = nll.detach()
    metrics |= {
        "reward": batch["reward"].mean(),
        "kl": batch["kl"].mean(),
        "return": batch["return"].mean(),
        # -log pi of the sampled tokens: an estimate of the policy's entropy per token.
        "entropy": -logp.detach().sum() / n_tokens.clamp(min=1),
        "length": batch["length"].mean(),
    }
    return loss, int(n_tokens), metrics


@torch.no_grad()
def checker_eval(model: Transformer, tok, names: list[str], n: int) -> dict:
    """Greedy held-out accuracy of each eval task's groups, by their checkers."""
    model.eval()
    results = evaluate_tasks(Engine(model, tok, dtype="fp32"), names, n)
    return {f"val_{g}": r["accuracy"] for g, r in results.items()}


def rlhf(c: RLHFConfig, out: str | Path, resume: bool = False, stop_at: int | None = None) -> Path:
    """`llmos rlhf`: c.base improved against c.reward by RLOO with a KL penalty, into `out`."""
    out = Path(out)
    if c.batch_size % dist_info()[1]:
        raise LlmosError("--batch-size must split evenly over the ranks")
    if check_start(out, c, resume):
        return out
    t0 = time.time()
    torch.manual_seed(c.seed)
    tok = Tokenizer.load(c.base)
    policy, reference = load_model(c.base), load_model(c.base)
    for p in reference.parameters():
        p.requires_grad_(False)
    if c.lora_rank:
        lora.add_lora(policy, c.lora_rank, c.lora_alpha)
    recs = tasks.prompts(c.prompts, c.task_size, c.seed)
    score = make_scorer(c.reward, tok)
    rank, world = dist_info()
    kl_in_loss = c.kl_coef if c.kl_in == "loss" else 0.0
    loader = RolloutLoader(
        c, policy, reference, tok, recs, score, rank, world, kl_in_reward=not kl_in_loss
    )
    names = [t for t in c.eval_tasks.split(",") if t]
    say = print if is_main() else (lambda *a: None)
    say(
        f"rlhf: {len(recs)} prompts from '{c.prompts}', {c.group_size} answers each; reward "
        f"{c.reward}; KL β {c.kl_coef}"
    )

    export = lora.merged if c.lora_rank else (lambda m: m)

    def evaluate(model, windows):
        return checker_eval(export(model), tok, names, c.eval_n) if names else {}

    start = evaluate(policy, None) if is_main() and not resume else None
    policy, finished = train_loop(
        c,
        out,
        policy,
        tok,
        loader,
        evaluate,
        "rlhf",
        resume,
        stop_at,
        export=export,
        step_fn=lambda model, batch: rloo_step(
            model, batch, c.sft_weight, c.temperature, kl_in_loss
        ),
    )
    if finished and is_main():
        write_report(out, c, start, time.time() - t0)
    return out


def write_report(out: Path, c: RLHFConfig, start: dict | None, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = runs.read_metrics(out)
    runs.plot_curves(out, ["reward", "kl"], "reward_kl_curves.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    sc = ax.scatter(
        [r["kl"] for r in rows], [r["reward"] for r in rows], c=[r["step"] for r in rows]
    )
    fig.colorbar(sc, label="step")
    ax.set_xlabel("KL(policy || reference), nats per answer")
    ax.set_ylabel("reward")
    ax.set_title(f"reward vs KL (β = {c.kl_coef})")
    fig.tight_layout()
    fig.savefig(out / "reward_kl.png", dpi=100)
    plt.close(fig)
    evals = [r for r in rows if any(k.startswith("val_") for k in r)]
    keys = sorted({k for r in evals for k in r if k.startswith("val_")})
    first = {"step": 0, **(start or {})}
    table = "\n".join(
        f"| {r['step']} | "
        + " | ".join(f"{100 * r[k]:.0f}%" if k in r else "" for k in keys)
        + " |"
        for r in [first, *evals]
    )
    head, tail = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10) :]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    reward_up = mean(tail, "reward") > mean(head, "reward")
    dropped = [k for k in keys if start and k in evals[-1] and evals[-1][k] < start.get(k, 0) - 0.1]
    verdict = (
        f"**Reward hacking**: the reward rose ({mean(head, 'reward'):.3f} -> "
        f"{mean(tail, 'reward'):.3f}) while the checkers say {', '.join(dropped)} fell by more "
        "than 10 points."
        if reward_up and dropped
        else "No reward hacking by this test (reward up and a checker down by > 10 points)."
    )
    checkers = (
        f"## Held-out checkers (greedy, {c.eval_n} questions per task)\n\n"
        f"| step | {' | '.join(k[4:] for k in keys)} |\n|---|{'---|' * len(keys)}\n{table}"
        if keys
        else "No held-out checkers were run (--eval-tasks is empty)."
    )
    text = f"""# RLHF report

- policy and reference `{c.base}`; reward `{c.reward}`; prompts `{c.prompts}`
- RLOO with {c.group_size} answers per prompt, {c.batch_size} prompts per step, {c.max_steps}
  steps, lr {c.lr}, KL β {c.kl_coef} in the {c.kl_in}, temperature {c.temperature}, likelihood term
  {c.sft_weight}{f", LoRA rank {c.lora_rank}" if c.lora_rank else ""}; wall time
  {seconds / 60:.1f} min
- reward {mean(head, "reward"):.3f} -> {mean(tail, "reward"):.3f} (first and last tenth of the
  steps); KL {mean(tail, "kl"):.2f} nats per answer; length {mean(tail, "length"):.1f} tokens

{verdict}

{checkers}

![reward vs KL](reward_kl.png) ![curves](reward_kl_curves.png)
"""
    atomic_write_text(out / "report.md", text)
    summary = {"hacked": bool(reward_up and dropped), "verdict": verdict, "dropped": dropped}
    summary |= {"reward_start": mean(head, "reward"), "reward_end": mean(tail, "reward")}
    write_json(
        out / "summary.json",
        summary | {"checkers_start": start, "checkers_end": evals[-1] if evals else None},
    )
    print(f"report in {out}/report.md")
