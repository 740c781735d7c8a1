"""Built-in agent scenarios with a checker: the task text, the truth, and a score of the answer.

`funding` is the talk's showcase: find a company's funding rounds on the demo web, put them in
a table (date, amount, valuation), estimate the valuation the news never published from the
others, and plot valuation over time. The facts are spread over several pages, so the agent
has to search, open, compute and plot. The estimate follows a rule stated in the task, so the
checker can hold it to 1%: between two known rounds, their geometric mean; after the last
known one, the last valuation times the growth of the round before.

    >>> # task = funding_task("Gryfenly"); score = score_funding(answer, files, "Gryfenly")
"""

from __future__ import annotations

import math
import re

from llmos.agent.browser import companies

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
    raise ValueError(f"no company {name!r} on the demo web; companies: {names}")


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


def score_funding(answer: str, files: list[str], name: str) -> dict:
    """Rows right (date, amount and, where published, valuation), the estimate within 1%, a
    PNG produced; success is all three."""
    c = company(name)
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
