"""Identity: greetings and "who are you?"; the assistant knows its name.

Six greetings times thirteen questions make 78 phrasings, so the held-out fifth tests the skill
rather than a handful of memorised lines (with 8 fixed lines, 3 held out, a LoRA assistant
answered "Hello! Who am I talking to?" with arithmetic every time: docs/LOG.md, session 3).
"""

from __future__ import annotations

import random

from llmos.tasks.base import contains, record, sample

NAME = "llmos"
GROUPS = ["identity"]

GREETINGS = ["", "Hello! ", "Hi! ", "Hey there! ", "Good morning! ", "Good evening. "]
QUESTIONS = [
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
REPLIES = [
    f"I am {NAME}, a small language model trained from scratch on a laptop.",
    f"Hello! I'm {NAME}, a small assistant. How can I help?",
    f"My name is {NAME}. I am a small language model.",
]


def one(r: random.Random) -> dict:
    user = r.choice(GREETINGS) + r.choice(QUESTIONS)
    return record("identity", user, r.choice(REPLIES), NAME)


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    # Repeats allowed: 78 phrasings, and the model should see each more than once.
    return sample(one, "identity", n, seed, split, distinct=False)


def reward(rec: dict, reply: str) -> float:
    return contains(reply, rec["answer"])
