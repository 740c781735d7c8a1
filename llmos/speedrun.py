"""`llmos speedrun`: the whole story on a laptop, from text to an assistant, with a report card.

pretrain on the default corpus (Shakespeare, the KJV and a generated encyclopedia of fictional
people) -> fine-tune on the task mixture -> evaluate base and assistant on every task ->
report.md: stages and their time, loss curves, task accuracy, compression vs xz, samples.
A stage that already finished is skipped, one that was interrupted resumes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from llmos import tasks
from llmos.checkpoint import load_model
from llmos.common import arg, atomic_write_text, write_json
from llmos.config import PRESETS
from llmos.data.encyclopedia import encyclopedia
from llmos.eval.tasks import evaluate
from llmos.infer.engine import Engine
from llmos.runs import read_metrics
from llmos.tokenizer import Tokenizer
from llmos.train.pretrain import PretrainConfig, pretrain
from llmos.train.sft import SFTConfig, sft


@dataclass
class SpeedrunConfig:
    preset: str = arg("micro", "model shape (llmos presets lists them)", choices=list(PRESETS))
    pretrain_steps: int = arg(1000, "pretraining steps", lo=1)
    batch_size: int = arg(16, "pretraining rows of 256 tokens per step", lo=1)
    sft_steps: int = arg(600, "fine-tuning steps", lo=1)
    sft_data: str = arg(
        "identity:1,arithmetic:3,spelling:1,knowledge:0.3",
        "fine-tuning data: tasks and JSONL files, comma-separated name[:weight]",
    )
    # LoRA, not full fine-tuning: full fine-tuning overwrote the lookup of facts stored in
    # pretraining (held-out knowledge 0%); LoRA learns the format and forgets less
    # (Biderman et al. 2024, "LoRA Learns Less and Forgets Less").
    sft_lora_rank: int = arg(16, "LoRA rank of fine-tuning; 0: every weight trains", lo=0)
    sft_lr: float = arg(2e-3, "fine-tuning peak learning rate", lo=0)
    eval_n: int = arg(40, "held-out questions per task", lo=1)
    seed: int = arg(0, "seed of every stage")


def _stage(out: Path, run) -> float | None:
    """Run a training stage unless it finished before; resume it if it was interrupted. The
    seconds it took, or None if it was stopped (Ctrl-C) before finishing."""
    if (out / "report.md").exists():
        print(f"{out}: finished before, skipped")
        return 0.0
    t = time.time()
    run(resume=(out / "train_state.pt").exists())
    if not (out / "report.md").exists():
        print(f"{out}: stopped; run the same command again to continue")
        return None
    return time.time() - t


def speedrun(c: SpeedrunConfig, out: str | Path) -> Path:
    """Pretrain, fine-tune, evaluate, report; a stage stopped by Ctrl-C ends the run there
    (the next stage must not start from a half-trained model)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    pc = PretrainConfig(
        preset=c.preset,
        corpus="default",
        max_steps=c.pretrain_steps,
        batch_size=c.batch_size,
        seed=c.seed,
        checkpoint_every=100,
    )
    times["pretrain"] = _stage(out / "base", lambda resume: pretrain(pc, out / "base", resume))
    if times["pretrain"] is None:
        return out
    sc = SFTConfig(
        base=str(out / "base"),
        data=c.sft_data,
        max_steps=c.sft_steps,
        lr=c.sft_lr,
        lora_rank=c.sft_lora_rank,
        seed=c.seed,
        checkpoint_every=100,
    )
    times["fine-tune"] = _stage(
        out / "assistant", lambda resume: sft(sc, out / "assistant", resume)
    )
    if times["fine-tune"] is None:
        return out
    t = time.time()
    results = {}
    for name in ("base", "assistant"):
        engine = Engine(load_model(out / name), Tokenizer.load(out / name))
        with tqdm(desc=f"eval {name}", unit="q") as bar:
            results[name] = evaluate(engine, n=c.eval_n, progress=lambda _, b=bar: b.update(1))
    times["evaluate"] = time.time() - t
    write_json(out / "eval.json", results)
    report = report_card(out, c, times, results)
    atomic_write_text(out / "report.md", report)
    print(report)
    return out


