"""DPO: learn from comparisons directly, without a reward model or sampling.

Direct Preference Optimization (Rafailov et al. 2023) shows that the policy RLHF converges to,
pi*(y|x) ∝ pi_ref(y|x) · exp(r(x, y) / β), makes the reward a log-ratio: r = β log(pi/pi_ref)
plus a term of the prompt alone, which cancels between two answers to the same prompt. Putting
that into the Bradley–Terry likelihood gives a loss on the policy itself,

    -log sigmoid(β [(log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))]),

where log pi(y) sums the answer's token log-probabilities. The reference is the starting model,
frozen: its log-probs are computed once before training (as TRL's precompute_ref_log_probs)
and saved in the run directory, so the reference costs no memory or forward pass per step and a
resumed run compares against the same numbers. Metrics carry TRL's names (rewards/chosen,
rewards/rejected, rewards/margins, rewards/accuracies, logps/*), and a test holds the loss to
TRL's DPOTrainer on the same model and batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmos import runs
from llmos.checkpoint import load_model
from llmos.common import arg, atomic_write, atomic_write_text, device, dist_info, is_main
from llmos.data.comparisons import PairLoader
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer
from llmos.train import lora
from llmos.train.loop import TrainConfig, check_start, to_device, train_loop
from llmos.train.lora import add_lora, merged
from llmos.train.reward import pairs_of


@dataclass
class DPOConfig(TrainConfig):
    base: str = arg("", "the model to improve, also the frozen reference", positional=True)
    data: str = arg(
        "hallucination:1",
        "comparisons: preference tasks and JSONL files, comma-separated name[:weight]",
    )
    beta: float = arg(
        0.1, "β: how far from the reference the policy may move (smaller: further)", lo=0
    )
    task_size: int = arg(1000, "comparisons a task generates per unit of weight", lo=1)
    seq_len: int = arg(0, "longest prompt + answer; 0: the model's context, at most 1024", lo=0)
    val_fraction: float = arg(0.1, "share of the comparisons held out", lo=0, hi=0.9)
    lora_rank: int = lora.rank_arg()
    lora_alpha: float = lora.alpha_arg()
    sft_weight: float = arg(
        0.0,
        "add this times the chosen answers' NLL per token (TRL's 'sft' loss; RPO), so DPO "
        "cannot make both answers unlikely",
        lo=0,
    )
    # DPO defaults (help as in TrainConfig); batch_size counts pairs. The paper used 1e-6 for
    # billion-parameter models; small models move at larger rates.
    batch_size: int = 8
    max_steps: int = 200
    lr: float = 1e-5
    min_lr_ratio: float = 0.0
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = 50


def answer_logps(model: Transformer, batch: dict) -> torch.Tensor:
    """log pi(answer | prompt) of every row (2B,): the sum over the answer's tokens."""
    logits = model(batch["ids"]).float()
    per_token = -F.cross_entropy(
        logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-1, reduction="none"
    )
    return per_token.view(batch["ids"].shape).sum(-1)


