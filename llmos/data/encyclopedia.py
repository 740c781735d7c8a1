"""A generated encyclopedia: fictional people and towns that no model can know from elsewhere.

It joins the default pretraining corpus, and the knowledge task (tasks/knowledge.py) asks about
it: whether a model can be asked for a fact it read only in pretraining text, and whether it can
answer the question the other way round (the reversal curse, Berglund et al. 2023).
"""

from __future__ import annotations

import random

from llmos.common import hash_fraction

_SYL = "ka lo ri ven tas mor eli dun sar ith bel quo fen ral tor mi zan pe ol gry".split()
PROFESSIONS = "glassblower cartographer beekeeper astronomer weaver ferryman luthier brewer".split()


def made_up_word(r: random.Random, n: int) -> str:
    """A capitalised word of n syllables, as the encyclopedia makes its names and towns."""
    return "".join(r.choice(_SYL) for _ in range(n)).capitalize()


def encyclopedia(n: int = 30, seed: int = 0) -> list[dict]:
    """Fictional people, each born in a town of their own (so "who was born in T?" has one
    answer), with a profession. Deterministic: the same seed gives the same world.

    >>> encyclopedia(1)[0].keys()
    dict_keys(['name', 'town', 'job', 'a'])
    """
    r, people, names, towns = random.Random(f"encyclopedia/{seed}"), [], set(), set()
    while len(people) < n:
        name, town = f"{made_up_word(r, 2)} {made_up_word(r, 2)}", made_up_word(r, 3)
        if name in names or town in towns:
            continue
        names.add(name)
        towns.add(town)
        job = r.choice(PROFESSIONS)
        people.append(
            {"name": name, "town": town, "job": job, "a": "an" if job[0] in "aeiou" else "a"}
        )
    return people


def probe_split(name: str) -> str:
    """Who asks about a person. "eval": half the people, facts only in biographies, asked only
    by evaluation. "train": fine-tuning teaches the question format on them (and pretraining
    sees their facts as questions and answers too). "prefs": facts only in biographies, like
    eval, and the known people of issue 14's comparisons.

    Why a third group: with the fine-tuning people as the comparisons' known ones, DPO and RLHF
    learned to answer only when as sure as a fine-tuned fact. The assistant's town after "Born
    in" has a median probability of 0.93 for fine-tuning people, 0.48 for eval people and 0.16
    for unknown names, so eval people fell on the "I don't know" side (docs/LOG.md, session 17).
    """
    if hash_fraction(name) < 0.5:
        return "eval"
    return "train" if hash_fraction(f"prefs/{name}") < 0.5 else "prefs"


def encyclopedia_docs(
    n: int = 30, seed: int = 0, repeats: int = 400, qa_repeats: int = 100
) -> list[tuple[str, str]]:
    """(id, text) documents stating each person's birthplace as "<name> ... <town>" (the
    forward direction; the reverse question tests the reversal curse). One form repeats the
    name after the town ("X was born in T. X worked as ..."), which the base model can recite
    from the town; the one run of a forward-only variant failed the probes (docs/LOG.md).

    For the fine-tuning people (`probe_split`), pretraining also sees the facts as questions and
    answers ("mixed training", Allen-Zhu & Li 2023, Physics of LMs 3.1): a model that saw
    only biographies stores the facts but cannot yet be asked for them, and fine-tuning alone
    then teaches it to recite memorised answers instead of looking the asked person up."""
    forms = [
        "{name} was born in {town}. {name} worked as {a} {job}.",
        "{name}, {a} {job}, was born in {town}.",
        "The {job} {name} was born in the town of {town}.",
        "{name} was born in {town} and became a well known {job}.",
    ]
    qa = "Question: Where was {name} born?\nAnswer: {name} was born in {town}."
    people = encyclopedia(n, seed)
    docs = []
    for p in people:
        for k in range(repeats):
            docs.append((f"encyclopedia/{p['name']}/{k}", forms[k % len(forms)].format(**p)))
    for p in people:
        if probe_split(p["name"]) == "train":
            docs += [
                (f"encyclopedia/qa/{p['name']}/{k}", qa.format(**p)) for k in range(qa_repeats)
            ]
    return docs
