"""Spelling: spell a word letter by letter, or count a letter in it (after spelling it out, so
the count is over letters the model can see rather than over its multi-letter tokens)."""

from __future__ import annotations

import random

from llmos.tasks.base import contains, record, sample

GROUPS = ["spelling"]
WORDS = (
    "apple banana cherry dragon elephant forest garden harbor island jungle kettle lemon "
    "mirror needle orange pepper quartz river saddle tomato umbrella violin walnut yellow "
    "zebra strawberry mississippi bookkeeper balloon coffee letter committee"
).split()


def one(r: random.Random) -> dict:
    word = r.choice(WORDS)
    if r.random() < 0.5:
        spelled = "-".join(word)
        return record(
            "spelling", f"How do you spell {word}?", f"{word} is spelled {spelled}.", spelled
        )
    letter = r.choice(sorted(set(word)))
    n = word.count(letter)
    user = f"How many times does the letter '{letter}' appear in '{word}'?"
    reply = f"Spelled out, {word} is {'-'.join(word)}. The letter '{letter}' appears {n} times."
    # The answer names the letter: "1 times" alone matched replies about another letter.
    return record("spelling", user, reply, f"'{letter}' appears {n} times")


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    return sample(one, "spelling", n, seed, split)


def reward(rec: dict, reply: str) -> float:
    return contains(reply, rec["answer"])