def dpo_loss(
    logps: torch.Tensor,
    ref: torch.Tensor,
    beta: float,
    sft_weight: float = 0.0,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """The sigmoid DPO loss of a batch (rows: chosen then rejected) and TRL's metrics; with
    `sft_weight`, plus that times the chosen answers' mean negative log-likelihood per token
    (`lengths`: answer tokens per row), TRL's loss_type ["sigmoid", "sft"]."""
    chosen, rejected = (logps - ref).chunk(2)  # the implicit rewards, over β
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    if sft_weight:
        # DPO alone only widens the gap: both answers' likelihoods may fall, the chosen one
        # less, until greedy decoding produces neither (seen in the speedrun: "1 1."). The
        # likelihood term keeps the chosen answers likely (Pang et al. 2024, RPO).
        loss = loss + sft_weight * -logps.chunk(2)[0].sum() / lengths.chunk(2)[0].sum()
    c, r = beta * chosen.detach(), beta * rejected.detach()
    lc, lr = logps.detach().chunk(2)
    metrics = {
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/margins": (c - r).mean(),
        "rewards/accuracies": (c > r).float().mean(),
        "logps/chosen": lc.mean(),
        "logps/rejected": lr.mean(),
    }
    return loss, metrics


@torch.no_grad()
def reference_logps(model: Transformer, pairs: list, max_len: int, pad: int) -> torch.Tensor:
    """(N, 2) log-probs of each pair's chosen and rejected answers under `model`."""
    model.eval()
    loader = PairLoader(pairs, 8, max_len, pad)
    out = []
    for at in range(0, len(pairs), 8):
        idx = list(range(at, min(len(pairs), at + 8)))
        batch = to_device(loader.batch(idx), next(model.parameters()).device)
        out.append(answer_logps(model, batch).view(2, -1).t().cpu())
    return torch.cat(out)


def dpo(c: DPOConfig, out: str | Path, resume: bool = False, stop_at: int | None = None) -> Path:
    """`llmos dpo`: c.base trained on c.data's comparisons, into `out`."""
    out = Path(out)
    if check_start(out, c, resume):
        return out
    t0 = time.time()
    torch.manual_seed(c.seed)
    model, tok = load_model(c.base).to(device()), Tokenizer.load(c.base)
    pad = tok.special_ids.get("<|pad|>", tok.eos_id)
    max_len = c.seq_len or min(model.cfg.max_position_embeddings, 1024)
    train, val = pairs_of(c, tok, max_len)
    # The reference's log-probs, once: from the starting weights, before any step (a resumed
    # run reads the saved ones, since its model has moved).
    ref_path = out / "reference_logps.pt"
    if resume and ref_path.exists():
        ref = torch.load(ref_path)
    else:
        out.mkdir(parents=True, exist_ok=True)
        ref = {"train": reference_logps(model, train, max_len, pad)}
        ref["val"] = reference_logps(model, val, max_len, pad)
        if is_main():
            atomic_write(ref_path, lambda f: torch.save(ref, f))
    rank, world = dist_info()
    loader = PairLoader(
        train, c.batch_size // world, max_len, pad, c.seed, rank, world, ref["train"]
    )
    val_loader = PairLoader(val, c.batch_size, max_len, pad, ref=ref["val"])
    say = print if is_main() else (lambda *a: None)
    say(f"dpo: {len(train)} train / {len(val)} val comparisons from '{c.data}'; β {c.beta}")

    def step(model, batch):
        n = (batch["targets"] >= 0).sum(-1)
        loss, metrics = dpo_loss(answer_logps(model, batch), batch["ref"], c.beta, c.sft_weight, n)
        return loss, int(batch["lengths"].sum()), metrics

    @torch.no_grad()
    def evaluate(model, windows):
        model.eval()
        dev = next(model.parameters()).device
        sums: dict[str, float] = {}
        for at in range(0, len(val), c.batch_size):
            idx = list(range(at, min(len(val), at + c.batch_size)))
            batch = to_device(val_loader.batch(idx), dev)
            n = (batch["targets"] >= 0).sum(-1)
            logps = answer_logps(model, batch)
            loss, metrics = dpo_loss(logps, batch["ref"], c.beta, c.sft_weight, n)
            for k, v in {"loss": loss, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
        return {f"val_{k}": v / len(val) for k, v in sums.items()}

    export = merged if c.lora_rank > 0 else (lambda m: m)
    if c.lora_rank > 0:
        add_lora(model, c.lora_rank, c.lora_alpha)
    model, finished = train_loop(
        c, out, model, tok, loader, evaluate, "dpo", resume, stop_at, export=export, step_fn=step
    )
    if finished and is_main():
        runs.plot_curves(out, ["loss", "val_loss"])
        runs.plot_curves(out, ["rewards/chosen", "rewards/rejected"], "rewards.png")
        last = evaluate(model, None)
        text = (
            f"# DPO report\n\n- base (and reference) `{c.base}`; data `{c.data}`; β {c.beta}; "
            f"{len(train)} train / {len(val)} held-out comparisons; {c.max_steps} steps of "
            f"{c.batch_size} pairs{f'; LoRA rank {c.lora_rank}' if c.lora_rank else ''}\n"
            f"- wall time {(time.time() - t0) / 60:.1f} min\n"
            f"- held-out: loss {last['val_loss']:.3f} (log 2 = 0.693 at the start), reward "
            f"accuracy {100 * last['val_rewards/accuracies']:.1f}%, margin "
            f"{last['val_rewards/margins']:.3f}, chosen {last['val_rewards/chosen']:.3f}, "
            f"rejected {last['val_rewards/rejected']:.3f}\n\n![loss](loss.png) "
            "![rewards](rewards.png)\n"
        )
        atomic_write_text(out / "report.md", text)
        print(
            f"held-out reward accuracy {100 * last['val_rewards/accuracies']:.1f}%; report in {out}"
        )
    return out
