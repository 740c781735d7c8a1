"""Built-in agent scenarios with a checker: the task text, the truth, and a score of the answer.

`funding` is the talk's showcase: find a company's funding rounds on the demo web, put them in
a table (date, amount, valuation), estimate the valuation the news never published from the
others, and plot valuation over time. The facts are spread over several pages, so the agent
has to search, open, compute and plot. The estimate follows a rule stated in the task, so the
checker can hold it to 1%: between two known rounds, their geometric mean; after the last
known one, the last valuation times the growth of the round before.

`funding_trace` is the same task done right, step by step through the real tools: the
conversations the `agent` task fine-tunes on. Companies are split by name: a fifth are held
out (`held_out`), never in a training trace, and measure what a trained agent learned.

    >>> # task = funding_task("Gryfenly"); score = score_funding(answer, files, "Gryfenly")
"""

from __future__ import annotations

import math
import random
import re

from llmos.agent.browser import companies
from llmos.agent.tools import mark_data, run_tool
from llmos.common import hash_fraction

ESTIMATE_RULE = (
    "Estimate the valuation that was not disclosed from the others: between two known rounds, "
    "use the geometric mean of their valuations; after the last known round, multiply its "
    "valuation by the growth factor of the round before it. Use the calculator for it."
)


def company(name: str, seed: int = 0) -> dict:
    for c in companies(seed=seed):
        if c["name"].lower() == name.lower():
            return c
    names = ", ".join(c["name"] for c in companies(seed=seed))
    raise ValueError(f"no company {name!r} on the demo web of seed {seed}; companies: {names}")


def is_held_out(name: str) -> bool:
    """A fifth of company names, by hash: never trained on, evaluated on."""
    return hash_fraction(f"company/{name}") < 0.2


def held_out(n: int) -> list[tuple[int, str]]:
    """The first n held-out companies as (demo web seed, name), seed 0 (the shipped web) first."""
    out: list[tuple[int, str]] = []
    for seed in range(10_000):
        out += [(seed, c["name"]) for c in companies(seed=seed) if is_held_out(c["name"])]
        if len(out) >= n:
            return out[:n]
    raise AssertionError("unreachable: a fifth of names are held out")


def funding_task(name: str) -> str:
    return (
        f"Find the funding rounds of {name}. Answer with a markdown table with the columns "
        "round, date, amount ($M) and valuation ($M). " + ESTIMATE_RULE + " Mark the estimate "
        "with 'estimate' in its cell. Then plot valuation over time with the python tool and "
        "save it as valuation.png."
    )


def estimate(c: dict) -> float:
    """The withheld valuation by the rule in ESTIMATE_RULE."""
    v, h = [r["valuation"] for r in c["rounds"]], c["hidden"]
    if h + 1 < len(v):
        return math.sqrt(v[h - 1] * v[h + 1])
    return v[h - 1] * v[h - 1] / v[h - 2] if h >= 2 else v[h - 1]


def score_funding(answer: str, files: list[str], name: str, seed: int = 0) -> dict:
    """Rows right (date, amount and, where published, valuation), the estimate within 1%, a
    PNG produced; success is all three."""
    c = company(name, seed)
    rows = _table_rows(answer or "")
    right = 0
    for k, r in enumerate(c["rounds"]):
        row = next((x for x in rows if r["round"].lower() in x[0].lower()), None)
        if row is None or len(row) < 4:
            continue
        nums = [_number(x) for x in row[2:4]]
        ok = r["date"] in row[1] and nums[0] is not None and abs(nums[0] - r["amount"]) < 0.05
        if k != c["hidden"]:
            ok = ok and nums[1] is not None and abs(nums[1] - r["valuation"]) < 0.5
        right += ok
    hidden = c["rounds"][c["hidden"]]["round"].lower()
    row = next((x for x in rows if hidden in x[0].lower()), None)
    got = _number(row[3]) if row and len(row) > 3 else None
    want = estimate(c)
    estimate_ok = got is not None and abs(got - want) <= 0.01 * want
    plot = any(f.endswith(".png") for f in files)
    return {
        "rows_right": right,
        "rows": len(c["rounds"]),
        "estimate": got,
        "estimate_expected": round(want, 2),
        "estimate_ok": estimate_ok,
        "plot": plot,
        "success": right == len(c["rounds"]) and estimate_ok and plot,
    }


