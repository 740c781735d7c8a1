"""`llmos agent`: run a task to a final answer with tools, and keep a trace of everything.

The loop (ReAct's shape, Yao et al. 2022): the model answers; if its answer calls tools, every
call of that answer runs at once (a thread each), the results go back as `tool` messages, and
the model answers again; until an answer with no call, or a limit (steps, generated tokens,
wall clock) ends it and says which. The model is an llmos model directory or any
OpenAI-compatible endpoint (`--base-url`, `--api-key`, `--model`): both give one assistant
message at a time in OpenAI's shape, so the loop does not know which it talks to.

A run directory holds `trace.jsonl` (every message, call, result and timing, one JSON object a
line, as they happen), the files tools made (`files/`, e.g. a PNG plot from `python`) and a
`report.md`. The terminal shows each call and result as it happens.

    llmos agent "What is 1234 * 5678? Then plot y = x^2." --base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from llmos.agent.browser import Site, demo_web
from llmos.agent.files import Index
from llmos.agent.memory import memory_tools
from llmos.agent.profiles import knowledge_tools, load_profile
from llmos.agent.scenarios import company, funding_task, held_out, score_funding
from llmos.agent.tools import Guard, ToolError, pick_tools, run_tool, send_message_tool
from llmos.chat_format import ToolCallError, parse_tool_call, render
from llmos.checkpoint import load_model
from llmos.common import LlmosError, arg, atomic_write_text
from llmos.data.store import Store
from llmos.infer.engine import DTYPE_HELP, DTYPES, Engine, SamplingConfig
from llmos.tokenizer import Tokenizer


@dataclass
class AgentConfig:
    task: str = arg("", "the task, given to the model as the user's message", positional="optional")
    model_dir: str = arg("", "an llmos model directory (or --base-url for an endpoint)")
    base_url: str = arg("", "an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    api_key: str = arg("", "the endpoint's key (empty: $OPENAI_API_KEY)")
    model: str = arg("", "the model name the endpoint is asked for")
    tools: str = arg("calculator,python", "the tools offered, comma-separated")
    web: str = arg(
        "",
        "a directory of pages to serve on loopback, adding the search and open tools "
        "(`llmos web demo` writes the demo web)",
    )
    allow_hosts: str = arg("", "hosts `open` may read besides loopback, comma-separated")
    scenario: str = arg(
        "",
        "a built-in task with a checker instead of TASK: funding (needs --company)",
        choices=["", "funding"],
    )
    company: str = arg("", "the company of the funding scenario (one of the demo web's)")
    web_seed: int = arg(0, "the funding scenario's demo web: 0 is `llmos web demo`'s", lo=0)
    eval: int = arg(
        0,
        "with --scenario funding: run the first N held-out companies (never in the agent "
        "task's training traces) and report the success rate",
        lo=0,
    )
    system: str = arg("", "a system message before the task")
    profile: str = arg(
        "", "a profile (name or TOML path): its instructions, tools, knowledge, model"
    )
    index: str = arg("", "an index directory (`llmos index`): adds the files tool")
    memory: str = arg(
        "", "a SQLite store for remember/recall/forget (`default`: the llmos cache's)"
    )
    confirm: str = arg(
        "ask",
        "side effects (send_message): ask on the terminal, yes (confirmed in advance), or no",
        choices=["ask", "yes", "no"],
    )
    max_steps: int = arg(8, "model answers at most (each may call several tools)", lo=1)
    max_tokens: int = arg(2048, "generated tokens at most, all answers together", lo=1)
    answer_tokens: int = arg(512, "generated tokens at most in one answer", lo=1)
    max_seconds: float = arg(300.0, "wall-clock limit of the whole run", lo=1)
    temperature: float = arg(0.0, "sampling temperature; 0 is greedy", lo=0, hi=100)
    dtype: str = arg("auto", DTYPE_HELP, choices=["auto", *DTYPES])


class AgentError(LlmosError):
    """A model or endpoint the agent cannot use."""


# -- models: one assistant message at a time, in OpenAI's shape -------------------------------


class EndpointModel:
    """Any OpenAI-compatible chat completions API (llmos serve, vLLM, llama.cpp's server...),
    through the official `openai` client."""

    def __init__(self, base_url: str, api_key: str, model: str, timeout: float):
        import openai

        self.openai, self.model = openai, model
        key = api_key or os.environ.get("OPENAI_API_KEY") or "none"  # local servers need none
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=2)
        self.url = f"{self.client.base_url}chat/completions"

    def answer(self, messages: list[dict], tools: list[dict], c: AgentConfig, budget: int):
        try:
            r = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=c.temperature,
                max_tokens=budget, **({"tools": tools} if tools else {}),
            )  # fmt: skip
        except self.openai.APIStatusError as e:
            raise AgentError(f"{self.url}: HTTP {e.status_code}: {e.message}") from None
        except self.openai.APIError as e:  # connection refused, timeout, a reply not JSON
            why = f" ({e.__cause__})" if e.__cause__ else ""
            raise AgentError(f"{self.url}: {e}{why}") from None
        msg = r.choices[0].message.model_dump(exclude_none=True)
        used = r.usage.completion_tokens if r.usage else 0
        return {k: msg[k] for k in ("role", "content", "tool_calls") if msg.get(k)}, used


class LocalModel:
    """An llmos model directory through the engine. Its chat format has one call per answer:
    generation stops at <|/tool_call|> and the call is parsed here."""

    def __init__(self, model_dir: str, dtype: str):
        tok = Tokenizer.load(model_dir)
        self.engine, self.tok = Engine(load_model(model_dir), tok, dtype), tok

    def answer(self, messages: list[dict], tools: list[dict], c: AgentConfig, budget: int):
        sp, tok = self.tok.special_ids, self.tok
        call_open, call_close, end = (
            sp.get(t) for t in ("<|tool_call|>", "<|/tool_call|>", "<|end|>")
        )
        stops = {end, call_close, tok.eos_id} - {None}
        # A model with its own template is told the tools in its prompt (Hermes-style) and
        # writes <tool_call> tags in its text; llmos models learned theirs in fine-tuning.
        prompt, _ = render(tok, messages, add_generation_prompt=True, tools=tools or None)
        s = SamplingConfig(temperature=c.temperature, max_new_tokens=budget)
        ids = self.engine.generate([prompt], s, stops)[0].ids
        k = ids.index(call_open) if call_open in ids else len(ids)
        text = tok.decode(i for i in ids[:k] if i not in sp.values())
        msg: dict = {"role": "assistant", "content": text}
        if ids and ids[-1] == call_close and call_open in ids:
            raw = tok.decode(ids[k + 1 : -1])
            try:
                call = parse_tool_call(raw)
                fn = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
            except ToolCallError as e:  # shown to the model as the call's result
                fn = {"name": "invalid", "arguments": json.dumps({"error": str(e), "raw": raw})}
            msg["tool_calls"] = [
                {"id": f"call_{len(messages)}", "type": "function", "function": fn}
            ]
        return msg, len(ids)


# -- the loop -------------------------------------------------------------------------------


class Trace:
    """trace.jsonl and files/ in the run directory, written as things happen."""

    def __init__(self, out: Path):
        self.out, self.t0 = out, time.monotonic()
        (out / "files").mkdir(parents=True, exist_ok=True)
        self.f = open(out / "trace.jsonl", "a")
        self.rows: list[dict] = []

    def add(self, kind: str, **fields) -> dict:
        row = {"t": round(time.monotonic() - self.t0, 3), "type": kind, **fields}
        self.rows.append(row)
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()
        return row

    def save_file(self, step: int, name: str, data: bytes) -> str:
        path = f"files/{step}-{Path(name).name}"
        (self.out / path).write_bytes(data)
        return path


def run_agent(c: AgentConfig, out: str | Path) -> dict:
    """Run c.task to a final answer in a new directory under `out`; the summary it reports.
    With --eval, the funding scenario on held-out companies instead (`run_eval`)."""
    if c.eval:
        if c.scenario != "funding":
            raise AgentError("--eval needs --scenario funding")
        return run_eval(c, out)
    if c.scenario == "funding":  # the showcase: its task, the demo web, all four tools
        c = _funding(c, out, c.company, c.web_seed)
    if c.profile:
        c = _with_profile(c)
    if not c.task:
        raise AgentError("give the task as the first argument (or --scenario)")
    return _run_with_tools(c, _model(c), Path(out) / time.strftime("%Y%m%d-%H%M%S"))


def run_eval(c: AgentConfig, out: str | Path) -> dict:
    """The funding scenario on the first c.eval held-out companies: eval.json and report.md in
    `out`/eval, a run directory per company beside them."""
    from tqdm import tqdm

    model, rows = _model(c), []
    root = Path(out) / "eval"
    for seed, name in tqdm(held_out(c.eval), desc="agent eval", unit="company"):
        s = _run_with_tools(_funding(c, out, name, seed), model, root / name)
        run = {k: s[k] for k in ("steps", "tokens", "seconds", "stopped")}
        rows.append({"company": name, "web_seed": seed, **s["score"], **run})
    n = len(rows)
    summary = {
        "model": c.model_dir or c.base_url,
        "companies": n,
        "success": sum(r["success"] for r in rows) / n,
        "all_rows_right": sum(r["rows_right"] == r["rows"] for r in rows) / n,
        "estimate_ok": sum(r["estimate_ok"] for r in rows) / n,
        "plot": sum(r["plot"] for r in rows) / n,
        "runs": rows,
    }
    atomic_write_text(root / "eval.json", json.dumps(summary, indent=2) + "\n")
    lines = [f"# Agent eval: the funding scenario on {n} held-out companies\n",
             f"- model: {summary['model']}",
             *(f"- {k.replace('_', ' ')}: {summary[k]:.0%}"
               for k in ("success", "all_rows_right", "estimate_ok", "plot")),
             "\n| company | rows right | estimate | plot | steps | ended |",
             "|---|---|---|---|---|---|",
             *(f"| {r['company']} | {r['rows_right']}/{r['rows']} | {r['estimate']} "
               f"({'ok' if r['estimate_ok'] else 'off'}) | {'yes' if r['plot'] else 'no'} | "
               f"{r['steps']} | {r['stopped']} |" for r in rows)]  # fmt: skip
    atomic_write_text(root / "report.md", "\n".join(lines) + "\n")
    print(f"agent eval: success {summary['success']:.0%} on {n} held-out companies; {root}")
    return summary


def _with_profile(c: AgentConfig) -> AgentConfig:
    """The profile's instructions before --system, its tools (unless --tools was given), its
    model (unless one was) and its temperature."""
    p = load_profile(c.profile)
    fields = AgentConfig.__dataclass_fields__
    system = "\n\n".join(x for x in (p.instructions.strip(), c.system) if x)
    tools = ",".join(p.tools) if c.tools == fields["tools"].default and p.tools else c.tools
    model_dir = c.model_dir or (p.model if not c.base_url else "")
    temperature = p.sampling.get("temperature", c.temperature)
    return dataclasses.replace(
        c, system=system, tools=tools, model_dir=model_dir, temperature=temperature
    )


def _model(c: AgentConfig):
    if bool(c.model_dir) == bool(c.base_url):
        raise AgentError("give either a model directory (--model-dir) or --base-url")
    if c.model_dir:
        return LocalModel(c.model_dir, c.dtype)
    return EndpointModel(c.base_url, c.api_key, c.model, c.max_seconds)


def _funding(c: AgentConfig, out: str | Path, name: str, seed: int) -> AgentConfig:
    """The funding scenario's config for one company, its demo web written under `out`."""
    try:
        company(name, seed)
    except ValueError as e:
        raise AgentError(f"--company: {e}") from None
    web = Path(out) / ("demo-web" if seed == 0 else f"demo-web-{seed}")
    if not (web / "index.html").exists():
        demo_web(web, seed)
    task = funding_task(name)
    return dataclasses.replace(
        c, task=task, web=str(web), tools="calculator,python", company=name, web_seed=seed
    )


def _run_with_tools(c: AgentConfig, model, run: Path) -> dict:
    site = Site(c.web, tuple(filter(None, c.allow_hosts.split(",")))) if c.web else None
    extra = {"send_message": send_message_tool(run / "outbox.jsonl")}
    if c.index:
        extra |= Index.load(c.index).tool()
    if c.profile:
        extra |= knowledge_tools(load_profile(c.profile))
    if c.memory:
        extra |= memory_tools(Store(None if c.memory == "default" else c.memory))
    try:
        try:
            tools = pick_tools(c.tools, site, extra)
        except ToolError as e:
            raise AgentError(f"--tools: {e}") from None
        return _run(c, model, run, tools)
    finally:
        if site:
            site.close()


def _confirm(c: AgentConfig):
    """How a side effect is confirmed: the person at the terminal, or their flag."""
    if c.confirm == "ask":
        if not os.isatty(0):
            return None  # nobody to ask: refused, and the refusal says why

        def ask(name: str, arguments: dict) -> bool:
            answer = input(f"  allow {name}({json.dumps(arguments)[:300]})? [y/N] ")
            return answer.strip().lower() in ("y", "yes")

        return ask
    return (lambda name, arguments: True) if c.confirm == "yes" else None


def _run(c: AgentConfig, model, run: Path, tools: dict) -> dict:
    trace = Trace(run)
    messages = ([{"role": "system", "content": c.system}] if c.system else []) + [
        {"role": "user", "content": c.task}
    ]
    guard = Guard.of(messages, _confirm(c))
    for m in messages:
        trace.add("message", message=m)
    schemas = [t["schema"] for t in tools.values()]
    tokens, reason, answer = 0, "", None
    with ThreadPoolExecutor(max_workers=8) as pool:
        for step in range(1, c.max_steps + 1):
            if time.monotonic() - trace.t0 > c.max_seconds:
                reason = f"wall-clock limit of {c.max_seconds:g} s"
                break
            t = time.monotonic()
            budget = min(c.answer_tokens, c.max_tokens - tokens)
            msg, used = model.answer(messages, schemas, c, budget)
            tokens += used
            messages.append(msg)
            trace.add("message", message=msg, step=step, tokens=used, seconds=time.monotonic() - t)
            calls = msg.get("tool_calls") or []
            if msg.get("content"):
                print(f"assistant> {msg['content']}")
            if not calls:
                answer, reason = msg.get("content", ""), "answered"
                break
            # Every call of one answer runs at once: they are independent by construction
            # (the model wrote them before seeing any result).
            seen = len(guard.refusals)
            results = pool.map(lambda x: _run_call(x, tools, guard), calls)
            for call, result in zip(calls, results):
                text, files, seconds = result
                saved = [trace.save_file(step, k, v) for k, v in files.items()]
                fn = call["function"]
                print(f"  -> {fn['name']}({fn['arguments'][:200]})  [{seconds:.1f} s]")
                print(
                    "  <- "
                    + text[:500].replace("\n", "\n     ")
                    + "".join(f"\n     [file {p}]" for p in saved)
                )
                trace.add("result", call=call, content=text, files=saved, seconds=seconds)
                messages.append(
                    {"role": "tool", "tool_call_id": call.get("id", ""), "content": text}
                )
            for r in guard.refusals[seen:]:  # a call that writes, refused: logged in the trace
                trace.add("refused", **r)
            if tokens >= c.max_tokens:
                reason = f"token limit of {c.max_tokens}"
                break
        else:
            reason = f"step limit of {c.max_steps}"
    summary = {"answer": answer, "stopped": reason, "steps": step, "tokens": tokens,
               "seconds": round(time.monotonic() - trace.t0, 2), "dir": str(run),
               "tools": list(tools), "refused": len(guard.refusals)}  # fmt: skip
    if c.scenario == "funding":
        files = [p for r in trace.rows if r["type"] == "result" for p in r["files"]]
        summary["score"] = score_funding(answer or "", files, c.company, c.web_seed)
    trace.add("end", **summary)
    trace.f.close()
    _write_report(run, c, trace.rows, summary)
    print(f"{'answer' if answer is not None else 'stopped'} ({reason}); trace in {run}")
    if "score" in summary:
        print(f"score: {json.dumps(summary['score'])}")
    return summary


def _run_call(call: dict, tools: dict, guard: Guard) -> tuple[str, dict, float]:
    """(result text, files made, seconds) of one call; every error is text for the model."""
    t = time.monotonic()
    fn = call.get("function", {})
    try:
        args = fn.get("arguments") or "{}"
        args = json.loads(args) if isinstance(args, str) else args
        if not isinstance(args, dict):
            raise ValueError("arguments must be a JSON object")
    except ValueError as e:
        return f"error: {fn.get('name')}: arguments are not a JSON object ({e})", {}, 0.0
    result = run_tool(fn.get("name", ""), args, tools, guard)
    return str(result), getattr(result, "files", {}), time.monotonic() - t


def _write_report(run: Path, c: AgentConfig, rows: list[dict], summary: dict) -> None:
    s = summary
    lines = [f"# Agent run\n\n- task: {c.task}\n- model: {c.model_dir or c.base_url}",
             f"- tools: {', '.join(s['tools'])}\n- ended: {s['stopped']} after {s['steps']} "
             f"answers, {s['tokens']} tokens, {s['seconds']} s\n",
             "## Answer\n", summary["answer"] or "(none)", "\n## Trace\n",
             "| t (s) | what | detail |", "|---|---|---|"]  # fmt: skip
    images = []
    for r in rows:
        if r["type"] == "message":
            m = r["message"]
            calls = ", ".join(x["function"]["name"] for x in m.get("tool_calls") or [])
            detail = (m.get("content") or "")[:120] + (f" [calls: {calls}]" if calls else "")
            lines.append(f"| {r['t']} | {m['role']} | {_cell(detail)} |")
        elif r["type"] == "result":
            fn = r["call"]["function"]
            lines.append(
                f"| {r['t']} | {fn['name']} ({r['seconds']:.2f} s) | {_cell(r['content'][:160])} |"
            )
            images += [p for p in r["files"] if p.endswith((".png", ".jpg", ".svg"))]
    lines += [f"\n![{p}]({p})" for p in images]
    if "score" in summary:
        lines += [
            "\n## Score (the scenario's checker)\n",
            "```",
            json.dumps(summary["score"], indent=2),
            "```",
        ]
    atomic_write_text(run / "report.md", "\n".join(lines) + "\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
