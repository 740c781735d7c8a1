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

from llmos.chat_format import ConversationError, check_conversation
from llmos.common import arg, write_jsonl
from llmos.data.comparisons import check_comparison, read_comparisons
from llmos.data.corpora import CorpusError, read_conversations, read_jsonl
from llmos.data.store import Store, default_path
from llmos.tasks import (
    agent,
    arithmetic,
    chain,
    copying,
    countdown,
    docs,
    gym,
    hallucination,
    hazard,
    identity,
    knowledge,
    safety,
    spelling,
)

# Tasks answered in one chat turn (the calculator at most): what `evaluate` asks by default.
CHAT_TASKS = {
    "identity": identity,
    "arithmetic": arithmetic,
    "spelling": spelling,
    "knowledge": knowledge,
    "hallucination": hallucination,
}
# Every task, for fine-tuning data; the agent's is evaluated by `llmos agent --eval`, the
# reasoning tasks (a worked solution, then the answer) by `llmos think` and `llmos rl`, `docs`
# (questions answered through the files tool, with citations) by `llmos eval --tasks docs`.
# Besides these, `gym:NAME` is any of reasoning-gym's datasets (tasks/gym.py).
# `hazard` and `safety` are the security lab's world: capabilities to attack, and safety
# fine-tuning against them (tasks/safety.py).
TASKS = CHAT_TASKS | {"agent": agent, "chain": chain, "countdown": countdown, "docs": docs}
TASKS |= {"copy": copying, "hazard": hazard, "safety": safety}
# Comparisons a task makes (TRL's preference records) for reward models and DPO.
PREFERENCES = {"hallucination": hallucination.preferences, "safety": safety.preferences}
# A record's "task" is one of its task's groups (arithmetic-direct, knowledge-reverse, ...).
GROUPS = {g: mod for mod in TASKS.values() for g in mod.GROUPS}


def is_task(name: str) -> bool:
    return name in TASKS or name.startswith("gym:")


