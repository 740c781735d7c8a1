"""Task accuracy: ask held-out questions through the chat format, tools on, and score each
final reply with its task's reward (the same checker RL will use as a verifiable reward)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from llmos import tasks
from llmos.agent.loop import assistant_turn
from llmos.chat_format import assistant_message, render, turn_end_ids
from llmos.checkpoint import load_model
from llmos.common import arg, write_json
from llmos.infer.engine import DTYPE_HELP, DTYPES, Engine, SamplingConfig
from llmos.tokenizer import Tokenizer


@dataclass
class EvalConfig:
    model_dir: str = arg("", "the model directory to evaluate", positional=True)
    tasks: str = arg("", "tasks, comma-separated (default: the chat tasks); e.g. docs")
    n: int = arg(50, "held-out questions per task", lo=1)
    dtype: str = arg("auto", DTYPE_HELP, choices=["auto", *DTYPES])


def evaluate(engine: Engine, names: list[str] | None = None, n: int = 50, progress=None) -> dict:
    """{group: {"accuracy", "n", "examples": [{question, reply, tool_calls, correct}]}}, the
    groups in the registry's order, for n held-out questions of each task (greedy)."""
    groups: dict[str, list] = {g: [] for g in tasks.GROUPS}  # registry order
    for task in names or list(tasks.CHAT_TASKS):
        s = SamplingConfig(temperature=0, max_new_tokens=tasks.max_new_tokens(task))
        for rec in tasks.generate(task, n, split="eval"):
            msgs = rec["messages"][:1]
            reply = assistant_turn(engine, msgs, s, tools=tasks.tools_for(rec), max_calls=2)
            text = reply[-1]["content"]
            calls = [m["tool_calls"][0]["function"] for m in reply if m.get("tool_calls")]
            example = {"question": msgs[0]["content"], "reply": text, "tool_calls": calls}
            example["correct"] = tasks.reward(rec, text) == 1.0
            groups.setdefault(rec["task"], []).append(example)
            if progress:
                progress(task)
    return {
        g: {"accuracy": sum(e["correct"] for e in ex) / len(ex), "n": len(ex), "examples": ex}
        for g, ex in groups.items()
        if ex
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of Chen et al. 2021 from n samples of which c are right: the chance
    that k drawn without replacement hold at least one right one.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(4, 0, 2)
    (0.25, 1.0, 0.0)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sample_replies(engine: Engine, recs: list[dict], n: int, s: SamplingConfig) -> list[list]:
    """n sampled replies to each record's question, [(assistant message, token ids), ...] per
    record: one chat turn, no tools run. A question is prefilled once and forked n ways."""
    tok = engine.tok
    prompts = [render(tok, r["messages"][:1], add_generation_prompt=True)[0] for r in recs]
    done = engine.generate(prompts, s, turn_end_ids(tok), n=n)
    out = [(assistant_message(tok, d.ids), d.ids) for d in done]
    return [out[i * n : (i + 1) * n] for i in range(len(recs))]


def sampled_accuracy(
    engine: Engine, task: str, n: int, k: int, temperature: float = 1.0, seed: int = 0
) -> dict:
    """pass@1 and pass@k of n held-out questions from k samples each at `temperature`: what RL
    optimises (a sample's reward), where greedy accuracy is what a user of greedy decoding
    sees. One chat turn, no tools run (the reasoning tasks need none)."""
    recs = tasks.generate(task, n, split="eval")
    s = SamplingConfig(
        temperature=temperature, max_new_tokens=tasks.max_new_tokens(task), seed=seed
    )
    groups = sample_replies(engine, recs, k, s)
    per_q = [sum(tasks.reward(r, m["content"]) == 1.0 for m, _ in g) for r, g in zip(recs, groups)]
    out = {"pass@1": sum(pass_at_k(k, c, 1) for c in per_q) / len(recs)}
    if k > 1:
        out[f"pass@{k}"] = sum(pass_at_k(k, c, k) for c in per_q) / len(recs)
    return out


@torch.no_grad()
def heldout(model, tok, task: str, n: int, k: int, temperature: float = 1.0, seed: int = 0) -> dict:
    """A model's held-out accuracy on a task three ways: greedy by the checker (`val_GROUP`),
    and pass@1 and pass@k from k samples at `temperature`."""
    model.eval()
    engine = Engine(model, tok, dtype="fp32")
    greedy = {f"val_{g}": r["accuracy"] for g, r in evaluate(engine, [task], n).items()}
    return greedy | sampled_accuracy(engine, task, n, k, temperature, seed)


def eval_command(c: EvalConfig, out: str | Path) -> dict:
    """`llmos eval`: greedy accuracy on held-out questions, tools on; `out`/eval.json keeps
    every question, reply and call."""
    from tqdm import tqdm

    names = [t.strip() for t in c.tasks.split(",") if t.strip()] or None
    for t in names or []:
        tasks.generate(t, 1, split="eval")  # an unknown task fails here, naming the known ones
    engine = Engine(load_model(c.model_dir), Tokenizer.load(c.model_dir), c.dtype)
    bar = tqdm(total=c.n * len(names or tasks.CHAT_TASKS), desc="eval", unit="q")
    result = evaluate(engine, names, c.n, progress=lambda _: bar.update())
    bar.close()
    write_json(Path(out) / "eval.json", {"model": c.model_dir, **result})
    for group, r in result.items():
        print(f"{group:24s} {r['accuracy']:6.1%}  (n {r['n']})")
    return result
