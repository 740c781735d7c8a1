"""Synthetic and model-assisted comparisons: sample K answers per prompt and let a judge rank.

`llmos prefs generate MODEL --prompts ... --k 4 --judge ...` writes TRL's preference records
(the best answer chosen, the worst rejected) for `llmos rm train` and `llmos dpo`. Judges:

- `checker`: each prompt's task checker (a verifiable reward: right beats wrong);
- `reference`: the prompt's own right answer (a task's, or a comparison's chosen one) beats
  every distinct sample that differs from it, as in SPIN (Chen et al. 2024). A reward model
  trained on templated answers alone has never seen what the policy really writes (at
  temperature 1 a small model rambles on after a right answer) and may score that highest;
  these pairs show it the policy's own mistakes;
- `rm:DIR`: a reward model's score;
- a model directory or an OpenAI-compatible URL: an LLM judge (Zheng et al. 2023), asked about
  every pair of answers in both orders. Judges favour a position (often the first); a verdict
  counts only when it names the same answer both ways, and the others are dropped and counted.

Prompts whose answers all rank equal carry no preference and are skipped (and counted).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from llmos import tasks
from llmos.chat_format import assistant_message, render
from llmos.checkpoint import load_model
from llmos.common import LlmosError, arg, write_jsonl
from llmos.infer.engine import Engine, SamplingConfig
from llmos.tokenizer import Tokenizer
from llmos.train.reward import score_answers


@dataclass
class PrefsConfig:
    model: str = arg("", "the model that answers: a model directory", positional=True)
    prompts: str = arg(
        "hallucination:1,knowledge:1",
        "tasks (their train questions) and JSONL files of {prompt} or {messages}, "
        "comma-separated name[:weight]",
    )
    k: int = arg(4, "answers sampled per prompt", lo=2)
    judge: str = arg(
        "checker",
        "checker (the task's), reference (the prompt's right answer beats every sample unlike "
        "it), rm:DIR (a reward model), or an LLM judge: a model directory or an "
        "OpenAI-compatible base URL",
    )
    api_key: str = arg("", "the judge endpoint's API key (else $OPENAI_API_KEY)")
    judge_model: str = arg("default", "the model name to ask the judge endpoint for")
    task_size: int = arg(50, "prompts a task gives per unit of weight", lo=1)
    temperature: float = arg(1.0, "sampling temperature of the answers", lo=0.01, hi=10)
    max_new_tokens: int = arg(64, "longest answer", lo=1)
    seed: int = arg(0, "seed of the prompts and the sampler")
    out: str = arg("", "the JSONL file of comparisons to write", required=True)


JUDGE_PROMPT = (
    "Which answer to the conversation below is better: more correct, more helpful, and honest "
    "about what it does not know? Reply with the letter A or B only.\n\n"
    "Conversation:\n{conversation}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}"
)


class LLMJudge:
    """A model asked which of two answers is better, A or B: a model directory (greedy) or an
    OpenAI-compatible endpoint (temperature 0)."""

    def __init__(self, where: str, api_key: str, model: str):
        if where.startswith(("http://", "https://")):
            import openai

            self.client = openai.OpenAI(base_url=where, api_key=api_key or "none", max_retries=2)
            self.model = model
        else:
            self.client, tok = None, Tokenizer.load(where)
            self.engine = Engine(load_model(where), tok)

    def ask(self, text: str) -> str:
        msgs = [{"role": "user", "content": text}]
        if self.client is not None:
            r = self.client.chat.completions.create(
                model=self.model, messages=msgs, temperature=0, max_tokens=4
            )
            return r.choices[0].message.content or ""
        prompt = render(self.engine.tok, msgs, add_generation_prompt=True)[0]
        s = SamplingConfig(temperature=0, max_new_tokens=4)
        return self.engine.generate([prompt], s)[0].text

    def prefers(self, prompt: list[dict], a: str, b: str) -> str | None:
        """ "a", "b", or None when the verdict changes with the order (position bias)."""
        conv = "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in prompt)

        def verdict(x, y):
            reply = self.ask(JUDGE_PROMPT.format(conversation=conv, a=x, b=y)).strip().upper()
            return reply[:1] if reply[:1] in ("A", "B") else None

        first, second = verdict(a, b), verdict(b, a)
        if first == "A" and second == "B":
            return "a"
        if first == "B" and second == "A":
            return "b"
        return None


def generate_preferences(c: PrefsConfig) -> dict:
    """Write c.out; the counts of what was kept and dropped."""
    recs = tasks.prompts(c.prompts, c.task_size, c.seed)
    tok = Tokenizer.load(c.model)
    engine = Engine(load_model(c.model), tok)
    end = tok.special_ids.get("<|end|>", tok.eos_id)
    stops = frozenset({end, tok.eos_id} - {None})
    rm = rm_tok = judge = None
    if c.judge.startswith("rm:"):
        rm, rm_tok = load_model(c.judge[3:], reward=True), Tokenizer.load(c.judge[3:])
    elif c.judge not in ("checker", "reference"):
        judge = LLMJudge(c.judge, c.api_key, c.judge_model)
    counts = {"prompts": len(recs), "comparisons": 0, "all_equal": 0, "judge_disagreed": 0}
    out = []
    for i, rec in enumerate(recs):
        prompt = render(tok, rec["prompt"], add_generation_prompt=True)[0]
        s = SamplingConfig(
            temperature=c.temperature, max_new_tokens=c.max_new_tokens, seed=c.seed * 100003 + i
        )
        done = engine.generate([prompt], s, stops, n=c.k)
        if c.judge == "reference":
            out += reference_pairs(rec, [assistant_message(tok, d.ids) for d in done], counts)
            continue
        answers = [d.text.strip() for d in done]
        if c.judge == "checker":
            scores = [tasks.reward(rec, a) for a in answers]
        elif rm is not None:
            scores = score_answers(rm, rm_tok, [rec["prompt"]] * len(answers), answers).tolist()
        else:  # round robin: a win counts only if the judge names it in both orders
            scores = [0.0] * len(answers)
            for x, y in itertools.combinations(range(len(answers)), 2):
                if answers[x] == answers[y]:
                    continue
                won = judge.prefers(rec["prompt"], answers[x], answers[y])
                if won is None:
                    counts["judge_disagreed"] += 1
                else:
                    scores[x if won == "a" else y] += 1
        best = max(range(len(answers)), key=lambda j: scores[j])
        worst = min(range(len(answers)), key=lambda j: scores[j])
        if scores[best] == scores[worst]:
            counts["all_equal"] += 1
            continue
        out.append(
            {
                "prompt": rec["prompt"],
                "chosen": [{"role": "assistant", "content": answers[best]}],
                "rejected": [{"role": "assistant", "content": answers[worst]}],
                "scores": {"chosen": scores[best], "rejected": scores[worst]},
                "judge": c.judge,
            }
        )
    if c.judge == "reference":
        counts.pop("judge_disagreed")
    counts["comparisons"] = len(out)
    write_jsonl(c.out, out)
    print(f"{c.out}: {json.dumps(counts)}")
    return counts


def reference_pairs(rec: dict, samples: list[dict], counts: dict) -> list[dict]:
    """The prompt's right answer over each distinct sample unlike it."""
    right = tasks.demonstration(rec)[len(rec["prompt"]) :]
    seen, out = set(), []
    for m in samples:
        key = json.dumps(m, sort_keys=True)
        if [m] == right or key in seen:
            continue
        seen.add(key)
        out.append(
            {"prompt": rec["prompt"], "chosen": right, "rejected": [m], "judge": "reference"}
        )
    counts["all_equal"] += not out  # every sample was the right answer
    return out


def prefs_command(c: PrefsConfig) -> None:
    if Path(c.out).is_dir():
        raise LlmosError(f"--out {c.out} is a directory; give a .jsonl file")
    generate_preferences(c)
