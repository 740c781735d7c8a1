"""`llmos speedrun`: the whole story on a laptop, from text to an assistant, with a report card.

pretrain on the default corpus (Shakespeare, the KJV and a generated encyclopedia of fictional
people) -> fine-tune on the task mixture -> the preference stage (a reward model, DPO, RLHF
with and without its KL penalty, all against hallucination) -> evaluate every model on every
task -> report.md: stages and their time, loss curves, task accuracy, compression vs xz, the
preference experiment, samples. A stage that already finished is skipped, one that was
interrupted resumes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from llmos import tasks
from llmos.checkpoint import load_model
from llmos.common import arg, atomic_write_text, wilson, write_json
from llmos.config import PRESETS
from llmos.data.encyclopedia import encyclopedia
from llmos.eval.tasks import evaluate
from llmos.infer.engine import Engine
from llmos.prefs import PrefsConfig, generate_preferences
from llmos.runs import read_metrics, run_stage
from llmos.tasks import hallucination
from llmos.tokenizer import Tokenizer
from llmos.train.dpo import DPOConfig, dpo
from llmos.train.pretrain import PretrainConfig, pretrain
from llmos.train.reward import RMConfig, score_answers, train_reward_model
from llmos.train.rlhf import RLHFConfig, rlhf
from llmos.train.sft import SFTConfig, sft


@dataclass
class SpeedrunConfig:
    preset: str = arg("micro", "model shape (llmos presets lists them)", choices=list(PRESETS))
    # 1,400 steps (~5.7M tokens, two passes over the corpus): at 1,000 the copying that the
    # calculator route needs (operands into the call, the result into the answer) sat on an
    # edge, 93-100% over three seeds; the extra 5.5 minutes keep the run near 30 minutes.
    pretrain_steps: int = arg(1400, "pretraining steps", lo=1)
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
    preference: bool = arg(
        True,
        "the preference stage: a reward model, DPO and RLHF (and RLHF without its KL "
        "penalty) on the hallucination comparisons, each evaluated against the assistant",
    )
    pref_pairs: int = arg(
        600, "hallucination comparisons (a third anchors, then half unknown names)", lo=3
    )
    rm_steps: int = arg(150, "reward-model steps (16 pairs each)", lo=1)
    dpo_steps: int = arg(200, "DPO steps (8 pairs each)", lo=1)
    dpo_lr: float = arg(1e-3, "DPO's learning rate (LoRA, as fine-tuning)", lo=0)
    # 10, as RLHF's: at 1 the preference term dominated and DPO unlearned held-out people
    # (67% -> 60 / 60 / 47% over three seeds, answering "Born in." with no town); at 10 they
    # held (80% on each), as they do with β 0, the likelihood term alone (docs/LOG.md, session 18)
    dpo_sft_weight: float = arg(10.0, "weight of DPO's likelihood term on chosen answers", lo=0)
    rlhf_steps: int = arg(100, "RLHF steps (8 prompts x 4 answers each)", lo=1)
    rlhf_lr: float = arg(1e-3, "RLHF's learning rate (LoRA, as fine-tuning)", lo=0)
    rlhf_kl: float = arg(0.3, "RLHF's KL β (a second run uses 0)", lo=0)
    # In the loss, not the reward: "I don't know who X is." has a log-ratio to the assistant
    # of ~100 nats, so a penalty in the return (β 0.3: ~-30) outweighed the reward model and
    # RLHF kept hallucinating on 100% / 65% / 100% of unknown names over three seeds; k3 in
    # the loss only keeps the policy covering what the assistant does: 32% / 38% / 12%
    # (docs/LOG.md, session 14).
    rlhf_kl_in: str = arg(
        "loss",
        "where RLHF's KL acts: reward or loss (llmos rlhf --kl-in)",
        choices=["reward", "loss"],
    )
    rlhf_sft_weight: float = arg(
        10.0,
        "weight of RLHF's likelihood term on the comparisons' chosen answers (0: pure RL, "
        'which never samples "I don\'t know" and so cannot learn it)',
        lo=0,
    )
    eval_n: int = arg(40, "held-out questions per task", lo=1)
    # With 40 unknown names a 95% interval on the hallucination rate is +-15 points, and
    # near-identical runs differed by 26 (docs/LOG.md, session 15): too wide to tell settings
    # apart. The questions are short: 200 cost a few seconds a model (session 16).
    eval_unknown: int = arg(200, "unknown names asked of each preference model", lo=1)
    seed: int = arg(0, "seed of every stage")


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
    times["pretrain"] = run_stage(out / "base", lambda resume: pretrain(pc, out / "base", resume))
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
    times["fine-tune"] = run_stage(
        out / "assistant", lambda resume: sft(sc, out / "assistant", resume)
    )
    if times["fine-tune"] is None:
        return out
    models = ["base", "assistant"]
    if c.preference:
        if not preference_stages(c, out, times):
            return out
        models += PREFERENCE_MODELS
    t = time.time()
    results = {}
    for name in models:
        engine = Engine(load_model(out / name), Tokenizer.load(out / name))
        with tqdm(desc=f"eval {name}", unit="q") as bar:
            tick = lambda _, b=bar: b.update(1)  # noqa: E731
            # With the preference stage, unknown names are asked eval_unknown times (once).
            asked = [t for t in tasks.CHAT_TASKS if not (c.preference and t == "hallucination")]
            results[name] = evaluate(engine, asked, c.eval_n, tick)
            if c.preference:
                results[name] |= evaluate(engine, ["hallucination"], c.eval_unknown, tick)
    times["evaluate"] = time.time() - t
    write_json(out / "eval.json", results)
    report = report_card(out, c, times, results)
    if c.preference:
        report += preference_card(out, c, results)
    atomic_write_text(out / "report.md", report)
    print(report)
    return out


# -- the preference stage (issue 14) --------------------------------------------------------

# Run directories of the stage's policies, in the report's order.
PREFERENCE_MODELS = ["dpo", "dpo-beta0", "rlhf", "rlhf-no-reward", "rlhf-kl0"]


def preference_stages(c: SpeedrunConfig, out: Path, times: dict) -> bool:
    """The assistant hallucinates a town for names it never read; comparisons say "I don't
    know" is better there, and the true town better for people it knows. A reward model
    learns them, DPO and RLHF optimise the assistant on them, and RLHF again with no KL
    penalty shows what happens when nothing holds the policy near the assistant. False if a
    stage was stopped."""
    sft_dir, data = str(out / "assistant"), "hallucination:1"
    common = dict(base=sft_dir, data=data, task_size=c.pref_pairs, seed=c.seed)
    # The reward model also learns that the assistant's own samples lose to the right answers
    # (SPIN-style pairs): trained on templated answers alone, it scored what a small model
    # writes at temperature 1 (a right answer, then rambling) above the right answer, and RLHF
    # learned to ramble (docs/LOG.md, session 8).
    own, t = out / "prefs-own-samples.jsonl", time.time()
    if not own.exists():
        generate_preferences(
            PrefsConfig(model=sft_dir, prompts="prefs:hallucination", task_size=c.pref_pairs // 2,
                        k=4, max_new_tokens=32, judge="reference", seed=c.seed, out=str(own))
        )  # fmt: skip
        times["own-sample pairs"] = time.time() - t
    rm = RMConfig(**common | {"data": f"{data},{own}"}, max_steps=c.rm_steps, checkpoint_every=100)
    dpo_c = DPOConfig(
        **common,
        max_steps=c.dpo_steps,
        lr=c.dpo_lr,
        lora_rank=c.sft_lora_rank,
        sft_weight=c.dpo_sft_weight,
        checkpoint_every=100,
    )
    rl = RLHFConfig(
        base=sft_dir,
        reward=f"rm:{out / 'rm'}",
        prompts="prefs:hallucination",
        task_size=c.pref_pairs,
        max_steps=c.rlhf_steps,
        lr=c.rlhf_lr,
        lora_rank=c.sft_lora_rank,
        sft_weight=c.rlhf_sft_weight,
        kl_coef=c.rlhf_kl,
        kl_in=c.rlhf_kl_in,
        # Every task the assistant learned, so a run that trades one away for reward (β 0
        # cost identity on two seeds of three, unseen by hallucination and knowledge alone) is
        # flagged as hacking.
        eval_tasks="hallucination,knowledge,identity,arithmetic",
        eval_n=20,
        eval_every=max(1, c.rlhf_steps // 4),
        seed=c.seed,
        checkpoint_every=100,
    )
    stages = [
        ("reward model", "rm", lambda resume: train_reward_model(rm, out / "rm", resume)),
        ("dpo", "dpo", lambda resume: dpo(dpo_c, out / "dpo", resume)),
        # β 0: no preference term, only the likelihood of the chosen answers (fine-tuning on
        # them): what the comparisons add over their chosen half, as rlhf-no-reward for RLHF
        (
            "dpo, β 0",
            "dpo-beta0",
            lambda resume: dpo(replace(dpo_c, beta=0.0), out / "dpo-beta0", resume),
        ),
        ("rlhf", "rlhf", lambda resume: rlhf(rl, out / "rlhf", resume)),
        (
            "rlhf, no reward",
            "rlhf-no-reward",
            lambda resume: rlhf(replace(rl, reward="none"), out / "rlhf-no-reward", resume),
        ),
        (
            "rlhf, no KL",
            "rlhf-kl0",
            lambda resume: rlhf(replace(rl, kl_coef=0.0), out / "rlhf-kl0", resume),
        ),
    ]
    for label, name, run in stages:
        times[label] = run_stage(out / name, run)
        if times[label] is None:
            return False
    return True


def _rate(examples: list[dict], hit) -> str:
    k, n = sum(map(hit, examples)), len(examples)
    lo, hi = wilson(k, n)
    return f"{k / n:.0%} [{lo:.0%}, {hi:.0%}]"


def preference_card(out: Path, c: SpeedrunConfig, results: dict) -> str:
    """The experiment's section of the report card: hallucination and knowledge with 95%
    intervals, the other tasks, and win rates against the assistant by checkers and by the
    reward model."""
    rm, rm_tok = load_model(out / "rm", reward=True), Tokenizer.load(out / "rm")
    # The reward model on comparisons of people and names none of its pairs had (the eval
    # split), so the figure is not one of pairs it was trained beside.
    held = hallucination.preferences(300, c.seed, "eval")
    prompts = [p["prompt"] for p in held]
    chosen = score_answers(rm, rm_tok, prompts, [p["chosen"][0] for p in held])
    rejected = score_answers(rm, rm_tok, prompts, [p["rejected"][0] for p in held])
    right = (chosen > rejected).tolist()
    rm_right = sum(right)
    lo, hi = wilson(rm_right, len(held))
    by_kind = {}
    for p, ok in zip(held, right):
        by_kind.setdefault(p["kind"], []).append(ok)
    kinds = ", ".join(f"{k} {sum(v) / len(v):.0%} of {len(v)}" for k, v in sorted(by_kind.items()))
    rm_val = [r for r in read_metrics(out / "rm") if "val_accuracy" in r][-1]["val_accuracy"]
    sft = results["assistant"]
    judged = ("hallucination", "knowledge")
    sft_ex = [e for g in judged for e in sft[g]["examples"]]
    others = [g for g in tasks.GROUPS if g in sft and g not in judged]
    rows, wins = [], []
    for name in ["assistant", *PREFERENCE_MODELS]:
        r = results[name]
        said_idk = lambda e: hallucination.admits_not_knowing(e["reply"])  # noqa: E731
        # Paired with the assistant, question by question: with 15 known people one question
        # is 7 points, so which ones changed says more than the two rates.
        pairs = list(zip(r["knowledge"]["examples"], sft["knowledge"]["examples"]))
        gained = sum(a["correct"] and not b["correct"] for a, b in pairs)
        lost = sum(b["correct"] and not a["correct"] for a, b in pairs)
        rows.append(
            f"| {name} | {_rate(r['hallucination']['examples'], lambda e: not e['correct'])} | "
            f"{_rate(r['knowledge']['examples'], lambda e: e['correct'])} | +{gained} −{lost} | "
            f"{_rate(r['knowledge']['examples'], said_idk)} | "
            + " | ".join(f"{r[g]['accuracy']:.0%}" for g in others)
            + " |"
        )
        if name == "assistant":
            continue
        ex = [e for g in judged for e in r[g]["examples"]]
        by_check = [(a["correct"] > b["correct"]) + 0.5 * (a["correct"] == b["correct"])
                    for a, b in zip(ex, sft_ex)]  # fmt: skip
        prompts = [[{"role": "user", "content": e["question"]}] for e in ex]
        mine = score_answers(rm, rm_tok, prompts, [e["reply"] for e in ex])
        theirs = score_answers(rm, rm_tok, prompts, [e["reply"] for e in sft_ex])
        by_rm = ((mine > theirs).float() + 0.5 * (mine == theirs).float()).mean()
        wins.append(
            f"| {name} | {sum(by_check) / len(by_check):.0%} | {float(by_rm):.0%} | {len(ex)} |"
        )
    header = (
        "| model | hallucinates (unknown names) | knowledge right (known) | known: right now, "
        f'wrong now vs the assistant | says "I don\'t know" (known) | {" | ".join(others)} |'
    )
    hacked = json.loads((out / "rlhf-kl0" / "summary.json").read_text())["verdict"]
    n_unknown, n_known = len(sft["hallucination"]["examples"]), len(sft["knowledge"]["examples"])
    return f"""
