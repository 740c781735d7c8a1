"""The calculator: exact arithmetic, and clear refusals of everything else."""

import json

import pytest

from llmos.agent.tools import ToolError, calculate, run_tool_call


def test_calculator_refuses_clearly():
    assert calculate("2 + 3 * 4") == "14" and calculate("(1234 - 34) * 2") == "2400"
    with pytest.raises(ToolError, match="not allowed.*calling"):
        calculate("__import__('os')")
    with pytest.raises(ToolError, match="too large"):
        calculate("10**10**10")
    with pytest.raises(ToolError, match="division by zero"):
        calculate("1 / 0")
    with pytest.raises(ToolError, match="the name 'x'"):
        calculate("x + 1")
    call, result = run_tool_call('{"name": "calculator", "arguments": {"expression": "7 // 0"}}')
    assert call["name"] == "calculator" and result == "error: division by zero"
    assert run_tool_call("{not json")[1].startswith("error: malformed tool call")
    assert run_tool_call('{"name": "rm", "arguments": {}}')[1].startswith("error: no tool named")


# Expressions an adversary would try: huge powers, powers of intermediate results, floats
# that overflow, big rounding, nesting, odd bytes. Each must come back, quickly, as a number
# or an "error: ..." the model can read; none may raise or run long.
ADVERSARIAL = [
    "9**9**9",
    "(10**99)**2",
    "(10**50 * 10**50) * 10**50",
    "2.0 ** 5000",
    "1e308 * 10",
    "1e308 ** 2",
    "0 ** -1",
    "(-8) ** 0.5",
    "10**99 // 1e-300",
    "round(1, -10**9)",
    "round(1.5, 10**9)",
    "round(1, 1.5)",
    "min()",
    "max(" + ",".join(["1"] * 40) + ")",
    "sqrt(-1)",
    "-" * 490 + "1",
    "(" * 200 + "1" + ")" * 200,
    "((((((((((((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))))))))))))",
    "1" * 500,
    "1\x00+1",
    "abs(True)",
    "7 % 0.0",
    "[1, 2]",
    "'a' * 10",
    "lambda: 1",
    "2 ** 332 * 2 ** 332",
]


@pytest.mark.parametrize("expression", ADVERSARIAL)
def test_adversarial_expressions_are_answered_within_the_limit(expression):
    import time

    from llmos.agent.tools import TIME_LIMIT_S

    t = time.monotonic()
    call = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
    _, result = run_tool_call(call)
    assert time.monotonic() - t < TIME_LIMIT_S + 0.5
    assert result.startswith("error: ") or float(result) == float(result), result


def test_a_long_computation_is_killed_at_the_limit(server):
    """With the digit bound lifted, 3**10**8 holds the GIL for seconds: the worker process is
    killed at the limit, and meanwhile the server in this process answers /health at once."""
    import threading
    import time

    import httpx

    from llmos.agent.tools import ToolWorker

    url, _, _ = server
    worker = ToolWorker(max_digits=10**9)
    worker.call("calculator", {"expression": "1 + 1"})  # started
    latencies = []
    done = threading.Event()

    def poll():
        with httpx.Client(base_url=url) as client:
            while not done.is_set():
                t = time.monotonic()
                assert client.get("/health").status_code == 200
                latencies.append(time.monotonic() - t)
                time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    t = time.monotonic()
    with pytest.raises(ToolError, match="time limit"):
        worker.call("calculator", {"expression": "3 ** 10**8 % 7"}, limit=0.5)
    done.set()
    poller.join()
    assert 0.5 <= time.monotonic() - t < 1.5
    assert len(latencies) > 5 and max(latencies) < 0.1, latencies
    assert worker.call("calculator", {"expression": "6 * 7"}) == "42"  # a fresh worker
    worker.close()
