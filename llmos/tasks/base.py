"""What the task files share: the record they make, the train/eval split of a task's space,
and the two ways a reply is checked (the last number, or the answer's words).

A record is `{"task", "messages", "answer"}`: `task` names the kind of question (one task may
make several kinds, e.g. arithmetic answered directly or through the calculator), the messages
end with the assistant turn to learn, and `answer` is what a correct final reply must give.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from llmos.common import hash_fraction


def record(task: str, user: str, reply: list[dict] | str, answer: str) -> dict:
    turns = reply if isinstance(reply, list) else [{"role": "assistant", "content": reply}]
    return {"task": task, "messages": [{"role": "user", "content": user}, *turns], "answer": answer}


def is_eval(question: str, fraction: float = 0.2) -> bool:
    """Whether a question belongs to the eval part of its task's space (a fifth, by hash)."""
    return hash_fraction(question) < fraction


def sample(
    make: Callable[[random.Random], dict],
    name: str,
    n: int,
    seed: int,
    split: str,
    distinct: bool = True,
) -> list[dict]:
    """n records from `make(rng)` whose questions fall in the train or the eval part; train and
    eval never share a question, so evaluation asks what the model has never seen. `distinct`:
    no question twice (off for tasks with few phrasings, where repeats are the point)."""
    r, out, seen = random.Random(f"{name}/{seed}/{split}"), [], set()
    for _ in range(n * 50):  # rejection sampling; bounded in case a space runs out
        rec = make(r)
        q = rec["messages"][0]["content"]
        if is_eval(q) == (split == "eval") and (q not in seen or not distinct):
            seen.add(q)
            out.append(rec)
            if len(out) == n:
                break
    return out


def last_number(reply: str) -> str:
    """The reply's last number ("" if none): what a reply to a sum answers.

    >>> last_number("9 - 0 = -1."), last_number("no idea")
    ('-1', '')
    """
    numbers = re.findall(r"-?\d+", reply.replace(",", ""))
    return numbers[-1] if numbers else ""


def last_number_is(reply: str, want: str) -> float:
    """1.0 if the reply's last number is `want` (so echoing the question's numbers does not
    count: "9 - 0 = -1." answers -1, not 9).

    >>> last_number_is("12 * 34 = 408.", "408"), last_number_is("408 is not it: 407", "408")
    (1.0, 0.0)
    """
    return float(last_number(reply) == want != "")


def contains(reply: str, want: str) -> float:
    """1.0 if the answer's words appear in the reply, ignoring case."""
    return float(want.lower() in reply.lower())
