"""The docs task: answer a question about a folder of notes through the `files` tool, citing
the passage the answer came from.

Each "world" is a folder of Markdown notes about fictional people (the encyclopedia's names,
towns and jobs, plus an office room number), written among filler lines so that a file holds
several chunks and a citation has to name the right one. A question ("Where was Kalo Ritas
born?") is answered by one call, `files({"query": question})`, whose result (the index's top
passages, each under its citation, marked as data) holds the fact; the answer repeats the
fact and the citation of the passage it came from:

    Kalo Ritas was born in Venmortas [people/kalo-ritas.md:L4-7].

The index is BM25 only (no embeddings: a name is the best cue, and generating thousands of
worlds stays fast), with short chunks so a whole turn fits a 256-token context. Training
worlds are seeds 1000 and up, evaluation asks about worlds 0-99: their people and files are
never in training. `tools_for(rec)` gives the evaluation the files tool over the record's
world, so the model answers from a real search.

    >>> rec = generate(1, split="eval")[0]
    >>> reward(rec, rec["messages"][-1]["content"])
    1.0
"""

from __future__ import annotations

import random
import re
import tempfile
from functools import lru_cache
from pathlib import Path

from llmos.agent.files import Index, IndexConfig, build_index
from llmos.agent.tools import run_tool
from llmos.data.encyclopedia import encyclopedia, made_up_word

GROUPS = ["docs"]
MAX_NEW_TOKENS = 48
PEOPLE = 6  # per world
CHUNK_CHARS, OVERLAP_CHARS, HITS = 90, 30, 2  # a turn fits a 256-token context
QUESTIONS = {
    "town": ("Where was {name} born?", "{name} was born in {town}", "{name} was born in {town}."),
    "job": ("What does {name} do?", "{name} works as {a} {job}", "{name} works as {a} {job}."),
    "room": ("Which room is {name}'s office?", "{name}'s office is room {room}",
             "{name}'s office is room {room}."),
}  # fmt: skip
CITE = re.compile(r"\[([\w./-]+):L(\d+)-(\d+)\]")


def slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def world(seed: int) -> list[dict]:
    """The people of one world, each with the lines of their notes file (facts among filler)."""
    r = random.Random(f"docs/{seed}")
    people = encyclopedia(PEOPLE, seed=10_000 + seed)
    for p in people:
        p["room"] = str(r.randint(100, 999))
        facts = [QUESTIONS[k][2].format(**p) for k in ("town", "job", "room")]
        verbs, places = ["notes", "asks", "wrote"], ["garden", "harbour", "library", "market"]
        filler = [f"{made_up_word(r, 2)} {r.choice(verbs)} about the {r.choice(places)}."
                  for _ in range(6)]  # fmt: skip
        lines = [f"# {p['name']}"] + filler
        for f in facts:  # each fact at its own random place among the filler
            lines.insert(r.randint(1, len(lines)), f)
        p["file"], p["lines"] = f"people/{slug(p['name'])}.md", lines
    return people


@lru_cache(maxsize=8)
def world_index(seed: int) -> Index:
    """The BM25 index of a world's notes (written to a temporary folder, indexed, loaded)."""
    with tempfile.TemporaryDirectory() as d:
        for p in world(seed):
            path = Path(d, "notes", p["file"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(p["lines"]) + "\n")
        out = Path(d, "index")
        build_index(IndexConfig(str(Path(d, "notes")), str(out), CHUNK_CHARS, OVERLAP_CHARS, False))
        return Index.load(out)


def tools_for(rec: dict) -> dict:
    """The files tool over the record's world (what `eval.tasks.evaluate` offers the model)."""
    return world_index(rec["world"]).tool(k=HITS)


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """n question-and-answer turns through the files tool; a question whose fact the search
    does not bring back is skipped (the trace would teach guessing)."""
    r = random.Random(f"docs/{seed}/{split}")
    out, w = [], (1000 + seed * 100_000 if split == "train" else 0)
    while len(out) < n:
        tools = tools_for({"world": w})
        for p in world(w):
            for kind in r.sample(sorted(QUESTIONS), 2):
                q, fact, _ = (x.format(**p) for x in QUESTIONS[kind])
                result = run_tool("files", {"query": q}, tools)
                cites = [m for m in CITE.finditer(result) if fact in _passage(result, m)]
                if not cites:
                    continue
                c = cites[0].group(0)
                call = {
                    "type": "function",
                    "function": {"name": "files", "arguments": {"query": q}},
                }
                msgs = [{"role": "user", "content": q},
                        {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "content": str(result)},
                        {"role": "assistant", "content": f"{fact} {c}."}]  # fmt: skip
                line = p["lines"].index(next(x for x in p["lines"] if fact in x)) + 1
                answer = {"fact": fact, "file": p["file"], "line": line}
                out.append({"task": "docs", "messages": msgs, "answer": answer, "world": w})
        w += 1
    return r.sample(out, n) if split == "train" else out[:n]


def _passage(result: str, m: re.Match) -> str:
    """The text under one citation header, up to the next."""
    nxt = CITE.search(result, m.end())
    return result[m.end() : nxt.start() if nxt else len(result)]


def reward(rec: dict, reply: str) -> float:
    """1.0 if the reply states the fact and cites a passage of the right file whose lines
    include the fact's line; 0.5 for the fact with no right citation; else 0."""
    a = rec["answer"]
    if a["fact"].lower() not in reply.lower():
        return 0.0
    for m in CITE.finditer(reply):
        if m.group(1) == a["file"] and int(m.group(2)) <= a["line"] <= int(m.group(3)):
            return 1.0
    return 0.5
