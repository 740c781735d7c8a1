"""Chain arithmetic: a sum of several one-digit numbers, worked out step by step.

A model this small cannot add four numbers in one forward pass, but it can add two, so the
worked solution (the reasoning, between <|think|> and <|/think|>) does one addition per step
and carries the running total, as a scratchpad does (Nye et al. 2021):

    user:      What is 7 + 5 - 3 + 8?
    reasoning: 7 + 5 = 12. 12 - 3 = 9. 9 + 8 = 17.
    content:   The answer is 17.

The checker reads only the final reply (the content), so a right answer reached by wrong
steps still counts, as an outcome reward does. `weak_teacher` writes the same solutions with a
slip in some of them: issue 15's AlphaGo experiment imitates it, then learns past it by RL.

    >>> rec = generate(1, seed=0)[0]
    >>> reward(rec, rec["messages"][-1]["content"])
    1.0
"""

from __future__ import annotations

import random
import re

from llmos.tasks.base import last_number, last_number_is, record, sample

GROUPS = ["chain"]
# The worked solution of 4 terms is ~50 tokens; the evaluation's default budget is 64.
MAX_NEW_TOKENS = 96


def steps(terms: list[int], ops: list[str]) -> list[tuple[int, str, int, int]]:
    """(running total, op, term, new total) of each step.

    >>> steps([7, 5, 3], ["+", "-"])
    [(7, '+', 5, 12), (12, '-', 3, 9)]
    """
    out, total = [], terms[0]
    for op, t in zip(ops, terms[1:]):
        new = total + t if op == "+" else total - t
        out.append((total, op, t, new))
        total = new
    return out


def worked(terms: list[int], ops: list[str], slip: tuple[int, int] | None = None) -> list[dict]:
    """The assistant turn: reasoning, then the answer. `slip` (step, error) writes that step's
    result off by `error` and carries the wrong total on, as a careless student would."""
    lines, total = [], terms[0]
    for k, (op, t) in enumerate(zip(ops, terms[1:])):
        new = total + t if op == "+" else total - t
        if slip and slip[0] == k:
            new += slip[1]
        lines.append(f"{total} {op} {t} = {new}.")
        total = new
    return [
        {
            "role": "assistant",
            "reasoning_content": " ".join(lines),
            "content": f"The answer is {total}.",
        }
    ]


def problem(r: random.Random) -> tuple[list[int], list[str], str]:
    """3 or 4 one-digit terms; a minus only where the total stays at or above zero."""
    terms, ops, total = [r.randint(1, 9)], [], 0
    total = terms[0]
    for _ in range(r.choice([2, 3])):
        t = r.randint(1, 9)
        op = r.choice("+-") if total - t >= 0 else "+"
        terms.append(t)
        ops.append(op)
        total = total + t if op == "+" else total - t
    expr = " ".join([str(terms[0])] + [f"{o} {t}" for o, t in zip(ops, terms[1:])])
    user = r.choice(["What is {}?", "Compute {}.", "{} = ?"]).format(expr)
    return terms, ops, user


def one(r: random.Random, slip_rate: float = 0.0) -> dict:
    terms, ops, user = problem(r)
    answer = str(steps(terms, ops)[-1][3])
    slip = None
    if r.random() < slip_rate:
        slip = (r.randrange(len(ops)), r.choice([-2, -1, 1, 2]))
    return record("chain", user, worked(terms, ops, slip), answer)


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    return sample(one, "chain", n, seed, split)


def weak_teacher(n: int, accuracy: float, seed: int = 0) -> list[dict]:
    """n train records whose worked solutions are right only `accuracy` of the time: the rest
    slip by 1 or 2 in one step, so the final answer is wrong. `answer` stays the true one."""
    return sample(lambda r: one(r, 1 - accuracy), "chain-teacher", n, seed, "train")


def steps_valid(rec: dict, reasoning: str) -> bool:
    """Whether every finished step of a (partial) worked solution is a true addition or
    subtraction carrying the total on from the question's terms (a process verifier).

    >>> rec = {"messages": [{"role": "user", "content": "What is 7 + 5 - 3?"}]}
    >>> steps_valid(rec, "7 + 5 = 12. 12 - 3"), steps_valid(rec, "7 + 5 = 13.")
    (True, False)
    """
    nums = [int(x) for x in re.findall(r"\d+", rec["messages"][0]["content"])]
    ops = re.findall(r" ([-+]) ", rec["messages"][0]["content"])
    want = [f"{a} {op} {t} = {n}." for a, op, t, n in steps(nums, ops)]
    done = [s + "." for s in reasoning[: reasoning.rfind(".") + 1].split(".")[:-1]]
    return [s.strip() for s in done] == want[: len(done)]


def final_answer(reply: str) -> str:
    return last_number(reply)


def reward(rec: dict, reply: str) -> float:
    return last_number_is(reply, rec["answer"])