def generate(task: str, n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """n records of a task from the train or the eval part of its space."""
    if task.startswith("gym:"):
        return gym.generate(task[4:], n, seed, split)
    if task not in TASKS:
        raise CorpusError(f"no task {task!r}; tasks: {', '.join(TASKS)}, gym:NAME")
    return TASKS[task].generate(n, seed, split)


def tools_for(rec: dict) -> dict | None:
    """The tools a record's question is asked with: its task's own (`tools_for(rec)`, bound to
    the record: the docs task's files over its folder), else None (the chat's default set)."""
    mod = TASKS.get(rec["task"]) or GROUPS.get(rec["task"])
    return mod.tools_for(rec) if hasattr(mod, "tools_for") else None


def max_new_tokens(task: str) -> int:
    """The answer budget of a task's evaluation: 64 tokens, more for worked solutions."""
    return 512 if task.startswith("gym:") else getattr(TASKS.get(task), "MAX_NEW_TOKENS", 64)


def final_answer(record: dict, reply: str) -> str:
    """The answer a reply gives, to compare replies (a vote): the last number for tasks that
    check it, else the reply stripped and lower-cased.

    >>> final_answer({"task": "chain"}, "The answer is 17.")
    '17'
    """
    read = getattr(GROUPS.get(record.get("task")), "final_answer", None)
    return read(reply) if read else reply.strip().lower()


def steps_valid(record: dict, reasoning: str) -> bool:
    """A task's process verifier: whether every finished step of a (partial) worked solution
    is right. Tasks without one raise CorpusError."""
    return _process_check(record, "steps_valid", "step checker")(record, reasoning)


def reachable(record: dict, reasoning: str) -> bool:
    """A task's exact value of a partial solution: whether it can still end right (countdown
    has one). Tasks without one raise CorpusError."""
    return _process_check(record, "reachable", "reachability value")(record, reasoning)


def _process_check(record: dict, name: str, what: str):
    check = getattr(GROUPS.get(record.get("task")), name, None)
    if check is None:
        have = ", ".join(g for g, m in GROUPS.items() if hasattr(m, name))
        raise CorpusError(f"task {record.get('task')!r} has no {what} ({have} do)")
    return check


def reward(record: dict, reply: str) -> float:
    """How right a final reply is, by the checker of the task that made the record."""
    group = record.get("task")
    if isinstance(group, str) and group.startswith("gym:"):
        return gym.reward(record, reply)
    if group not in GROUPS:
        raise CorpusError(f"a record of task {group!r} has no checker; tasks: {', '.join(GROUPS)}")
    return GROUPS[group].reward(record, reply)


def parts(spec: str) -> list[tuple[str, float]]:
    """(name, weight) of each comma-separated `name[:weight]` of a data spec.

    >>> parts("identity, arithmetic:3, store:corrections:2")
    [('identity', 1.0), ('arithmetic', 3.0), ('store:corrections', 2.0)]
    """
    out = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        # store:KIND[@FILE][:weight] and prefs:NAME[:weight] keep their first colon
        head = next((h for h in ("store:", "prefs:") if part.startswith(h)), "")
        name, _, w = part[len(head) :].partition(":")
        name = head + name
        try:
            out.append((name, float(w) if w else 1.0))
        except ValueError:
            raise CorpusError(f"data '{part}': weight {w!r} is not a number") from None
    return out


def mixture(spec: str, task_size: int, seed: int, kind: str = "conversations") -> list[dict]:
    """The records a data spec names: comma-separated `name[:weight]`, each a task (generating
    task_size × weight records) or a JSONL file (repeated round(weight) times). `kind`:
    conversations to fine-tune on, or comparisons for reward models and DPO.

    >>> len(mixture("identity:1,spelling:0.5", 10, 0))
    15
    >>> len(mixture("hallucination:2", 10, 0, kind="comparisons"))
    20
    """
    tasks = PREFERENCES if kind == "comparisons" else TASKS
    make = (
        (lambda name, n: PREFERENCES[name](n, seed))
        if kind == "comparisons"
        else (lambda name, n: generate(name, n, seed))
    )
    read = read_comparisons if kind == "comparisons" else read_conversations
    out = []
    for name, weight in parts(spec):
        if name in tasks or (kind == "conversations" and is_task(name)):
            out += make(name, int(task_size * weight))
        elif name.startswith("store:"):
            out += from_store(name, kind) * max(1, round(weight))
        elif Path(name).exists():
            out += read(name) * max(1, round(weight))
        else:
            raise CorpusError(f"data '{name}': no such file, and not a task ({', '.join(tasks)})")
    if not out:
        raise CorpusError(f"data '{spec}' has no {kind}")
    return out


def from_store(name: str, kind: str) -> list[dict]:
    """`store:corrections` (conversations a person fixed in the web chat) or
    `store:comparisons` (labels from the labeling page) of the server's SQLite store, or of
    the one named after an @: `store:corrections@runs/web/chats.sqlite`."""
    what, _, path = name[len("store:") :].partition("@")
    want = "comparisons" if kind == "comparisons" else "corrections"
    if what != want:
        raise CorpusError(f"data '{name}': this command reads store:{want}")
    path = Path(path) if path else default_path()
    if not path.exists():
        raise CorpusError(f"data '{name}': no store at {path} (`llmos serve --db` makes one)")
    store = Store(path)
    if kind == "comparisons":
        recs = store.comparisons()
        return [check_comparison(r, f"{path}: label {r['label_id']}") for r in recs]
    recs = store.corrections()
    for r in recs:
        try:
            check_conversation(r["messages"], f"{path}: correction {r['id']}")
        except ConversationError as e:
            raise CorpusError(str(e)) from None
    return recs


def prompts(spec: str, task_size: int, seed: int) -> list[dict]:
    """Records with a `prompt` (messages up to the answer) and, from tasks, their checker's
    fields: a spec names tasks (their train questions), `prefs:NAME` (the prompts of a
    preference task's comparisons) and JSONL files of {prompt} or {messages}."""
    out = []
    for name, weight in parts(spec):
        if is_task(name):
            recs = generate(name, int(task_size * weight), seed)
            out += [{**r, "prompt": r["messages"][:1]} for r in recs]
            continue
        if name.startswith("prefs:") and name[6:] in PREFERENCES:  # a preference task's prompts
            recs = PREFERENCES[name[6:]](int(task_size * weight), seed)
            out += [{"prompt": r["prompt"], "chosen": r["chosen"]} for r in recs]
            continue
        for n, rec in read_jsonl(name):
            msgs = rec.get("prompt") or rec.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise CorpusError(f"{name}:{n}: expected a 'prompt' or 'messages' list")
            if msgs[-1].get("role") == "assistant":  # a conversation: ask its last turn again
                msgs = msgs[:-1]
            out.append({**rec, "prompt": msgs})
    if not out:
        raise CorpusError(f"--prompts '{spec}' gives no prompts")
    return out


def demonstration(rec: dict) -> list[dict]:
    """The conversation a prompt record (from `prompts`) shows as right: the prompt and a
    comparison's chosen answer, or a task's whole conversation."""
    if "chosen" in rec:
        return rec["prompt"] + rec["chosen"]
    if len(rec.get("messages") or []) > len(rec["prompt"]):
        return rec["messages"]
    raise CorpusError(f"this prompt shows no right answer to learn from: {rec['prompt']}")


@dataclass
class TasksConfig:
    task: str = arg(
        "", f"the task: {', '.join(TASKS)} or gym:NAME (reasoning-gym)", positional=True
    )
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
