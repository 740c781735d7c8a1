"""Knowledge probes: questions about the generated encyclopedia's people (data/encyclopedia.py).

Forward, "Where was X born?" (the direction the biographies state), and reverse, "Who was born
in T?" (the reversal curse, Berglund et al. 2023). Fine-tuning asks about a quarter of the people,
comparisons (issue 14) about another quarter; evaluation asks about the other half, whose facts
appear only in pretraining biographies.

The forward answer is "Born in T.", not "X was born in T.": a small model stores the fact (given
"X was born in", the speedrun's bases complete 13-14 of 15 held-out people) but cannot copy an
invented name it was asked about. Taught to begin with the name, assistants wrote one of the
fine-tuning people's names instead and answered 2-6 of 15; "Born in" needs no copy (7-13 of 15
on the same bases; docs/LOG.md, session 13).
"""

from __future__ import annotations

from llmos.data.encyclopedia import encyclopedia, probe_split
from llmos.tasks.base import contains, record

GROUPS = ["knowledge", "knowledge-reverse"]


def questions(split: str) -> list[dict]:
    """Both directions for every person of the split: train, prefs or eval (`probe_split`; the
    world of seed 0)."""
    out = []
    for p in encyclopedia():
        if probe_split(p["name"]) != split:
            continue
        fact = f"{p['name']} was born in {p['town']}."
        out += [
            record("knowledge", f"Where was {p['name']} born?", f"Born in {p['town']}.", p["town"]),
            record("knowledge-reverse", f"Who was born in {p['town']}?", fact, p["name"]),
        ]
    return out


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """A fixed set of questions: train repeats it to n records, eval asks up to n of it."""
    qs = questions(split)
    return [qs[i % len(qs)] for i in range(n)] if split == "train" else qs[:n]


def reward(rec: dict, reply: str) -> float:
    return contains(reply, rec["answer"])
