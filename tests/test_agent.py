"""`llmos agent` against a scripted OpenAI-compatible endpoint (the model is a stand-in: the loop,
the tools, the trace and the files are real) and against an llmos model trained in the tests."""

import http.server
import json
import shutil
import threading
import time

import pytest

from llmos.agent.agent import AgentConfig, AgentError, run_agent
from llmos.cli import main


class Script:
    """An endpoint that answers /chat/completions with the next scripted message (or what a
    function of the request returns), and keeps every request it got."""

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []
        script = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                script.requests.append(body)
                msg = script.answers.pop(0) if script.answers else {"content": "done"}
                msg = msg(body) if callable(msg) else msg  # a step that reads the conversation
                reply = {
                    "choices": [{"message": {"role": "assistant", **msg}}],
                    "usage": {"completion_tokens": 10},
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def call(name, args, i=0):
    arguments = args if isinstance(args, str) else json.dumps(args)
    return {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": arguments}}


def agent(url, out, task="task", **kw):
    return run_agent(AgentConfig(task=task, base_url=url, model="m", **kw), out)


needs_bwrap = pytest.mark.skipif(not shutil.which("bwrap"), reason="bubblewrap not installed")


@needs_bwrap
def test_parallel_calls_results_files_and_the_trace(tmp_path):
    plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.savefig('v.png')"
    script = Script(
        [
            {
                "tool_calls": [
                    call("calculator", {"expression": "1234 * 5678"}, 0),
                    call("python", {"code": plot}, 1),
                ]
            },  # fmt: skip
            {"content": "1234 * 5678 = 7006652, and the plot is attached."},
        ]
    )
    s = agent(script.url, tmp_path, "multiply and plot")
    assert s["answer"].startswith("1234 * 5678 = 7006652") and s["stopped"] == "answered"
    # The second request carries both results, in the order of the calls.
    sent = script.requests[1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert sent[2]["content"] == "7006652" and sent[2]["tool_call_id"] == "c0"
    assert "files: v.png" in sent[3]["content"]
    assert {t["function"]["name"] for t in script.requests[0]["tools"]} == {"calculator", "python"}
    run = tmp_path / next(p.name for p in tmp_path.iterdir())
    rows = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines()]
    assert [r["type"] for r in rows] == ["message", "message", "result", "result", "message", "end"]
    png = rows[3]["files"][0]
    assert (run / png).read_bytes().startswith(b"\x89PNG")
    report = (run / "report.md").read_text()
    assert f"![{png}]({png})" in report and "7006652" in report


@needs_bwrap
def test_calls_of_one_answer_run_at_once(tmp_path):
    """Four independent 1.5 s calls: one after another would take 6 s."""
    sleep = {"code": "import time; time.sleep(1.5); print('ok')"}
    script = Script([{"tool_calls": [call("python", sleep, i) for i in range(4)]}])
    t = time.monotonic()
    agent(script.url, tmp_path)
    assert time.monotonic() - t < 4.5


def test_bad_calls_are_told_to_the_model_and_the_loop_goes_on(tmp_path):
    script = Script(
        [
            {
                "tool_calls": [
                    call("rm_rf", {}, 0),
                    call("calculator", "[1, 2]", 1),
                    call("calculator", "{not json", 2),
                    call("calculator", {"expression": "1" * 10_000_000}, 3),
                ]
            },  # fmt: skip
            {"content": "sorry"},
        ]
    )
    s = agent(script.url, tmp_path)
    results = [m["content"] for m in script.requests[1]["messages"] if m["role"] == "tool"]
    assert "no tool named 'rm_rf'" in results[0]
    assert "not a JSON object" in results[1] and "not a JSON object" in results[2]
    assert results[3].startswith("error:") and len(results[3]) < 1000
    assert s["answer"] == "sorry"


def test_limits_end_the_run_and_say_which(tmp_path):
    loop = [{"tool_calls": [call("calculator", {"expression": "1 + 1"})]}] * 10
    s = agent(Script(loop).url, tmp_path / "steps", max_steps=3)
    assert s["answer"] is None and s["stopped"] == "step limit of 3" and s["steps"] == 3
    s = agent(Script(loop).url, tmp_path / "tokens", max_tokens=25)  # 10 tokens an answer
    assert s["stopped"] == "token limit of 25"


def test_bad_setups_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(AgentError, match="either"):
        run_agent(AgentConfig(task="x"), tmp_path)
    with pytest.raises(AgentError, match="no tool 'shell'"):
        run_agent(AgentConfig(task="x", base_url="http://127.0.0.1:9/v1", tools="shell"), tmp_path)
    assert main(["agent", "x", "--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path)]) == 2
    assert "llmos: error: http://127.0.0.1:9/v1/chat/completions" in capsys.readouterr().err


def test_an_llmos_model_runs_the_loop(assistant, tmp_path):
    _, model_dir = assistant
    c = AgentConfig(task="What is 4821 * 3967?", model_dir=str(model_dir), tools="calculator")
    s = run_agent(c, tmp_path)
    run = tmp_path / next(p.name for p in tmp_path.iterdir())
    rows = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines()]
    assert rows[-1]["type"] == "end" and s["steps"] >= 1 and (run / "report.md").exists()


def test_llmos_serve_as_the_endpoint(server, tmp_path):
    """The whole path: the agent -> HTTP -> `llmos serve` -> the batcher -> the model's tool
    call in OpenAI's shape -> the calculator in the agent -> the result back to the server."""
    from tests.conftest import KEY

    url, name, _ = server
    c = AgentConfig(task="What is 4821 * 3967?", base_url=url + "/v1", api_key=KEY, model=name)
    c.tools = "calculator"
    s = run_agent(c, tmp_path)
    run = tmp_path / next(p.name for p in tmp_path.iterdir())
    rows = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines()]
    kinds = [r["type"] for r in rows]
    assert kinds[-1] == "end" and s["steps"] >= 1
    if "result" in kinds:  # the tiny model called the calculator: its result went back
        result = rows[kinds.index("result")]
        assert result["call"]["function"]["name"] == "calculator" and result["content"]
