"""The reward model: a number for how good an answer is, learned from comparisons.

People find it easier to say which of two answers is better than to write the best one. A
reward model turns those comparisons into a score (Christiano et al. 2017; Ouyang et al. 2022):
the fine-tuned transformer reads prompt + answer and a linear head maps its last hidden state
to r. The Bradley–Terry model says P(chosen beats rejected) = sigmoid(r_chosen - r_rejected),
so training minimises -log sigmoid(r_c - r_r) over the labelled pairs, the loss of TRL's
RewardTrainer. The result is a Hugging Face `LlamaForSequenceClassification` directory that
transformers loads and scores identically (a test); RLHF (train/rlhf.py) optimises against it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmos import runs
from llmos.chat_format import render
from llmos.checkpoint import load_model
from llmos.common import arg, atomic_write_text, dist_info, is_main
from llmos.config import ModelConfig
from llmos.data.comparisons import PairLoader, pair_ids
from llmos.data.corpora import CorpusError, is_val
from llmos.model import RewardModel
from llmos.tasks import mixture
from llmos.tokenizer import Tokenizer
from llmos.train.loop import TrainConfig, check_start, to_device, train_loop


@dataclass
class RMConfig(TrainConfig):
    base: str = arg("", "the model directory to start from (a fine-tuned model)", positional=True)
    data: str = arg(
        "hallucination:1",
        "comparisons: preference tasks and JSONL files, comma-separated name[:weight]",
    )
    task_size: int = arg(1000, "comparisons a task generates per unit of weight", lo=1)
    seq_len: int = arg(0, "longest prompt + answer; 0: the model's context, at most 1024", lo=0)
    val_fraction: float = arg(0.1, "share of the comparisons held out", lo=0, hi=0.9)
    # Reward-model defaults (help as in TrainConfig); batch_size counts pairs.
    batch_size: int = 16
    max_steps: int = 200
    lr: float = 1e-4
    min_lr_ratio: float = 0.0
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = arg(0, "evaluate every this many steps; 0: once per epoch of pairs", lo=0)


def pairs_of(c, tok: Tokenizer, max_len: int) -> tuple[list, list]:
    """(train, val) token pairs of the comparisons c.data names (reward models and DPO). A
    pair whose prompt alone fills max_len is dropped, as TRL drops it: nothing of its answers
    would be compared."""
    recs = mixture(c.data, c.task_size, c.seed, kind="comparisons")
    split: tuple[list, list] = ([], [])
    for i, rec in enumerate(recs):
        pair = pair_ids(tok, rec)
        if len(pair[0]) < max_len:
            split[is_val(str(i), c.val_fraction)].append(pair)
    if not split[0]:
        raise CorpusError(f"data '{c.data}': no comparison fits {max_len} tokens")
    return split[0], split[1] or split[0][:1]


def pair_scores(model: RewardModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards (B,) of a PairLoader batch."""
    return model(batch["ids"], batch["lengths"]).float().chunk(2)


def bradley_terry_step(model: RewardModel, batch: dict):
    chosen, rejected = pair_scores(model, batch)
    loss = -F.logsigmoid(chosen - rejected).mean()
    diff = (chosen - rejected).detach()
    metrics = {"accuracy": (diff > 0).float().mean(), "margin": diff.mean()}
    return loss, int(batch["lengths"].sum()), metrics


@torch.no_grad()
def evaluate_pairs(model: RewardModel, loader: PairLoader, n: int) -> dict:
    """Held-out pair accuracy (the chosen answer scored higher) and loss over the first n."""
    model.eval()
    dev = next(model.parameters()).device
    wins, loss, total = 0.0, 0.0, 0
    for at in range(0, n, loader.batch_size):
        batch = to_device(loader.batch(list(range(at, min(n, at + loader.batch_size)))), dev)
        chosen, rejected = pair_scores(model, batch)
        wins += float((chosen > rejected).sum())
        loss += float(-F.logsigmoid(chosen - rejected).sum())
        total += len(chosen)
    return {"val_accuracy": wins / total, "val_loss": loss / total}


def reward_model_from(base: str, pad_id: int, seed: int) -> RewardModel:
    """A reward model whose transformer is `base`'s and whose score head is new (normal, std
    0.02 as HF initialises it; trained from there)."""
    lm = load_model(base)
    cfg = dataclasses.replace(lm.cfg, num_labels=1, pad_token_id=pad_id)
    model = RewardModel(cfg)
    body = {k: v for k, v in lm.state_dict().items() if k.startswith("model.")}
    model.load_state_dict(body, strict=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=g) * 0.02)
    return model


