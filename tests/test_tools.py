"""The calculator: exact arithmetic, and clear refusals of everything else."""

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
