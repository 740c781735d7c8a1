"""Task accuracy: ask held-out questions through the chat format, tools on, and check replies."""

from __future__ import annotations

from llmos.data.tasks import TASKS, check, generate, knowledge_questions
from llmos.infer.engine import Engine, SamplingConfig, assistant_turn

# Results are reported by the kind of record: arithmetic answered directly or through the
# calculator, knowledge asked forward or in reverse.
EVAL_GROUPS = [
    "identity",
    "arithmetic-direct",
    "arithmetic-tool",
    "spelling",
    "knowledge",
    "knowledge-reverse",
]


def eval_records(task: str, n: int) -> list[dict]:
    """n held-out questions of a task (knowledge: every held-out person, both directions)."""
    if task == "knowledge":
        return knowledge_questions("eval")
    return generate(task, n, split="eval")


def evaluate(engine: Engine, tasks: list[str] | None = None, n: int = 50, progress=None) -> dict:
    """{group: {"accuracy", "n", "examples": [{question, reply, tool_calls, correct}]}}."""
    s = SamplingConfig(temperature=0, max_new_tokens=64)
    groups: dict[str, list] = {}
    for task in tasks or list(TASKS):
        for rec in eval_records(task, n):
            msgs = rec["messages"][:1]
            reply = assistant_turn(engine, msgs, s, max_calls=2)
            text = reply[-1]["content"]
            calls = [m["tool_calls"][0]["function"] for m in reply if m.get("tool_calls")]
            example = {"question": msgs[0]["content"], "reply": text, "tool_calls": calls}
            example["correct"] = check(rec, text)
            groups.setdefault(rec["task"], []).append(example)
            if progress:
                progress(task)
    return {
        g: {"accuracy": sum(e["correct"] for e in ex) / len(ex), "n": len(ex), "examples": ex}
        for g, ex in groups.items()
    }
