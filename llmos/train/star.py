"""`llmos star`: the Self-Taught Reasoner (Zelikman et al. 2022). Sample, keep what the
checker accepts, fine-tune, repeat.

Each iteration samples K worked solutions to every training question from the current model,
keeps one right solution per question (a question the model never solves teaches nothing,
and an easy one solved K times would otherwise count K times), and fine-tunes the *base*
model afresh on the kept ones, as the paper does to avoid overfitting to early, narrow data;
the new model samples the next iteration. It is RL's simplest cousin: filtered behaviour
cloning, a policy gradient with a 0/1 reward and no negative samples. (The paper's
"rationalization", hinting the answer for questions the model fails, is left out: our tasks'
hints would give the answer away in the prompt.)

    iter-1/data.jsonl   the kept solutions        iter-1/model   fine-tuned on them
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from llmos import runs, tasks
from llmos.checkpoint import load_model
from llmos.common import arg, atomic_write_text, write_json, write_jsonl
from llmos.eval.tasks import heldout, sample_replies
from llmos.infer.engine import Engine, SamplingConfig
from llmos.tokenizer import Tokenizer
from llmos.train import lora
from llmos.train.sft import SFTConfig, sft


@dataclass
class StarConfig:
    base: str = arg("", "the model each iteration fine-tunes afresh", positional=True)
    start: str = arg("", "the model that samples the first iteration (default: --base)")
    task: str = arg("chain", "the task: its train questions, its checker as the filter")
    iterations: int = arg(3, "sample-filter-fine-tune rounds", lo=1)
    questions: int = arg(1000, "training questions sampled each iteration", lo=1)
    k: int = arg(4, "solutions sampled per question", lo=1)
    temperature: float = arg(1.0, "sampling temperature", lo=0.05)
    sft_steps: int = arg(300, "fine-tuning steps per iteration", lo=1)
    sft_lr: float = arg(1e-3, "fine-tuning learning rate", lo=0)
    lora_rank: int = lora.rank_arg()
    eval_n: int = arg(50, "held-out questions after each iteration", lo=1)
    eval_k: int = arg(8, "samples per held-out question for pass@k", lo=1)
    seed: int = arg(0, "seed of the questions, the sampler and fine-tuning")


def keep_right(recs: list[dict], samples: list[list[dict]]) -> list[dict]:
    """One conversation per question: its first sampled answer the checker accepts.

    >>> q = [{"role": "user", "content": "1 + 2 = ?"}]
    >>> rec = {"task": "chain", "messages": q, "answer": "3"}
    >>> wrong, right = [{"role": "assistant", "content": a} for a in ("4", "3")]
    >>> keep_right([rec, rec], [[wrong, right], [wrong]])[0]["messages"][-1]["content"]
    '3'
    """
    out = []
    for rec, answers in zip(recs, samples):
        good = next((a for a in answers if tasks.reward(rec, a["content"]) == 1.0), None)
        if good is not None:
            out.append({"messages": rec["messages"][:1] + [good]})
    return out


def sample_solutions(model_dir, recs: list[dict], c: StarConfig, seed: int) -> list[list[dict]]:
    tok = Tokenizer.load(model_dir)
    engine = Engine(load_model(model_dir), tok)
    s = SamplingConfig(
        temperature=c.temperature, max_new_tokens=tasks.max_new_tokens(c.task), seed=seed
    )
    out = []
    for i in range(0, len(recs), 16):  # 16 questions x k rows per batch
        out += [[m for m, _ in g] for g in sample_replies(engine, recs[i : i + 16], c.k, s)]
    return out


def star(c: StarConfig, out: str | Path) -> Path:
    """`llmos star`: c.iterations rounds; a run stopped between rounds continues where it was."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.load(c.base)
    current = c.start or c.base
    rows = []
    first = heldout(load_model(current), tok, c.task, c.eval_n, c.eval_k, seed=c.seed)
    rows.append({"iteration": 0, **first})
    for it in range(1, c.iterations + 1):
        d = out / f"iter-{it}"
        d.mkdir(exist_ok=True)
        t0 = time.time()
        if not (d / "data.jsonl").exists():
            recs = tasks.generate(c.task, c.questions, seed=c.seed + it)
            kept = keep_right(recs, sample_solutions(current, recs, c, c.seed + it))
            write_jsonl(d / "data.jsonl", kept)
            write_json(d / "kept.json", {"questions": len(recs), "kept": len(kept)})
        kept = json.loads((d / "kept.json").read_text())
        if not kept["kept"]:  # nothing right to learn from: the model stays as it was
            print(f"star iteration {it}: no right solution among {kept['questions']} questions")
            rows.append({**rows[-1], "iteration": it, "kept": 0.0})
            continue
        sc = SFTConfig(
            base=c.base,
            data=str(d / "data.jsonl"),
            max_steps=c.sft_steps,
            lr=c.sft_lr,
            lora_rank=c.lora_rank,
            val_fraction=0.0,
            eval_every=c.sft_steps,
            seed=c.seed,
        )
        runs.run_stage(d / "model", lambda resume, sc=sc, d=d: sft(sc, d / "model", resume=resume))
        current = d / "model"
        result = heldout(load_model(current), tok, c.task, c.eval_n, c.eval_k, seed=c.seed)
        rows.append({"iteration": it, "kept": kept["kept"] / kept["questions"], **result})
        print(
            f"star iteration {it}: kept {kept['kept']}/{kept['questions']}; "
            + ", ".join(f"{k} {v:.2f}" for k, v in result.items())
            + f" ({(time.time() - t0) / 60:.1f} min)"
        )
    write_json(out / "iterations.json", rows)
    write_report(out, c, rows)
    return out


def write_report(out: Path, c: StarConfig, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in rows[-1] if k.startswith(("val_", "pass@"))]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys + ["kept"]:
        pts = [(r["iteration"], 100 * r[k]) for r in rows if k in r]
        ax.plot(*zip(*pts), "o-", label=k.removeprefix("val_"))
    ax.set_xlabel("STaR iteration")
    ax.set_ylabel("%")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "star.png", dpi=100)
    plt.close(fig)
    table = "\n".join(
        f"| {r['iteration']} | {100 * r['kept']:.0f}% | "
        if "kept" in r
        else f"| {r['iteration']} | | "
        for r in rows
    )
    table = "\n".join(
        line + " | ".join(f"{100 * r[k]:.0f}%" for k in keys) + " |"
        for line, r in zip(table.splitlines(), rows)
    )
    text = f"""# STaR report

- base `{c.base}`{f", first sampler `{c.start}`" if c.start else ""}; task `{c.task}`;
  {c.iterations} iterations of {c.questions} questions x {c.k} samples at temperature
  {c.temperature}, then {c.sft_steps} fine-tuning steps from the base (lr {c.sft_lr})
- kept: the share of training questions with a right sample (train accuracy at pass@{c.k})

| iteration | kept | {" | ".join(k.removeprefix("val_") for k in keys)} |
|---|---|{"---|" * len(keys)}
{table}

![STaR](star.png)
"""
    atomic_write_text(out / "report.md", text)
    print(f"report in {out}/report.md")
