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
import functools
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


def numbers_left(rec: dict, reasoning: str) -> Counter | None:
    """The numbers a (partial) worked solution leaves to combine, or None if a finished step is
    not true arithmetic on numbers still available (an unfinished last step is not judged).

    >>> sorted(numbers_left({"numbers": [3, 5, 7]}, "3 * 5 = 15. 15 + 7").elements())
    [7, 15]
    """
    pool = Counter(rec["numbers"])
    done = reasoning[: reasoning.rfind(".") + 1]
    pos = 0
    while pos < len(done):
        m = STEP.match(done, pos)
        if not m:
            return None
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        pool[a] -= 1
        pool[b] -= 1
        if pool[a] < 0 or pool[b] < 0 or OPS[op](a, b) != c:
            return None
        pool[c] += 1
        pos = m.end()
    return +pool  # drop the zero counts


def steps_valid(rec: dict, reasoning: str) -> bool:
    """Whether every finished step of a (partial) worked solution is true arithmetic on
    numbers still available: a rule-based process verifier, the value tree search can use.

    >>> rec = {"numbers": [3, 5, 7]}
    >>> steps_valid(rec, "3 * 5 = 15. 15 + 7"), steps_valid(rec, "3 * 5 = 15. 15 + 15 = 30.")
    (True, False)
    """
    return numbers_left(rec, reasoning) is not None


@functools.cache
def can_reach(numbers: tuple[int, ...], target: int) -> bool:
    """Whether some of `numbers` (sorted), each at most once, make `target` with + - *: an
    exhaustive search over which two to combine next, cheap at four numbers (~10^3 nodes).

    >>> can_reach((3, 5, 7), 22), can_reach((1, 1, 2), 50)
    (True, False)
    """
    if target in numbers:
        return True
    for i in range(len(numbers)):
        for j in range(i + 1, len(numbers)):
            a, b = numbers[i], numbers[j]
            rest = numbers[:i] + numbers[i + 1 : j] + numbers[j + 1 :]
            for c in {a + b, a - b, b - a, a * b}:
                if can_reach(tuple(sorted(rest + (c,))), target):
                    return True
    return False


def reachable(rec: dict, reasoning: str) -> bool:
    """Whether a (partial) worked solution can still end at the target: its steps are valid and
    the numbers left can make it. The value Tree of Thoughts asks its model for ("sure / likely /
    impossible" to reach 24, Yao et al. 2023), here computed exactly: an oracle, as the checker
    is for best-of-N.

    >>> rec = {"numbers": [3, 5, 7], "answer": "22"}
    >>> reachable(rec, "3 * 5 = 15."), reachable(rec, "3 + 5 = 8.")
    (True, False)
    """
    left = numbers_left(rec, reasoning)
    return left is not None and can_reach(tuple(sorted(left.elements())), int(rec["answer"]))


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