## Preferences: hallucination (issue 14)

The assistant was never shown a question about someone it does not know, so it names a town
for anyone. {c.pref_pairs} comparisons train a reward model ({c.rm_steps} steps, with pairs
where the assistant's own samples lose to the right answer; held-out pair accuracy
**{rm_val:.0%}** on pairs split off its data, and **{rm_right / len(held):.0%}** [{lo:.0%},
{hi:.0%}] on {len(held)} comparisons of people and names none of its pairs had: {kinds}), DPO
({c.dpo_steps} steps, LoRA, β 0.1, likelihood term {c.dpo_sft_weight}) and RLHF (RLOO on the
reward model's scores, LoRA, {c.rlhf_steps} steps, lr {c.rlhf_lr}, KL β {c.rlhf_kl} in the
{c.rlhf_kl_in}, likelihood term {c.rlhf_sft_weight} on the chosen answers as InstructGPT's
PPO-ptx mixes in pretraining;
again with no reward at all, `rlhf-no-reward`, to show what the reward adds, and with β 0;
DPO with β 0, `dpo-beta0`, is its likelihood term alone, fine-tuning on the chosen answers):
for unknown names "I don't know who that is." beats a made-up answer; for a quarter of the
encyclopedia's people (facts only in its biographies, not fine-tuned, not evaluated) the true
town beats "I don't know" or a wrong answer; in a third of the comparisons the
fine-tuning tasks' own answers beat "I don't know" (anchors).
Held-out: {n_unknown} names nobody in the corpus has, {n_known} questions about the
encyclopedia's other half (facts only in its biographies); greedy; 95% Wilson intervals.

{header}
|---|---|---|---|---|{"---|" * len(others)}
{chr(10).join(rows)}

Win rate against the assistant on those {n_unknown + n_known} questions (a tie counts half):

| model | by the checkers | by the reward model | questions |
|---|---|---|---|
{chr(10).join(wins)}

RLHF without the KL penalty: {hacked}

![reward vs KL, β {c.rlhf_kl}](rlhf/reward_kl.png) ![reward vs KL, β 0](rlhf-kl0/reward_kl.png)
"""


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
calculator tool on, held-out questions per task as the table's n says.

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
pretraining corpus (of the {n_people}-person encyclopedia's other half, some also appear as
questions and answers, in pretraining and in fine-tuning, to teach the format, and the rest are
the preference stage's known people); a random person
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
