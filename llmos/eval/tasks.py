"""Task accuracy: ask held-out questions through the chat format, tools on, and check replies."""

from __future__ import annotations

from llmos.data.tasks import TASKS, check, generate, knowledge_questions
from llmos.infer.engine import Engine, SamplingConfig, assistant_turn


def eval_records(task: str, n: int) -> list[dict]:
    """Held-out questions of a task; knowledge splits into forward and reverse."""
    if task.startswith("knowledge"):
        return [r for r in knowledge_questions("eval") if r["task"] == task][:n]
    return generate(task, n, split="eval")


EVAL_TASKS = [*TASKS, "knowledge-reverse"]


def evaluate(engine: Engine, tasks: list[str] | None = None, n: int = 50, progress=None) -> dict:
    """{task: {"accuracy", "n", "examples": [(question, reply, correct), ...]}} (greedy)."""
    s = SamplingConfig(temperature=0, max_new_tokens=64)
    out = {}
    for task in tasks or EVAL_TASKS:
        records, examples = eval_records(task, n), []
        for rec in records:
            msgs = rec["messages"][:1]
            reply = assistant_turn(engine, msgs, s, max_calls=2)
            text = reply[-1]["content"]
            calls = [m["tool_calls"][0]["function"] for m in reply if m.get("tool_calls")]
            examples.append(
                {
                    "question": msgs[0]["content"],
                    "reply": text,
                    "tool_calls": calls,
                    "correct": check(rec, text),
                }
            )
            if progress:
                progress(task)
        acc = sum(e["correct"] for e in examples) / max(1, len(examples))
        out[task] = {"accuracy": acc, "n": len(examples), "examples": examples}
    return out
