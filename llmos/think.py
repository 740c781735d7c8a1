"""`llmos think`: test-time compute, trading generated tokens for accuracy (System 2).

One pass of a model is System 1: it answers at the speed of its forward pass. Given more
tokens it can do better, by sampling many lines of reasoning and choosing among them, or by
searching a tree of partial solutions. Every strategy here is measured the same way: held-out
accuracy against the tokens generated per question, for N = 1 ... 64:

- `greedy`: one greedy answer (the System-1 baseline; one point).
- `vote`, self-consistency (Wang et al. 2023): N samples at the sampling temperature, the most
  common final answer wins. It needs nothing but the answers, so it works on any endpoint.
- `best-of-n`: N samples, the one a scorer ranks highest wins. Scorers: `checker` (the task's
  own, an oracle: this is pass@N, the ceiling any selection can reach), `rm:DIR` (a reward
  model, or a verifier trained on the checker's labels with `llmos prefs generate --judge
  checker` + `llmos rm train`, as Cobbe et al. 2021 train theirs), `steps` (the task's
  rule-based process verifier: every step of the worked solution right; Lightman et al. 2023
  train one instead), `reachable` (an exact value: a partial solution's steps are right and
  the numbers left can still make the target; an answered one is right: on whole samples
  the same as `checker`), `logprob` (the model's own mean token log-probability).
- `beam`: tree search over reasoning steps (a step ends at "." or a newline), breadth-first
  with a beam (Tree of Thoughts' BFS, Yao et al. 2023): each round samples N x `--expand`
  next steps spread over the live beams, a value (`logprob`, `steps`, `reachable` or
  `rm:DIR`) ranks the partial solutions, the N best go on. Tree of Thoughts' value is the
  model asked whether 24 is still reachable; `reachable` is that judgment made exactly, as
  `checker` is for best-of-n. Finished reasoning is answered greedily, best-valued first.

vote and best-of-n draw one pool of max(N) samples per question and read every smaller N off
its first N samples (so the curves are paired, and cheaper); tokens count every sample used.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from llmos import tasks
from llmos.chat_format import assistant_message, render, turn_end_ids
from llmos.checkpoint import load_model
from llmos.common import LlmosError, arg, atomic_write_text, wilson, write_json, write_jsonl
from llmos.eval.tasks import sample_replies
from llmos.infer.engine import Engine, SamplingConfig
from llmos.tokenizer import Tokenizer
from llmos.train.reward import score_answers
from llmos.train.rlhf import padded, token_logps

STRATEGIES = ("greedy", "vote", "best-of-n", "beam")


@dataclass
class ThinkConfig:
    model: str = arg(
        "",
        "a model directory (llmos or imported), or an OpenAI-compatible base URL (greedy, "
        "vote and best-of-n with the checker: strategies that need no log-probabilities)",
        positional=True,
    )
    task: str = arg("chain", "the task whose held-out questions are asked (a task or gym:NAME)")
    strategy: str = arg(
        "greedy,vote,best-of-n,beam",
        "comma-separated: greedy, vote (self-consistency), best-of-n (by --scorer), beam "
        "(tree search over reasoning steps, by --value)",
    )
    n: str = arg(
        "1,2,4,8,16,32,64", "sample counts N to measure (beam: its width), comma-separated"
    )
    scorer: str = arg(
        "logprob",
        "best-of-n's choice: checker (the task's, an oracle: pass@N), steps (the task's process "
        "verifier: every step right), reachable (every step right and the target still "
        "reachable), rm:DIR (a reward model or trained verifier), logprob "
        "(the model's mean token log-probability)",
    )
    value: str = arg(
        "logprob",
        "beam's value of a partial solution: logprob, steps, reachable (as --scorer) or rm:DIR",
    )
    expand: int = arg(4, "beam: next steps sampled per beam each round (width x expand)", lo=1)
    max_beam: int = arg(16, "beam: the widest beam measured (wider N are skipped)", lo=1)
    questions: int = arg(100, "held-out questions", lo=1)
    temperature: float = arg(1.0, "sampling temperature of vote, best-of-n and beam", lo=0.01)
    max_new_tokens: int = arg(0, "longest answer; 0: the task's evaluation budget", lo=0)
    batch: int = arg(4, "questions sampled together (each forks into N rows)", lo=1)
    api_key: str = arg("", "the endpoint's API key (else $OPENAI_API_KEY)")
    endpoint_model: str = arg("default", "the model name to ask the endpoint for")
    seed: int = arg(0, "seed of the sampler")


# ---------------------------------------------------------------------------------------------
# Choosing among samples


def majority(answers: list[str]) -> int:
    """Index of the first sample whose answer is the most common (ties: the earliest answer).

    >>> majority(["12", "9", "9", "12", "9"])
    1
    """
    counts = Counter(answers)
    best = max(counts.values())
    return next(i for i, a in enumerate(answers) if counts[a] == best)


def best_of(scores: list[float]) -> int:
    """Index of the highest score (ties: the earliest).

    >>> best_of([0.1, 0.7, 0.7, -1.0])
    1
    """
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


# ---------------------------------------------------------------------------------------------
# Models: a local one (engine, log-probs) or an endpoint (answers only)


@dataclass
class Sample:
    message: dict  # the assistant message (content, and reasoning_content if it reasoned)
    tokens: int  # tokens generated for it
    ids: list[int] | None = None  # its token ids (local models)


class LocalModel:
    def __init__(self, path: str):
        self.tok = Tokenizer.load(path)
        self.model = load_model(path)
        self.model.eval()
        self.engine = Engine(self.model, self.tok)
        sp = self.tok.special_ids
        self.end_ids = turn_end_ids(self.tok)
        # A reasoning step ends at a token whose text holds "." or a newline, or at the end
        # of the reasoning (or of the turn).
        step = {i for i, b in enumerate(self.tok.id_bytes) if b"." in b or b"\n" in b}
        self.step_ids = frozenset(step | {sp.get("<|/think|>")} | self.end_ids) - {None}

    def prompt(self, rec: dict) -> list[int]:
        return render(self.tok, rec["messages"][:1], add_generation_prompt=True)[0]

    def sample(self, recs: list[dict], n: int, s: SamplingConfig) -> list[list[Sample]]:
        groups = sample_replies(self.engine, recs, n, s)
        return [[Sample(m, len(ids), ids) for m, ids in g] for g in groups]

    @torch.no_grad()
    def mean_logprob(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        """Mean log-probability per token of each answer after its prompt (temperature 1)."""
        pad = self.tok.special_ids.get("<|pad|>", self.tok.eos_id)
        rows = [(p + a, [0] * len(p) + [1] * len(a)) for p, a in zip(prompts, answers)]
        ctx = self.model.cfg.max_position_embeddings
        rows = [(r[-ctx:], m[-ctx:]) for r, m in rows]
        ids, targets = padded(rows, pad)
        logp = token_logps(self.model, ids, targets)
        n = (targets >= 0).sum(-1).clamp(min=1)
        return (logp.sum(-1) / n).tolist()


class EndpointModel:
    """An OpenAI-compatible server: n requests of one answer each (llama.cpp ignores `n`)."""

    def __init__(self, url: str, api_key: str, model: str):
        import openai

        key = api_key or os.environ.get("OPENAI_API_KEY", "none")
        self.client = openai.OpenAI(base_url=url, api_key=key, max_retries=2)
        self.name = model

    def sample(self, recs: list[dict], n: int, s: SamplingConfig) -> list[list[Sample]]:
        out = []
        for r in recs:
            group = []
            for k in range(n):
                reply = self.client.chat.completions.create(
                    model=self.name,
                    messages=r["messages"][:1],
                    temperature=s.temperature,
                    max_tokens=s.max_new_tokens,
                    seed=None if s.seed is None else s.seed + k,
                )
                msg = reply.choices[0].message
                m = {"role": "assistant", "content": msg.content or ""}
                reasoning = getattr(msg, "reasoning_content", None)
                if reasoning:
                    m["reasoning_content"] = reasoning
                used = reply.usage.completion_tokens if reply.usage else 0
                group.append(Sample(m, used))
            out.append(group)
        return out


# ---------------------------------------------------------------------------------------------
# Scorers: how best-of-n ranks whole answers and beam ranks partial ones


def make_scorer(spec: str, lm):
    """score(recs, samples) -> floats, higher is better."""
    if spec == "checker":
        return lambda recs, ss: [tasks.reward(r, s.message["content"]) for r, s in zip(recs, ss)]
    if spec == "steps":  # 1 while every finished step is right
        return lambda recs, ss: [
            float(tasks.steps_valid(r, s.message.get("reasoning_content") or ""))
            for r, s in zip(recs, ss)
        ]
    if spec == "reachable":  # an exact value: can this (partial) solution still end right?

        def reach(r, s):
            if s.message["content"].strip():  # answered: whether the answer is right
                return tasks.reward(r, s.message["content"])
            return float(tasks.reachable(r, s.message.get("reasoning_content") or ""))

        return lambda recs, ss: [reach(r, s) for r, s in zip(recs, ss)]
    if spec == "logprob":
        if not isinstance(lm, LocalModel):
            raise LlmosError("the logprob scorer needs a local model (an endpoint gives none)")
        return lambda recs, ss: lm.mean_logprob([lm.prompt(r) for r in recs], [s.ids for s in ss])
    if spec.startswith("rm:"):
        rm, tok = load_model(spec[3:], reward=True), Tokenizer.load(spec[3:])

        @torch.no_grad()
        def score(recs, ss):
            prompts = [r["messages"][:1] for r in recs]
            return score_answers(rm, tok, prompts, [s.message for s in ss]).tolist()

        return score
    raise LlmosError(f"scorer {spec!r}: use checker, steps, reachable, logprob or rm:DIR")


# ---------------------------------------------------------------------------------------------
# Tree search


def beam_search(
    lm: LocalModel, rec: dict, width: int, expand: int, value, s: SamplingConfig
) -> Sample:
    """Breadth-first search over reasoning steps with a beam of `width` (Tree of Thoughts'
    BFS): each round samples `width * expand` next steps, spread evenly over the live partial
    solutions (so the root, alone, gets them all: with `expand` from it a wide beam had only
    `expand` first steps to choose from, and accuracy stopped rising at width 4), the `value`
    ranks the extended ones, the best `width` go on; a finished one (its reasoning closed, or
    its turn ended) waits in the pool. The best finished reasoning is then answered (below)."""
    tok, sp = lm.tok, lm.tok.special_ids
    close = sp.get("<|/think|>")
    prompt, budget = lm.prompt(rec), s.max_new_tokens
    beams: list[list[int]] = [[]]
    finished: list[tuple[float, list[int]]] = []
    spent = 0
    while beams:
        step = SamplingConfig(
            temperature=s.temperature,
            max_new_tokens=max(1, budget - min(map(len, beams))),
            seed=None if s.seed is None else s.seed + spent,
        )
        each = -(-width * expand // len(beams))  # ceil
        done = lm.engine.generate([prompt + b for b in beams], step, lm.step_ids, each)
        spent += sum(len(d.ids) for d in done)
        cands = list({tuple(beams[i // each] + d.ids): 0 for i, d in enumerate(done)})
        samples = [Sample(assistant_message(tok, list(c)), len(c), list(c)) for c in cands]
        scores = value([rec] * len(cands), samples)
        ranked = sorted(zip(scores, cands), key=lambda x: -x[0])[:width]
        beams = []
        for score, c in ranked:
            ended = c[-1] in lm.end_ids or c[-1] == close or len(c) >= budget
            if ended:
                finished.append((score, list(c)))
            else:
                beams.append(list(c))
    # The best finished reasonings are answered greedily, best first, until an answer keeps
    # its reasoning's value. For `reachable` that means the answer makes the target: a model
    # that reached it in its steps still wrote a wrong expression for 11% of the questions.
    finished.sort(key=lambda x: -x[0])
    answered = []
    for score, c in [f for f in finished if f[0] == finished[0][0]][:width]:
        if c[-1] == close and len(c) < budget:  # the reasoning closed: now the answer
            greedy = SamplingConfig(temperature=0, max_new_tokens=budget - len(c))
            tail = lm.engine.generate([prompt + c], greedy, lm.end_ids)[0].ids
            spent += len(tail)
            c = c + tail
        (got,) = value([rec], [Sample(assistant_message(tok, c), len(c), c)])
        answered.append((got, c))
        if got >= score:
            break
    best = max(answered, key=lambda x: x[0])[1]
    return Sample(assistant_message(tok, best), spent, best)


# ---------------------------------------------------------------------------------------------
# The measurement


def think(c: ThinkConfig, out: str | Path) -> Path:
    """`llmos think`: accuracy against tokens per question for each strategy and N."""
    out = Path(out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    strategies = [x.strip() for x in c.strategy.split(",") if x.strip()]
    for x in strategies:
        if x not in STRATEGIES:
            raise LlmosError(f"--strategy {x!r}: choose from {', '.join(STRATEGIES)}")
    try:
        ns = sorted({int(x) for x in c.n.split(",") if x.strip()})
    except ValueError:
        raise LlmosError(f"--n {c.n!r}: comma-separated whole numbers") from None
    if not ns or ns[0] < 1 or ns[-1] > 256:
        raise LlmosError(f"--n {c.n!r}: each N must be 1 ... 256")
    remote = c.model.startswith(("http://", "https://"))
    lm = EndpointModel(c.model, c.api_key, c.endpoint_model) if remote else LocalModel(c.model)
    if remote and "beam" in strategies:
        raise LlmosError("beam search needs a local model (it scores partial answers)")
    recs = tasks.generate(c.task, c.questions, split="eval")
    specs = {c.scorer if "best-of-n" in strategies else "", c.value if "beam" in strategies else ""}
    if "steps" in specs:  # a task without the check says so before any work
        tasks.steps_valid(recs[0], "")
    if "reachable" in specs:
        tasks.reachable(recs[0], "")
    budget = c.max_new_tokens or tasks.max_new_tokens(c.task)
    s = SamplingConfig(temperature=c.temperature, max_new_tokens=budget, seed=c.seed)
    greedy = SamplingConfig(temperature=0, max_new_tokens=budget)
    scorer = make_scorer(c.scorer, lm) if "best-of-n" in strategies else None
    value = make_scorer(c.value, lm) if "beam" in strategies else None
    print(f"think: {len(recs)} held-out questions of {c.task}; {', '.join(strategies)}; N {ns}")

    rows: list[dict] = []  # one per question, strategy and N: what was chosen and its cost

    def record(strategy, n, i, chosen: Sample, tokens: int):
        right = tasks.reward(recs[i], chosen.message["content"]) == 1.0
        rows.append(
            {"strategy": strategy, "n": n, "question": i, "tokens": tokens, "correct": right}
            | {
                "reply": chosen.message["content"],
                "reasoning": chosen.message.get("reasoning_content"),
            }
        )

    batches = [list(range(i, min(i + c.batch, len(recs)))) for i in range(0, len(recs), c.batch)]
    if "greedy" in strategies:
        for b in tqdm(batches, desc="greedy"):
            for i, (one,) in zip(b, lm.sample([recs[i] for i in b], 1, greedy)):
                record("greedy", 1, i, one, one.tokens)
    pooled = [x for x in ("vote", "best-of-n") if x in strategies]
    if pooled:
        for b in tqdm(batches, desc=f"{ns[-1]} samples"):
            groups = lm.sample([recs[i] for i in b], ns[-1], s)
            for i, pool in zip(b, groups):
                answers = [tasks.final_answer(recs[i], x.message["content"]) for x in pool]
                scores = scorer([recs[i]] * len(pool), pool) if scorer else None
                for n in ns:
                    used = sum(x.tokens for x in pool[:n])
                    if "vote" in pooled:
                        record("vote", n, i, pool[majority(answers[:n])], used)
                    if "best-of-n" in pooled:
                        record("best-of-n", n, i, pool[best_of(scores[:n])], used)
    if "beam" in strategies:
        for n in [n for n in ns if n <= c.max_beam]:
            for i in tqdm(range(len(recs)), desc=f"beam {n}"):
                found = beam_search(lm, recs[i], n, c.expand, value, s)
                record("beam", n, i, found, found.tokens)
    write_jsonl(out / "choices.jsonl", rows)
    results = summarize(rows)
    write_json(out / "results.json", {"config": vars(c), "results": results})
    plot(out, results, c)
    write_report(out, c, results, len(recs))
    print(f"report in {out}/report.md")
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Accuracy (with its 95% interval) and mean tokens per question of each strategy and N."""
    keys = sorted(
        {(r["strategy"], r["n"]) for r in rows}, key=lambda k: (STRATEGIES.index(k[0]), k[1])
    )
    out = []
    for strategy, n in keys:
        rs = [r for r in rows if r["strategy"] == strategy and r["n"] == n]
        k = sum(r["correct"] for r in rs)
        lo, hi = wilson(k, len(rs))
        tokens = sum(r["tokens"] for r in rs) / len(rs)
        out.append(
            {"strategy": strategy, "n": n, "accuracy": k / len(rs), "ci": [lo, hi]}
            | {"tokens": tokens, "questions": len(rs)}
        )
    return out