def train_reward_model(
    c: RMConfig, out: str | Path, resume: bool = False, stop_at: int | None = None
) -> Path:
    """`llmos rm train`: a reward model from c.base, trained on c.data, into `out`."""
    out = Path(out)
    tok = Tokenizer.load(c.base)
    pad = tok.special_ids.get("<|pad|>", tok.eos_id)
    # The context from config.json: the weights load once, in reward_model_from.
    ctx = ModelConfig.load(Path(c.base) / "config.json").max_position_embeddings
    max_len = c.seq_len or min(ctx, 1024)
    train, val = pairs_of(c, tok, max_len)
    rank, world = dist_info()
    if c.eval_every == 0:  # once per epoch
        c = dataclasses.replace(c, eval_every=max(1, math.ceil(len(train) / c.batch_size)))
    if check_start(out, c, resume):
        return out
    t0 = time.time()
    torch.manual_seed(c.seed)
    model = reward_model_from(c.base, pad, c.seed)
    loader = PairLoader(train, c.batch_size // world, max_len, pad, c.seed, rank, world)
    val_loader = PairLoader(val, c.batch_size, max_len, pad)
    say = print if is_main() else (lambda *a: None)
    say(f"rm: {len(train)} train / {len(val)} val comparisons from '{c.data}'; base {c.base}")

    def evaluate(model, windows):
        return evaluate_pairs(model, val_loader, len(val))

    model, finished = train_loop(
        c, out, model, tok, loader, evaluate, "rm", resume, stop_at, step_fn=bradley_terry_step
    )
    if finished and is_main():
        runs.plot_curves(out, ["loss", "val_loss"])
        rows = [r for r in runs.read_metrics(out) if "val_accuracy" in r]
        table = "\n".join(
            f"| {r['step']} | {r['step'] * c.batch_size / len(train):.1f} | "
            f"{r['val_loss']:.3f} | {100 * r['val_accuracy']:.1f}% |"
            for r in rows
        )
        text = (
            f"# Reward model report\n\n- base `{c.base}`; data `{c.data}`; {len(train)} train / "
            f"{len(val)} held-out comparisons; {c.max_steps} steps of {c.batch_size} pairs\n"
            f"- wall time {(time.time() - t0) / 60:.1f} min\n"
            f"- held-out pair accuracy **{100 * rows[-1]['val_accuracy']:.1f}%** "
            f"({len(val)} pairs)\n\n| step | epoch | val loss | val pair accuracy |\n"
            f"|---|---|---|---|\n{table}\n\n![loss](loss.png)\n"
        )
        atomic_write_text(out / "report.md", text)
        print(f"held-out pair accuracy {100 * rows[-1]['val_accuracy']:.1f}%; report in {out}")
    return out


@torch.no_grad()
def score_answers(rm: RewardModel, tok, prompts: list[list[dict]], answers: list):
    """Rewards (N,) of each answer (its text, or an assistant message with tool calls) to its
    prompt (messages), in one right-padded batch."""
    as_message = lambda a: a if isinstance(a, dict) else {"role": "assistant", "content": a}  # noqa: E731
    rows = [
        render(tok, p + [as_message(a)])[0][: rm.cfg.max_position_embeddings]
        for p, a in zip(prompts, answers)
    ]
    pad = rm.cfg.pad_token_id if rm.cfg.pad_token_id is not None else tok.eos_id
    ids = torch.full((len(rows), max(map(len, rows))), pad)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return rm(ids, torch.tensor([len(r) for r in rows])).float()


@dataclass
class ScoreConfig:
    model: str = arg("", "the reward model directory", positional=True)
    data: str = arg("", "comparisons to score (tasks or JSONL, as rm train's --data)")
    prompt: str = arg("", "a user message to score one --answer to")
    answer: str = arg("", "the assistant's answer to --prompt")
    task_size: int = arg(100, "comparisons a task generates per unit of weight", lo=1)
    seed: int = arg(0, "seed of the task generators")


def score_command(c: ScoreConfig) -> None:
    """`llmos rm score`: one answer's reward, or the pair accuracy on a set of comparisons."""
    model, tok = load_model(c.model, reward=True), Tokenizer.load(c.model)
    if bool(c.data) == bool(c.prompt or c.answer):
        raise CorpusError("rm score: give --data, or --prompt and --answer")
    if c.prompt:
        user = [{"role": "user", "content": c.prompt}]
        print(f"{float(score_answers(model, tok, [user], [c.answer])[0]):.4f}")
        return
    c2 = dataclasses.replace(
        RMConfig(base=c.model), data=c.data, task_size=c.task_size, seed=c.seed, val_fraction=0.0
    )
    pairs, _ = pairs_of(c2, tok, model.cfg.max_position_embeddings)
    pad = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else tok.eos_id
    result = evaluate_pairs(
        model, PairLoader(pairs, 16, model.cfg.max_position_embeddings, pad), len(pairs)
    )
    print(
        f"{len(pairs)} comparisons: pair accuracy {100 * result['val_accuracy']:.1f}%, "
        f"loss {result['val_loss']:.4f}"
    )
