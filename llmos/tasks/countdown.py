"""Countdown: reach a target from a few numbers with +, - and *, each number used at most once.

A search problem, unlike a sum: the first step decides whether the target is still reachable,
and nothing in the question says which step is right. The worked solution combines two of the
numbers left per step, then the answer is the expression (Tree of Thoughts' Game of 24 and
reasoning-gym's countdown, at a size a laptop model can learn):

    user:      Make 22 from 3, 5, 7 with +, - and *, each number at most once.
    reasoning: 3 * 5 = 15. 15 + 7 = 22.
    content:   3 * 5 + 7

The checker evaluates the expression (a safe reading of + - * and parentheses, never eval) and
checks it uses only the given numbers, each at most once.

    >>> rec = generate(1)[0]
    >>> reward(rec, rec["messages"][-1]["content"]), reward(rec, "1 + 1 + 1")
    (1.0, 0.0)
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter

from llmos.tasks.base import record, sample

GROUPS = ["countdown"]
MAX_NEW_TOKENS = 96
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def one(r: random.Random) -> dict:
    """3 or 4 numbers from 1 to 9; a random path through all of them to a target of 10 ... 99
    (so every question has an answer, the one the demonstration shows)."""
    while True:
        numbers = [r.randint(1, 9) for _ in range(r.choice([3, 4]))]
        pool = [(n, str(n)) for n in numbers]  # (value, expression)
        lines = []
        while len(pool) > 1:
            (a, ea), (b, eb) = pool.pop(r.randrange(len(pool))), pool.pop(r.randrange(len(pool)))
            if a < b:
                (a, ea), (b, eb) = (b, eb), (a, ea)  # no negative totals
            op = r.choice("+-*")
            value = OPS[op](a, b)
            lines.append(f"{a} {op} {b} = {value}.")
            if op != "+":  # a sum inside a difference or product needs its parentheses
                ea, eb = [e if e.isdigit() else f"({e})" for e in (ea, eb)]
            pool.append((value, f"{ea} {op} {eb}"))
        target, expr = pool[-1]
        if 10 <= target <= 99 and target not in numbers:
            break
    given = ", ".join(map(str, numbers))
    user = f"Make {target} from {given} with +, - and *, each number at most once."
    reply = [{"role": "assistant", "reasoning_content": " ".join(lines), "content": expr}]
    return record("countdown", user, reply, str(target)) | {"numbers": numbers}


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    return sample(one, "countdown", n, seed, split)


def value_of(expr: str) -> tuple[int, list[int]]:
    """(the value, the numbers used) of an expression of integers, + - * and parentheses;
    ValueError for anything else.

    >>> value_of("(9 - 2) * 3 + 1")
    (22, [9, 2, 3, 1])
    """
    numbers: list[int] = []

    def walk(node) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult):
            a, b = walk(node.left), walk(node.right)
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}[type(node.op)]
        if isinstance(node, ast.Constant) and type(node.value) is int:
            numbers.append(node.value)
            return node.value
        raise ValueError("only integers, +, -, * and parentheses")

    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise ValueError("not an expression") from None
    return walk(tree.body), numbers


STEP = re.compile(r"\s*(\d+) ([-+*]) (\d+) = (-?\d+)\.")


def steps_valid(rec: dict, reasoning: str) -> bool:
    """Whether every finished step of a (partial) worked solution is true arithmetic on
    numbers still available: a rule-based process verifier, the value tree search can use.

    >>> rec = {"numbers": [3, 5, 7]}
    >>> steps_valid(rec, "3 * 5 = 15. 15 + 7"), steps_valid(rec, "3 * 5 = 15. 15 + 15 = 30.")
    (True, False)
    """
    pool = Counter(rec["numbers"])
    done = reasoning[: reasoning.rfind(".") + 1]  # an unfinished last step is not judged
    pos = 0
    while pos < len(done):
        m = STEP.match(done, pos)
        if not m:
            return False
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        pool[a] -= 1
        pool[b] -= 1
        if pool[a] < 0 or pool[b] < 0 or OPS[op](a, b) != c:
            return False
        pool[c] += 1
        pos = m.end()
    return True


def final_answer(reply: str) -> str:
    return reply.strip()


def reward(rec: dict, reply: str) -> float:
    """1.0 if the reply is an expression equal to the target using only the given numbers,
    each at most once."""
    try:
        value, used = value_of(reply.strip().rstrip("."))
    except (ValueError, RecursionError):
        return 0.0
    return float(value == int(rec["answer"]) and not Counter(used) - Counter(rec["numbers"]))