def plot(out: Path, results: list[dict], c: ThinkConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in STRATEGIES:
        rs = [r for r in results if r["strategy"] == strategy]
        if not rs:
            continue
        label = {"best-of-n": f"best-of-N ({c.scorer})", "beam": f"beam ({c.value})"}.get(
            strategy, strategy
        )
        x, y = [r["tokens"] for r in rs], [100 * r["accuracy"] for r in rs]
        ax.plot(x, y, "o-" if len(rs) > 1 else "s", label=label)
        for r in rs:
            ax.annotate(f"{r['n']}", (r["tokens"], 100 * r["accuracy"]), fontsize=7, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per question")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"{c.task}: accuracy against test-time compute (labels: N)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_tokens.png", dpi=100)
    plt.close(fig)


def write_report(out: Path, c: ThinkConfig, results: list[dict], questions: int) -> None:
    table = "\n".join(
        f"| {r['strategy']} | {r['n']} | {100 * r['accuracy']:.0f}% "
        f"[{100 * r['ci'][0]:.0f}, {100 * r['ci'][1]:.0f}] | {r['tokens']:.0f} |"
        for r in results
    )
    text = f"""# Test-time compute: {c.task}

- model `{c.model}`; {questions} held-out questions; sampling temperature {c.temperature}
- best-of-N scorer `{c.scorer}`; beam value `{c.value}`, N x {c.expand} next steps a round

| strategy | N | accuracy [95% CI] | tokens per question |
|---|---|---|---|
{table}

![accuracy against tokens](accuracy_vs_tokens.png)
"""
    atomic_write_text(out / "report.md", text)