def p_by_chance(right: int, n: int, p: float) -> float:
    """P(at least `right` of `n` by guessing, each right with probability p): binomial tail."""
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(right, n + 1))


def report_card(out: Path, c: SpeedrunConfig, times: dict, results: dict) -> str:
    base_metrics = [r for r in read_metrics(out / "base") if "val_bpb" in r]
    base_report = (out / "base" / "report.md").read_text()
    xz = next(line for line in base_report.splitlines() if line.startswith("| xz -9"))
    n_people = len(encyclopedia())
    rows = []
    groups = [g for g in tasks.GROUPS if g in results["assistant"]]
    for task in groups:
        b, a = results["base"].get(task, {"accuracy": 0.0}), results["assistant"][task]
        rows.append(f"| {task} | {a['n']} | {b['accuracy']:.0%} | {a['accuracy']:.0%} |")
    samples = []
    for task in groups:
        for e in results["assistant"][task]["examples"][:2]:
            calls = "".join(
                f"\n   tool call: {f['name']}({f['arguments']})" for f in e["tool_calls"]
            )
            mark = "right" if e["correct"] else "wrong"
            samples.append(
                f"- **user:** {e['question']}{calls}\n  **assistant:** {e['reply']} ({mark})"
            )
    chance = []
    for t in ("knowledge", "knowledge-reverse"):
        if a := results["assistant"].get(t):
            k = round(a["accuracy"] * a["n"])
            p = p_by_chance(k, a["n"], 1 / n_people)
            chance.append(
                f"- assistant, `{t}`: {k}/{a['n']} right; a guess at the base rate gets {k} or "
                f"more right with probability {p:.1g}."
            )
    tuned = f"LoRA rank {c.sft_lora_rank}" if c.sft_lora_rank else "every weight"
    stage_rows = "\n".join(f"| {k} | {v / 60:.1f} min |" for k, v in times.items())
    return f"""# llmos speedrun report card

Preset `{c.preset}`: {c.pretrain_steps} pretraining steps of {c.batch_size}×256 tokens on the
default corpus, {c.sft_steps} fine-tuning steps ({tuned}) on `{c.sft_data}`; greedy decoding, the
calculator tool on, {c.eval_n} held-out questions per task.

## Stages

| stage | wall time |
|---|---|
{stage_rows}

## Pretraining: compression of the val text

Final val bits per byte **{base_metrics[-1]["val_bpb"]:.3f}**; on the same text:
{xz.replace("|", "").strip()} bits per byte.

![pretraining loss](base/loss.png) ![fine-tuning loss](assistant/loss.png)

## Task accuracy (held-out questions)

| task | questions | base | assistant |
|---|---|---|---|
{chr(10).join(rows)}

Knowledge probes ask about fictional people who appear only in the biographies of the
pretraining corpus (the other half of the {n_people}-person encyclopedia also appears as
questions and answers, in pretraining and in fine-tuning, to teach the format); a random person
or town of the encyclopedia would be right {1 / n_people:.1%} of the time (the base rate).
`knowledge` asks "where was X born?" (the direction the encyclopedia states);
`knowledge-reverse` asks "who was born in T?" (the reversal curse, Berglund et al. 2023).
`arithmetic-direct` are small numbers the model answers itself; `arithmetic-tool` larger ones
it is taught to hand to the calculator. `hallucination` asks where people were born who appear
nowhere in the corpus: right is saying so (no fine-tuning conversation teaches it; comparisons,
DPO and RLHF do).

{chr(10).join(chance)}

## Sample conversations (assistant)

{chr(10).join(samples)}
"""
