"""The tool loop (agent/loop.py): the tiny assistant of conftest.py (fine-tuned on one
calculator conversation) calls the real calculator and answers with its result; the result is
appended to the KV cache, not re-prefilled; an untrained model's garbage never crashes it."""

import json

from llmos.agent.loop import assistant_turn
from llmos.chat_format import render
from llmos.checkpoint import load_model
from llmos.infer.engine import Engine, SamplingConfig
from llmos.tokenizer import Tokenizer

from .conftest import CONVERSATION


def test_tool_call_runs_through_the_engine(assistant):
    c, out = assistant
    for f in ("report.md", "loss.png", "metrics.jsonl", "model.safetensors", "train_state.pt"):
        assert (out / f).exists()
    tok = Tokenizer.load(out)
    seen = []
    engine = Engine(load_model(out), tok)
    new = assistant_turn(
        engine,
        CONVERSATION[:1],
        SamplingConfig(temperature=0, max_new_tokens=120),
        on_message=seen.append,
    )
    assert [m["role"] for m in new] == ["assistant", "tool", "assistant"], new
    call = new[0]["tool_calls"][0]["function"]
    assert call["name"] == "calculator"
    assert json.loads(call["arguments"]) == {"expression": "1234 * 5678"}
    assert new[1]["content"] == "7006652"  # computed by the calculator, not the model
    assert "7006652" in new[2]["content"]
    assert seen == new


def test_a_tool_result_continues_the_cache(assistant):
    """After the call, only the tool message's tokens are prefilled, not the conversation."""
    _, out = assistant
    tok = Tokenizer.load(out)
    engine = Engine(load_model(out), tok)
    prompt, _ = render(tok, CONVERSATION[:1], add_generation_prompt=True)
    greedy = SamplingConfig(temperature=0, max_new_tokens=120)
    new = assistant_turn(engine, CONVERSATION[:1], greedy)
    assert [m["role"] for m in new] == ["assistant", "tool", "assistant"]
    # the prompt, then <|/tool_call|><|end|><|tool|>result<|end|><|assistant|>: nothing else
    assert engine.prefilled == len(prompt) + 5 + len(tok.encode(new[1]["content"]))
    # and the answer is what a fresh prefill of the whole conversation would give
    again, _ = render(tok, CONVERSATION[:1] + new[:2], add_generation_prompt=True)
    end = tok.special_ids["<|end|>"]
    fresh = engine.generate([again], greedy, stop_ids={end})[0]
    assert fresh.text == new[2]["content"]


def test_malformed_tool_call_becomes_an_error_message(base):
    """An untrained model emits garbage; force a call token to see the engine survive it."""
    tok = Tokenizer.load(base)
    engine = Engine(load_model(base), tok)
    msgs = [{"role": "user", "content": "hi"}]
    new = assistant_turn(
        engine, msgs, SamplingConfig(temperature=1.0, seed=0, max_new_tokens=8), max_calls=2
    )
    assert new[-1]["role"] == "assistant"  # whatever it wrote, the turn ended without a crash
