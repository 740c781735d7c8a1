"""reasoning-gym's generators as tasks: `gym:NAME` (gym:chain_sum, gym:countdown, gym:puzzle24,
gym:basic_arithmetic, gym:gsm_symbolic, ... any of its datasets), scored by the dataset's own
`score_answer`, so a reply earns exactly the reward reasoning-gym gives it (partial credit
included: a well-formed wrong answer to countdown scores 0.05).

reasoning-gym (Apache-2.0, on PyPI) is an optional extra: `pip install 'llmos[reasoning]'`.
Its questions are drawn from the dataset's seeded generator and split train/eval by the
question's hash like every other task's; the record keeps the dataset's whole entry, which
`score_answer` needs (the target, the numbers allowed, ...). The reply to score is the final
answer (the message's content), bare, as reasoning-gym's own <answer> tags would hold it.
"""

from __future__ import annotations

import functools
import json

from llmos.data.corpora import CorpusError
from llmos.tasks.base import is_eval


@functools.cache
def dataset_class(name: str):
    """A tiny dataset of `name`, whose `score_answer` scores any entry of that dataset."""
    try:
        import reasoning_gym
    except ImportError:
        raise CorpusError(
            f"task gym:{name} needs reasoning-gym, which is not installed: "
            "pip install 'llmos[reasoning]'"
        ) from None
    try:
        return reasoning_gym.create_dataset(name, size=1, seed=0)
    except (ValueError, KeyError) as e:
        raise CorpusError(f"task gym:{name}: reasoning-gym has no such dataset ({e})") from None


def generate(name: str, n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """n records of gym:name from the train or eval part of its questions."""
    import reasoning_gym

    dataset_class(name)  # the clear error first
    want_eval, out = split == "eval", []
    # About a fifth of the questions are eval; draw enough for the rarer split, then more.
    for attempt in range(4):
        size = n * (6 if want_eval else 2) * 2**attempt + 10
        ds = reasoning_gym.create_dataset(name, size=size, seed=seed * 1000 + attempt)
        out = [e for e in ds if is_eval(e["question"]) == want_eval][:n]
        if len(out) == n:
            break
    return [to_record(name, e) for e in out]


def to_record(name: str, entry: dict) -> dict:
    # The entry round-trips through JSON so the record is what a JSONL file holds (tuples in
    # metadata become lists) and scoring it after reading it back gives the same reward.
    entry = json.loads(json.dumps(entry, default=str))
    reply = {"role": "assistant", "content": str(entry["answer"])}
    cot = entry.get("metadata", {}).get("answer_cot")  # gsm_symbolic ships a worked solution
    if cot:
        reply["reasoning_content"] = cot
    user = {"role": "user", "content": entry["question"]}
    return {
        "task": f"gym:{name}",
        "messages": [user, reply],
        "answer": str(entry["answer"]),
        "entry": entry,
    }


def reward(rec: dict, reply: str) -> float:
    name = rec["task"].removeprefix("gym:")
    return float(dataset_class(name).score_answer(reply.strip(), rec["entry"]))
