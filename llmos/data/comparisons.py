"""Comparisons: the second kind of label, "this answer is better than that one".

A comparison is TRL's conversational preference record,

    {"prompt": [messages...], "chosen": [assistant message], "rejected": [assistant message]}

(or TRL's implicit-prompt form: "chosen" and "rejected" as whole conversations sharing their
start, which is the prompt). Reward models (train/reward.py) and DPO (train/dpo.py) read them
as token pairs cut the way TRL cuts them, so a loss here and TRL's are over the same tokens.

    >>> rec = {"prompt": [{"role": "user", "content": "Hi"}],
    ...        "chosen": [{"role": "assistant", "content": "Hello!"}],
    ...        "rejected": [{"role": "assistant", "content": "Go away."}]}
    >>> check_comparison(rec)["chosen"][0]["content"]
    'Hello!'
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmos.chat_format import ConversationError, check_conversation, render
from llmos.data.corpora import CorpusError, read_jsonl
from llmos.data.shards import EpochOrder


def check_comparison(rec: dict, where: str = "comparison") -> dict:
    """The record with an explicit prompt, or a CorpusError naming `where` and the field."""
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise CorpusError(
                f"{where}: field '{key}' is missing (a comparison is "
                '{"prompt": [...], "chosen": [...], "rejected": [...]})'
            )
        if not isinstance(rec[key], list) or not rec[key]:
            raise CorpusError(
                f"{where}: field '{key}' must be a non-empty list of messages (TRL's "
                "conversational format; plain strings are not supported)"
            )
    if "prompt" in rec:
        prompt, chosen, rejected = rec["prompt"], rec["chosen"], rec["rejected"]
    else:  # implicit prompt: the messages both conversations start with (TRL's extract_prompt)
        n = 0
        while n < min(len(rec["chosen"]), len(rec["rejected"])) - 1:
            if rec["chosen"][n] != rec["rejected"][n]:
                break
            n += 1
        prompt, chosen, rejected = rec["chosen"][:n], rec["chosen"][n:], rec["rejected"][n:]
    if not isinstance(prompt, list) or not prompt:
        raise CorpusError(f"{where}: field 'prompt' must be a non-empty list of messages")
    for key, answer in (("chosen", chosen), ("rejected", rejected)):
        try:
            check_conversation(prompt + answer, f"{where}: prompt + {key}")
        except ConversationError as e:
            raise CorpusError(str(e)) from None
        if any(m.get("role") != "assistant" for m in answer):
            raise CorpusError(f"{where}: field '{key}' must hold assistant messages only")
    return {**rec, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def read_comparisons(path: str | Path) -> list[dict]:
    """Every comparison of a JSONL file; a bad line raises naming the file, line and field."""
    out = [check_comparison(rec, f"{path}:{n}") for n, rec in read_jsonl(path)]
    if not out:
        raise CorpusError(f"{path}: no comparisons")
    return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def pair_ids(tok, rec: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids, cut as TRL's DPOTrainer cuts them: the prompt
    rendered with the generation prompt, each answer being what prompt + answer adds after it
    (up to where they first differ: a template may render the prompt alone differently)."""
    tools = rec.get("tools")
    prompt, _ = render(tok, rec["prompt"], add_generation_prompt=True, tools=tools)
    chosen, _ = render(tok, rec["prompt"] + rec["chosen"], tools=tools)
    rejected, _ = render(tok, rec["prompt"] + rec["rejected"], tools=tools)
    n = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
    return prompt[:n], chosen[n:], rejected[n:]


class PairLoader:
    """Batches of comparisons for reward models and DPO, shuffled per epoch.

    A batch of B pairs is 2B right-padded rows, the B chosen conversations first and then the B
    rejected ones (TRL's layout), padded to the batch's longest row rather than to the context:
    `ids` (2B, T), `targets` (2B, T) the next token where it belongs to the answer else -1,
    `lengths` (2B,) the real tokens of each row, and `ref` (2B,) the reference model's
    log-probabilities of the answers when they were given (DPO)."""

    def __init__(
        self,
        pairs: list[tuple[list[int], list[int], list[int]]],
        batch_size: int,
        max_len: int,
        pad_id: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        ref: torch.Tensor | None = None,
    ):
        self.pairs, self.batch_size, self.max_len, self.pad_id = pairs, batch_size, max_len, pad_id
        self.ref = ref  # (N, 2): chosen and rejected log-probs of pair i under the reference
        self.order = EpochOrder(len(pairs), seed, rank, world)

    def state(self) -> dict:
        return self.order.state()

    def load_state(self, state: dict) -> None:
        self.order.load_state(state)

    def next(self) -> dict:
        return self.batch([self.order.next() for _ in range(self.batch_size)])

    def batch(self, indices: list[int]) -> dict:
        """The rows of the pairs `indices` (also used to score every pair once, in order)."""
        rows, starts = [], []
        for side in (1, 2):  # chosen rows, then rejected rows
            for i in indices:
                prompt, answer = self.pairs[i][0], self.pairs[i][side]
                # Keep the start, as TRL's default truncation does: an answer cut at the end
                # still compares the two from the same prompt.
                rows.append((prompt + answer)[: self.max_len])
                starts.append(len(prompt))
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id)
        targets = torch.full((len(rows), T), -1)
        for b, (row, start) in enumerate(zip(rows, starts)):
            ids[b, : len(row)] = torch.tensor(row)
            # Position t predicts token t+1: learn (or score) the answer's tokens only.
            targets[b, start - 1 : len(row) - 1] = torch.tensor(row[start:])
        out = {"ids": ids, "targets": targets, "lengths": torch.tensor([len(r) for r in rows])}
        if self.ref is not None:
            out["ref"] = torch.cat([self.ref[indices, 0], self.ref[indices, 1]])
        return out
