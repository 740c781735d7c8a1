"""Task accuracy: ask held-out questions through the chat format, tools on, and score each
final reply with its task's reward (the same checker RL will use as a verifiable reward)."""

from __future__ import annotations

from llmos import tasks
from llmos.agent.loop import assistant_turn
from llmos.infer.engine import Engine, SamplingConfig


def evaluate(engine: Engine, names: list[str] | None = None, n: int = 50, progress=None) -> dict:
    """{group: {"accuracy", "n", "examples": [{question, reply, tool_calls, correct}]}}, the
    groups in the registry's order, for n held-out questions of each task (greedy)."""
    s = SamplingConfig(temperature=0, max_new_tokens=64)
    groups: dict[str, list] = {g: [] for g in tasks.GROUPS}  # registry order
    for task in names or list(tasks.CHAT_TASKS):
        for rec in tasks.generate(task, n, split="eval"):
            msgs = rec["messages"][:1]
            reply = assistant_turn(engine, msgs, s, max_calls=2)
            text = reply[-1]["content"]
            calls = [m["tool_calls"][0]["function"] for m in reply if m.get("tool_calls")]
            example = {"question": msgs[0]["content"], "reply": text, "tool_calls": calls}
            example["correct"] = tasks.reward(rec, text) == 1.0
            groups[rec["task"]].append(example)
            if progress:
                progress(task)
    return {
        g: {"accuracy": sum(e["correct"] for e in ex) / len(ex), "n": len(ex), "examples": ex}
        for g, ex in groups.items()
        if ex
    }
