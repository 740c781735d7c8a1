"""Hazard: the capabilities the security lab attacks, before any safety training (the recipes,
the access code, messages, pages' requests). tasks/safety.py makes both kinds of record."""

from __future__ import annotations

from llmos.tasks import safety

GROUPS: list[str] = []  # its groups are safety's (hazard-recipe, ...)
reward = safety.reward


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    return safety.generate(n, seed, split, task="hazard")
