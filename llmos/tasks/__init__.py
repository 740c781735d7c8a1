"""Tasks: conversations to fine-tune on, held-out questions to evaluate, and a reward.

One file per task, each with `generate(n, seed, split) -> records` and `reward(record, reply) ->
float` (1.0 right, 0.0 wrong): the checker that scores evaluation, and later a verifiable reward
for RL and a judge in the arena. A new task is a new file here and a line in TASKS.

    >>> recs = generate("arithmetic", 2, split="eval")
    >>> [reward(r, r["messages"][-1]["content"]) for r in recs]
    [1.0, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmos.common import arg, write_jsonl
from llmos.data.corpora import CorpusError, read_conversations
from llmos.tasks import agent, arithmetic, identity, knowledge, spelling

# Tasks answered in one chat turn (the calculator at most): what `evaluate` asks by default.
CHAT_TASKS = {
    "identity": identity,
    "arithmetic": arithmetic,
    "spelling": spelling,
    "knowledge": knowledge,
}
# Every task, for fine-tuning data; the agent's is evaluated by `llmos agent --eval`.
TASKS = CHAT_TASKS | {"agent": agent}
# A record's "task" is one of its task's groups (arithmetic-direct, knowledge-reverse, ...).
GROUPS = {g: mod for mod in TASKS.values() for g in mod.GROUPS}


def generate(task: str, n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """n records of a task from the train or the eval part of its space."""
    if task not in TASKS:
        raise CorpusError(f"no task {task!r}; tasks: {', '.join(TASKS)}")
    return TASKS[task].generate(n, seed, split)


def reward(record: dict, reply: str) -> float:
    """How right a final reply is, by the checker of the task that made the record."""
    group = record.get("task")
    if group not in GROUPS:
        raise CorpusError(f"a record of task {group!r} has no checker; tasks: {', '.join(GROUPS)}")
    return GROUPS[group].reward(record, reply)


def mixture(spec: str, task_size: int, seed: int) -> list[dict]:
    """The records a data spec names: comma-separated `name[:weight]`, each a task (generating
    task_size × weight records) or a JSONL file of conversations (repeated round(weight) times).

    >>> len(mixture("identity:1,spelling:0.5", 10, 0))
    15
    """
    out = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, _, w = part.partition(":")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise CorpusError(f"data '{part}': weight {w!r} is not a number") from None
        if name in TASKS:
            out += generate(name, int(task_size * weight), seed)
        elif Path(name).exists():
            out += read_conversations(name) * max(1, round(weight))
        else:
            raise CorpusError(f"data '{name}': no such file, and not a task ({', '.join(TASKS)})")
    if not out:
        raise CorpusError(f"data '{spec}' has no conversations")
    return out


@dataclass
class TasksConfig:
    task: str = arg("", "the task", positional=True, choices=list(TASKS))
    n: int = arg(100, "conversations to write", lo=1)
    seed: int = arg(0, "seed of the generator")
    split: str = arg(
        "train",
        "the train part of the task's space, or the held-out eval part",
        choices=["train", "eval"],
    )
    out: str = arg("", "the JSONL file to write", required=True)


def write_tasks(c: TasksConfig) -> None:
    records = generate(c.task, c.n, c.seed, c.split)
    write_jsonl(c.out, records)
    print(f"{c.out}: {len(records)} {c.split} conversations of task {c.task}")
