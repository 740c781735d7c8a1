"""`llmos selfplay`: the AlphaGo experiment, speedrun-sized. Imitate a weak teacher, then learn
past it by practising against a checkable reward.

AlphaGo's policy first imitated human games (supervised, capped near the humans it copied),
then played itself with the game's result as the reward and passed them (Silver et al. 2016).
Here the game is chain arithmetic (tasks/chain.py) and the human is a careless teacher:

1. `teacher.jsonl`: worked solutions of which only `--teacher-accuracy` (60%) are right; the
   rest slip by 1 or 2 in one step and carry the error to a wrong answer.
2. `sft/`: the pretrained base fine-tuned on the teacher (imitation).
3. `rl/`: GRPO from the SFT model with the checker as the reward (`llmos rl`).
4. `star/`: STaR from the SFT model, for comparison (`llmos star`: keep the right samples,
   fine-tune the base on them, repeat).

Held-out accuracy is measured two ways at every eval: pass@1, a sample at temperature 1 (what
the model *does*, and what imitation copies: a model that imitated perfectly is right as often
as its teacher), and greedy (the model's single most likely answer, which can be right where
the teacher's slips were random: the mode of a noisy teacher is the right answer). The report
card plots both, for SFT then RL, against the teacher's 60%.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from llmos import runs
from llmos.common import arg, atomic_write_text, write_json, write_jsonl
from llmos.tasks import chain
from llmos.train.rl import RLConfig, rl
from llmos.train.sft import SFTConfig, sft
from llmos.train.star import StarConfig, star


@dataclass
class SelfplayConfig:
    base: str = arg("", "a pretrained model (e.g. the speedrun's base)", positional=True)
    teacher_accuracy: float = arg(
        0.6, "share of the teacher's solutions that are right", lo=0, hi=1
    )
    teacher_size: int = arg(5000, "the teacher's worked solutions", lo=10)
    sft_steps: int = arg(600, "imitation steps (every weight trains)", lo=1)
    sft_lr: float = arg(1e-3, "imitation learning rate", lo=0)
    rl_steps: int = arg(200, "GRPO steps (8 questions x 8 answers)", lo=1)
    # 1e-4 raised pass@1 about as far in 100 steps but cost greedy accuracy 8 points (docs/LOG.md)
    rl_lr: float = arg(3e-5, "GRPO learning rate", lo=0)
    rl_kl: float = arg(0.0, "GRPO's KL β to the imitation model", lo=0)
    star_iterations: int = arg(2, "STaR rounds from the imitation model (0: none)", lo=0)
    star_questions: int = arg(1000, "questions STaR samples each round (4 samples each)", lo=1)
    eval_n: int = arg(100, "held-out questions at each eval", lo=1)
    eval_k: int = arg(8, "samples per held-out question for pass@1 and pass@k", lo=1)
    eval_every: int = arg(100, "imitation steps between evals (RL evaluates 5 times)", lo=1)
    seed: int = arg(0, "seed of every stage")


def selfplay(c: SelfplayConfig, out: str | Path) -> Path:
    """The stages in order; a stage that finished is skipped, one that was stopped resumes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float | None] = {}
    teacher = out / "teacher.jsonl"
    if not teacher.exists():
        write_jsonl(teacher, chain.weak_teacher(c.teacher_size, c.teacher_accuracy, c.seed))
    ev = {"eval_task": "chain", "eval_n": c.eval_n, "eval_k": c.eval_k, "seed": c.seed}
    sc = SFTConfig(base=c.base, data=str(teacher), lora_rank=0, max_steps=c.sft_steps, lr=c.sft_lr,
                   eval_every=c.eval_every, checkpoint_every=c.sft_steps, **ev)  # fmt: skip
    times["imitate the teacher (SFT)"] = runs.run_stage(
        out / "sft", lambda resume: sft(sc, out / "sft", resume)
    )
    rc = RLConfig(base=str(out / "sft"), task="chain", max_steps=c.rl_steps, lr=c.rl_lr,
                  kl_coef=c.rl_kl, eval_every=max(1, c.rl_steps // 5), eval_n=c.eval_n,
                  eval_k=c.eval_k, seed=c.seed)  # fmt: skip
    times["practise against the checker (GRPO)"] = runs.run_stage(
        out / "rl", lambda resume: rl(rc, out / "rl", resume)
    )
    if c.star_iterations:
        t = time.time()
        stc = StarConfig(base=c.base, start=str(out / "sft"), task="chain",
                         iterations=c.star_iterations, questions=c.star_questions,
                         sft_steps=c.sft_steps // 2, sft_lr=c.sft_lr, eval_n=c.eval_n,
                         eval_k=c.eval_k, seed=c.seed)  # fmt: skip
        star(stc, out / "star")
        times["STaR"] = time.time() - t
    write_report(out, c, times)
    return out


def curves(run: Path, offset: int = 0) -> list[dict]:
    """Held-out rows of a run (step shifted by `offset`), with its start (step 0) if logged."""
    rows = [r for r in runs.read_metrics(run) if "pass@1" in r]
    start = run / "summary.json"
    if start.exists():  # rl writes its step-0 evaluation there
        rows = [{"step": 0, **json.loads(start.read_text())["start"]}] + rows
    return [{**r, "step": r["step"] + offset} for r in rows]


def write_report(out: Path, c: SelfplayConfig, times: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft_rows = curves(out / "sft")
    rl_rows = curves(out / "rl", offset=c.sft_steps)
    star_rows = []
    if (out / "star" / "iterations.json").exists():
        star_rows = json.loads((out / "star" / "iterations.json").read_text())[1:]
    k = f"pass@{c.eval_k}"
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.axhline(100 * c.teacher_accuracy, color="gray", ls="--", label="teacher")
    for rows, name, color in [(sft_rows, "SFT (imitation)", "C0"), (rl_rows, "RL (GRPO)", "C3")]:
        if rows:
            steps = [r["step"] for r in rows]
            ax.plot(
                steps, [100 * r["pass@1"] for r in rows], "o-", color=color, label=f"{name}, pass@1"
            )
            ax.plot(steps, [100 * r["val_chain"] for r in rows], "s:", color=color, alpha=0.6,
                    label=f"{name}, greedy")  # fmt: skip
    for r in star_rows:
        x = c.sft_steps + r["iteration"] * c.rl_steps / max(1, len(star_rows))
        ax.plot(
            [x],
            [100 * r["pass@1"]],
            "D",
            color="C2",
            label="STaR, pass@1" if r["iteration"] == 1 else None,
        )
    ax.set_xlabel("training step (imitation, then RL)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Imitating a weak teacher, then practising against the checker")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "selfplay.png", dpi=100)
    plt.close(fig)

    def row(name, r):
        cells = [f"{100 * r[key]:.0f}%" for key in ("pass@1", "val_chain", k)]
        return f"| {name} | {' | '.join(cells)} |"

    sft_end, rl_end = sft_rows[-1], rl_rows[-1]
    lines = [f"| teacher | {100 * c.teacher_accuracy:.0f}% | | |", row("SFT (imitation)", sft_end)]
    lines.append(row("RL (GRPO)", rl_end))
    lines += [row(f"STaR, iteration {r['iteration']}", r) for r in star_rows]
    gain = 100 * (rl_end["pass@1"] - sft_end["pass@1"])
    verdict = (
        f"RL moved pass@1 by {gain:+.0f} points over its SFT start "
        f"({'met' if gain >= 20 else 'missed'}: the target is +20) and ended "
        f"{'above' if rl_end['pass@1'] > c.teacher_accuracy else 'below'} the teacher's "
        f"{100 * c.teacher_accuracy:.0f}%."
    )
    stage_times = "\n".join(
        f"| {name} | {t / 60:.1f} min |" if t is not None else f"| {name} | stopped |"
        for name, t in times.items()
    )
    text = f"""# Learning past the teacher (the AlphaGo experiment)

Base `{c.base}`; task `chain` (3 or 4 one-digit terms, a worked solution then the answer);
a teacher right on {100 * c.teacher_accuracy:.0f}% of {c.teacher_size} solutions; {c.sft_steps}
imitation steps; {c.rl_steps} GRPO steps; {c.eval_n} held-out questions, {c.eval_k} samples
each.

| model | pass@1 (T = 1) | greedy | {k} |
|---|---|---|---|
{chr(10).join(lines)}

{verdict}

![selfplay](selfplay.png)

pass@1 is what a sample of the model is worth, and what imitation copies: sampled, the SFT
model is about as often right as its teacher. Greedy decoding takes each step's most likely
token, and a teacher whose slips are random is most often right at each step, so greedy
SFT can already beat the teacher; RL's gain is in what the model samples.

| stage | time |
|---|---|
{stage_times}
"""
    atomic_write_text(out / "report.md", text)
    write_json(out / "summary.json", {"sft": sft_end, "rl": rl_end, "star": star_rows})
    print(f"report in {out}/report.md")
