"""Tools the model can call. The first one: a calculator that never runs `eval`.

A tool takes the JSON `arguments` of a call and returns text for the `tool` message. Errors
come back as text the model sees ("error: ..."), never as an exception out of the engine.
"""

from __future__ import annotations

import ast
import math
import operator
import time

from llmos.chat_format import ToolCallError, parse_tool_call
from llmos.common import LlmosError


class ToolError(LlmosError):
    """A tool that cannot do what was asked; its message goes back to the model."""


MAX_DIGITS = 100  # results beyond 10**100 are refused: the model never needs them
TIME_LIMIT_S = 0.5

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max}


def _check_size(x):
    if isinstance(x, int) and abs(x) >= 10**MAX_DIGITS:
        raise ToolError(f"result too large (more than {MAX_DIGITS} digits)")
    if isinstance(x, float) and math.isinf(x):
        raise ToolError("result too large")
    return x


def _eval(node, deadline: float):
    if time.monotonic() > deadline:
        raise ToolError("time limit exceeded")
    if isinstance(node, ast.Expression):
        return _eval(node.body, deadline)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check_size(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        a, b = _eval(node.left, deadline), _eval(node.right, deadline)
        if isinstance(node.op, ast.Pow):
            # Bound the size before computing: 10**10**10 would otherwise run for ever.
            if abs(b) > 10_000 or (
                a not in (0, 1, -1) and abs(b) * math.log10(abs(a) or 1) > MAX_DIGITS
            ):
                raise ToolError(f"result too large (more than {MAX_DIGITS} digits)")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise ToolError("division by zero")
        return _check_size(_BINARY[type(node.op)](a, b))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, deadline))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCS
        and not node.keywords
    ):
        args = [_eval(a, deadline) for a in node.args]
        try:
            return _check_size(_FUNCS[node.func.id](*args))
        except (TypeError, ValueError) as e:
            raise ToolError(f"{node.func.id}: {e}") from None
    what = type(node).__name__
    if isinstance(node, ast.Name):
        what = f"the name '{node.id}'"
    elif isinstance(node, ast.Call):
        what = "calling anything but " + ", ".join(_FUNCS)
    raise ToolError(f"not allowed in an arithmetic expression: {what}")


def calculate(expression: str) -> str:
    """Evaluate arithmetic (+ - * / // % ** and sqrt, abs, round, min, max) safely."""
    if not isinstance(expression, str) or len(expression) > 500:
        raise ToolError("expression must be a string of at most 500 characters")
    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*"), mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    value = _eval(tree, time.monotonic() + TIME_LIMIT_S)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return str(value)


TOOLS = {
    "calculator": {
        "fn": lambda args: calculate(args.get("expression")),
        "schema": {
            "type": "function",
            "function": {
                "name": "calculator",
                "description": "Evaluate an arithmetic expression exactly.",
                "parameters": {
                    "type": "object",
                    "properties": {"expression": {"type": "string"}},
                    "required": ["expression"],
                },
            },
        },
    }
}


def run_tool_call(text: str, tools: dict = TOOLS) -> tuple[dict | None, str]:
    """Parse a tool call the model wrote and run it: (the call, or None if malformed; result).

    Anything that goes wrong becomes the result text, so the model can see it and recover."""
    try:
        call = parse_tool_call(text)
    except ToolCallError as e:
        return None, f"error: {e}"
    name = call["name"]
    if name not in tools:
        return call, f"error: no tool named {name!r}; tools: {', '.join(tools)}"
    try:
        return call, tools[name]["fn"](call["arguments"])
    except ToolError as e:
        return call, f"error: {e}"