def _table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.strip().startswith("|") and not re.fullmatch(r"[\s|:-]+", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _number(cell: str) -> float | None:
    m = re.search(r"-?\d+(?:\.\d+)?", cell.replace(",", "").replace("$", ""))
    return float(m.group()) if m else None


# -- the task done right: a training trace ----------------------------------------------------


def _call(name: str, **arguments) -> dict:
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def funding_trace(name: str, tools: dict, r: random.Random) -> list[dict]:
    """The conversation of an agent doing the showcase right for `name` on a served demo web
    (`tools`: the calculator, that site's search and open): search, open the profile, open
    each round, the calculator for the estimate, python for the plot, the table. One call per
    answer (the llmos chat format's). Results are the real tools' text, except python's: it
    is written as the sandbox reports it, since running matplotlib would cost a second per
    trace. Each step reads only what an earlier result showed (URLs, dates, amounts), as a
    model must."""
    msgs = [{"role": "user", "content": funding_task(name)}]

    def step(tool: str, **args) -> str:
        result = run_tool(tool, args, tools)  # as the loop runs it: results marked as data
        msgs.extend([_call(tool, **args), {"role": "tool", "content": str(result)}])
        return str(result)

    found = step("search", query=f"{name} funding rounds founded")  # the profile ranks first
    profile = re.search(rf"^{re.escape(name)} \(company\)\n(\S+)$", found, re.M)
    page = step("open", url=profile.group(1))
    rounds = []
    for url in re.findall(r"^\[\d+\] (?:Seed|Series \w) \(\d{4}\) -> (\S+)$", page, re.M):
        text = step("open", url=url)
        m = re.search(r"(\d{4}-\d\d-\d\d) — .* raised \$([\d.]+) million in a (.+?) round", text)
        v = re.search(r"values \S+ at \$(\d+) million", text)
        rounds.append([m.group(3), m.group(1), m.group(2), v.group(1) if v else None])
    h = next(i for i, x in enumerate(rounds) if x[3] is None)
    v = [x[3] for x in rounds]
    expr = (
        f"sqrt({v[h - 1]} * {v[h + 1]})"
        if h + 1 < len(v)
        else f"{v[h - 1]} * {v[h - 1]} / {v[h - 2]}"
    )
    est = float(step("calculator", expression=expr))
    rounds[h][3] = f"{est:.2f}"
    code = (
        "import matplotlib.pyplot as plt\n"
        f"dates = {[x[1] for x in rounds]}\n"
        f"valuations = [{', '.join(x[3] for x in rounds)}]\n"
        "plt.plot(dates, valuations, marker='o')\n"
        "plt.ylabel('valuation ($M)')\n"
        "plt.savefig('valuation.png')"
    )
    msgs.append(_call("python", code=code))
    seconds, size = r.uniform(0.8, 2.5), r.randint(14_000, 30_000)
    report = f"[sandbox: bubblewrap; exit code 0; {seconds:.1f} s]"
    report += f"\nfiles: valuation.png ({size:,} bytes)"
    msgs.append({"role": "tool", "content": mark_data(report, "python")})
    table = ["| round | date | amount ($M) | valuation ($M) |", "|---|---|---|---|"]
    for k, (rd, date, amount, val) in enumerate(rounds):
        table.append(f"| {rd} | {date} | {amount} | {val}{' (estimate)' if k == h else ''} |")
    answer = "\n".join(table) + "\n\nThe plot of valuation over time is valuation.png."
    msgs.append({"role": "assistant", "content": answer})
    return msgs
