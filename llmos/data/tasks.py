"""Task generators with checkers: conversations to fine-tune on, questions to evaluate.

Each task makes `{"task", "messages", "answer"}` records (the messages end with the assistant
turn to learn; `answer` is what a correct final reply must contain) and checks a reply. Train
and eval draw from disjoint parts of each task's space (by a hash of the question), so the
evaluation asks questions the model has never seen.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from llmos.tokenizer import check_conversation

NAME = "llmos"


def _held_out(key: str, fraction: float = 0.2) -> bool:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _record(task: str, user: str, reply: list[dict] | str, answer: str) -> dict:
    turns = reply if isinstance(reply, list) else [{"role": "assistant", "content": reply}]
    return {"task": task, "messages": [{"role": "user", "content": user}, *turns], "answer": answer}


def identity(r: random.Random) -> dict:
    """Greetings and "who are you?": the assistant knows its name. Greetings times questions
    make ~80 phrasings, so the held-out fifth tests the skill rather than five memorised lines."""
    greeting = r.choice(["", "Hello! ", "Hi! ", "Hey there! ", "Good morning! ", "Good evening. "])
    ask = r.choice(
        [
            "Who are you?",
            "What is your name?",
            "Who am I talking to?",
            "What are you?",
            "Who is this?",
            "Introduce yourself.",
            "Are you an AI?",
            "Tell me about yourself.",
            "What should I call you?",
            "Are you a person?",
            "Which model are you?",
            "What do you do?",
            "Can you tell me who you are?",
        ]
    )
    replies = [
        f"I am {NAME}, a small language model trained from scratch on a laptop.",
        f"Hello! I'm {NAME}, a small assistant. How can I help?",
        f"My name is {NAME}. I am a small language model.",
    ]
    return _record("identity", greeting + ask, r.choice(replies), NAME)


def arithmetic(r: random.Random) -> dict:
    """Small sums answered directly; larger numbers through a calculator tool call."""
    if r.random() < 0.4:
        a, b = r.randint(0, 20), r.randint(0, 20)
        op = r.choice("+-")
        value = a + b if op == "+" else a - b
        user = r.choice(["What is {} {} {}?", "Compute {} {} {}.", "{} {} {} = ?"]).format(a, op, b)
        return _record("arithmetic-direct", user, f"{a} {op} {b} = {value}.", str(value))
    a, b = r.randint(10, 9999), r.randint(10, 9999)
    op = r.choice("+-*")
    expr = f"{a} {op} {b}"
    value = str(eval(expr))  # noqa: S307 - our own two integers and one operator
    user = r.choice(["What is {}?", "Calculate {}.", "How much is {}?", "{} = ?"]).format(expr)
    call = {
        "type": "function",
        "function": {"name": "calculator", "arguments": {"expression": expr}},
    }
    turns = [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": value},
        {"role": "assistant", "content": f"The answer is {value}."},
    ]
    return _record("arithmetic-tool", user, turns, value)


WORDS = (
    "apple banana cherry dragon elephant forest garden harbor island jungle kettle lemon "
    "mirror needle orange pepper quartz river saddle tomato umbrella violin walnut yellow "
    "zebra strawberry mississippi bookkeeper balloon coffee letter committee"
).split()


def spelling(r: random.Random) -> dict:
    """Spell a word letter by letter, or count a letter in it."""
    word = r.choice(WORDS)
    if r.random() < 0.5:
        spelled = "-".join(word)
        return _record(
            "spelling", f"How do you spell {word}?", f"{word} is spelled {spelled}.", spelled
        )
    letter = r.choice(sorted(set(word)))
    n = word.count(letter)
    user = f"How many times does the letter '{letter}' appear in '{word}'?"
    reply = f"Spelled out, {word} is {'-'.join(word)}. The letter '{letter}' appears {n} times."
    return _record("spelling", user, reply, f"'{letter}' appears {n} times")


# -- knowledge probes: a generated encyclopedia of people and places nobody else knows ----------

_SYL = "ka lo ri ven tas mor eli dun sar ith bel quo fen ral tor mi zan pe ol gry".split()
PROFESSIONS = "glassblower cartographer beekeeper astronomer weaver ferryman luthier brewer".split()


def _word(r: random.Random, n: int) -> str:
    return "".join(r.choice(_SYL) for _ in range(n)).capitalize()


def encyclopedia(n: int = 30, seed: int = 0) -> list[dict]:
    """Fictional people, each born in a town of their own (so "who was born in T?" has one
    answer), with a profession. Deterministic: the same seed gives the same world."""
    r, people, names, towns = random.Random(f"encyclopedia/{seed}"), [], set(), set()
    while len(people) < n:
        name, town = f"{_word(r, 2)} {_word(r, 2)}", _word(r, 3)
        if name in names or town in towns:
            continue
        names.add(name)
        towns.add(town)
        job = r.choice(PROFESSIONS)
        people.append(
            {"name": name, "town": town, "job": job, "a": "an" if job[0] in "aeiou" else "a"}
        )
    return people


def encyclopedia_docs(
    n: int = 30, seed: int = 0, repeats: int = 400, qa_repeats: int = 100
) -> list[tuple[str, str]]:
    """(id, text) documents stating each person's birthplace as "<name> ... <town>" (the
    forward direction; the reverse question tests the reversal curse). One form repeats the
    name after the town ("X was born in T. X worked as ..."), which the base model can recite
    from the town; the one run of a forward-only variant failed the probes (docs/LOG.md).

    For the fine-tuning half of the people, pretraining also sees the facts as questions and
    answers ("mixed training", Allen-Zhu & Li 2023, Physics of LMs 3.1): a model that saw
    only biographies stores the facts but cannot yet be asked for them, and fine-tuning alone
    then teaches it to recite memorised answers instead of looking the asked person up."""
    forms = [
        "{name} was born in {town}. {name} worked as {a} {job}.",
        "{name}, {a} {job}, was born in {town}.",
        "The {job} {name} was born in the town of {town}.",
        "{name} was born in {town} and became a well known {job}.",
    ]
    qa = "Question: Where was {name} born?\nAnswer: {name} was born in {town}."
    people = encyclopedia(n, seed)
    docs = []
    for p in people:
        for k in range(repeats):
            docs.append((f"encyclopedia/{p['name']}/{k}", forms[k % len(forms)].format(**p)))
    for p in people:
        if is_probe_train(p["name"]):
            docs += [
                (f"encyclopedia/qa/{p['name']}/{k}", qa.format(**p)) for k in range(qa_repeats)
            ]
    return docs


def is_probe_train(name: str) -> bool:
    """Half the people: fine-tuning teaches the question format on them; eval asks the rest."""
    return not _held_out(name, 0.5)


def knowledge_questions(split: str, seed: int = 0) -> list[dict]:
    """Forward ("where was X born?") and reverse ("who was born in T?") questions."""
    out = []
    for p in encyclopedia(seed=seed):
        if is_probe_train(p["name"]) != (split == "train"):
            continue
        fwd = _record(
            "knowledge",
            f"Where was {p['name']} born?",
            f"{p['name']} was born in {p['town']}.",
            p["town"],
        )
        rev = _record(
            "knowledge-reverse",
            f"Who was born in {p['town']}?",
            f"{p['name']} was born in {p['town']}.",
            p["name"],
        )
        out += [fwd, rev]
    return out


def knowledge(r: random.Random) -> dict:
    return r.choice(knowledge_questions("train"))


TASKS = {
    "identity": identity,
    "arithmetic": arithmetic,
    "spelling": spelling,
    "knowledge": knowledge,
}


def generate(task: str, n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """n distinct records of a task from the train or the eval part of its space."""
    if task == "knowledge":  # a fixed set of questions: train repeats it, eval asks the others
        qs = knowledge_questions(split)
        return [qs[i % len(qs)] for i in range(n)] if split == "train" else qs[:n]
    r, out, seen = random.Random(f"{task}/{seed}/{split}"), [], set()
    for _ in range(n * 50):
        rec = TASKS[task](r)
        q = rec["messages"][0]["content"]
        if _held_out(q) == (split == "eval") and (q not in seen or task == "identity"):
            seen.add(q)
            out.append(rec)
            if len(out) == n:
                break
    return out


def check(record: dict, reply: str) -> bool:
    """Whether a final reply gives the expected answer: for a number, the reply's last number
    (so echoing the question's numbers does not count); otherwise the answer's words."""
    want = record["answer"]
    if re.fullmatch(r"-?\d+", want):
        numbers = re.findall(r"-?\d+", reply.replace(",", ""))
        return bool(numbers) and numbers[-1] == want
    return want.lower() in reply.lower()


def read_conversations(path: str | Path) -> list[dict]:
    """`{"messages": [...]}` records of a JSONL file; a bad line is named by file and line."""
    from llmos.data.corpora import CorpusError, read_jsonl

    out = []
    for n, rec in read_jsonl(path):
        try:
            check_conversation(rec.get("messages"), f"{path}:{n}")
        except ValueError as e:
            raise CorpusError(str(e)) from None
        out.append(rec)
    return out


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    from llmos.checkpoint import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
