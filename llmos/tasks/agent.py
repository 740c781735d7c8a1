"""The agent task: the funding showcase done right, as conversations to fine-tune on.

Each record is one trace of `agent/scenarios.funding_trace` on a generated demo web: search,
open the profile, open each round, the calculator for the estimate, python for the plot, the
table. Training traces come from demo webs of many seeds and never name a held-out company;
evaluation asks about the held-out ones (`scenarios.held_out`), whose pages a trained model has
never read. Traces are long (2.4-3.2k tokens with a 4k-vocab tokenizer), and every step copies
what an earlier result showed (names, paths, figures): a model needs that much context, and
in-context copying (see tasks/copying.py), to learn them.

    >>> recs = generate(2, split="eval")  # doctest: +SKIP
    >>> [reward(r, r["messages"][-1]["content"]) for r in recs]  # doctest: +SKIP
    [1.0, 1.0]
"""

from __future__ import annotations

import random
import tempfile

from llmos.agent.browser import Site, companies, demo_web
from llmos.agent.scenarios import funding_trace, held_out, is_held_out, score_funding
from llmos.agent.tools import pick_tools

GROUPS = ["agent-funding"]


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """n traces: train from demo webs of seeds 1000 + k (held-out names skipped), eval for the
    first n held-out companies (seed 0, the shipped demo web, first)."""
    r = random.Random(f"agent/{seed}/{split}")
    if split == "eval":
        wanted = held_out(n)
    else:
        wanted = []
        for k in range(10_000):
            web = 1000 + seed * 10_000 + k
            wanted += [(web, c["name"]) for c in companies(seed=web) if not is_held_out(c["name"])]
            if len(wanted) >= n:
                break
        wanted = wanted[:n]
    out = []
    for web in dict.fromkeys(w for w, _ in wanted):  # one served demo web per seed
        with tempfile.TemporaryDirectory() as d:
            site = Site(demo_web(d, seed=web))
            # The tools as `llmos agent --scenario funding` offers them (TRL's "tools" column):
            # models with their own template see them listed in the prompt.
            tools = pick_tools("calculator,python", site)
            specs = [t["schema"] for t in tools.values()]
            try:
                for w, name in wanted:
                    if w == web:
                        msgs = funding_trace(name, tools, r)
                        out.append({"task": "agent-funding", "messages": msgs, "tools": specs,
                                    "answer": name, "web_seed": web})  # fmt: skip
            finally:
                site.close()
    return out


def reward(rec: dict, reply: str) -> float:
    """1.0 if the reply's table has every round right and the estimate within 1% (the plot,
    a file, is checked by `llmos agent --scenario funding`, not from the text)."""
    s = score_funding(reply, [], rec["answer"], rec.get("web_seed", 0))
    return float(s["rows_right"] == s["rows"] and s["estimate_ok"])
