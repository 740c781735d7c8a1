"""Arithmetic: small sums answered directly, larger numbers through the calculator tool.

The tool answer restates only the result ("The answer is 13852."): an earlier form that
restated the whole sum ("A op B = RESULT.") made the model re-copy three numbers after the
tool message, and it garbled them (docs/LOG.md, session 2).
"""

from __future__ import annotations

import random

from llmos.tasks.base import last_number, last_number_is, record, sample

GROUPS = ["arithmetic-direct", "arithmetic-tool"]


def one(r: random.Random) -> dict:
    if r.random() < 0.4:
        a, b = r.randint(0, 20), r.randint(0, 20)
        op = r.choice("+-")
        value = a + b if op == "+" else a - b
        user = r.choice(["What is {} {} {}?", "Compute {} {} {}.", "{} {} {} = ?"]).format(a, op, b)
        return record("arithmetic-direct", user, f"{a} {op} {b} = {value}.", str(value))
    a, b = r.randint(10, 9999), r.randint(10, 9999)
    op = r.choice("+-*")
    expr = f"{a} {op} {b}"
    value = str({"+": a + b, "-": a - b, "*": a * b}[op])
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
    return record("arithmetic-tool", user, turns, value)


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    return sample(one, "arithmetic", n, seed, split)


def final_answer(reply: str) -> str:
    return last_number(reply)


def reward(rec: dict, reply: str) -> float:
    return last_number_is(reply, rec["answer"])
