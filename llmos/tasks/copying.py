"""Copying: repeat a list of invented names, dates, amounts and paths exactly.

Why a task this plain: an agent copies all the time (a company's name into a search, a URL
from a result into `open`, figures from pages into a table), and a tiny model pretrained on a
few million tokens cannot. The speedrun's 1,400-step base repeats neither a random token
sequence nor a list of invented names it has just read: it has no induction heads, the
attention circuit that finds the earlier occurrence of the current token and copies what
followed it (Olsson et al. 2022, "In-context learning and induction heads"). Fine-tuned on
this task alone (800 steps of 8 rows of 512 tokens), its next-token accuracy on held-out lists
went from 3% to 84% under 256 tokens, 72% under 1k and 31% under 3k: copying forms (abruptly,
as in that paper), but only over the distances it was trained on, so lists run from a few
items to ~1,500 tokens (docs/LOG.md, session 15).

    >>> rec = generate(1)[0]
    >>> reward(rec, rec["messages"][-1]["content"])
    1.0
"""

from __future__ import annotations

import math
import random

from llmos.data.encyclopedia import made_up_word
from llmos.tasks.base import record, sample

GROUPS = ["copy"]
MAX_NEW_TOKENS = 2048


def item(r: random.Random) -> str:
    """An invented name, a date, an amount or a site path: what an agent copies."""
    kind = r.randrange(4)
    if kind == 0:
        return made_up_word(r, r.randint(2, 3)) + r.choice(["", "ly", "io", "ora", "tek", "wave"])
    if kind == 1:
        return f"{r.randint(2010, 2026)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
    if kind == 2:
        return f"{r.randint(1, 999)}.{r.randint(0, 9)}"
    return f"/{made_up_word(r, 2).lower()}-{r.choice(['seed', 'series-a', 'series-b'])}.html"


def one(r: random.Random) -> dict:
    n = int(math.exp(r.uniform(math.log(4), math.log(150))))  # log-uniform: short ones too
    items = "\n".join(item(r) for _ in range(n))
    return record("copy", f"Repeat this list exactly:\n{items}", items, items)


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    return sample(one, "copy", n, seed, split)


def reward(rec: dict, reply: str) -> float:
    return float(reply.strip() == rec["answer"])
