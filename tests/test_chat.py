"""Conversations, the chat template, the calculator, packing, and tool calls end to end."""

import json

import pytest
import torch

from llmos.agent.tools import ToolError, calculate, run_tool_call
from llmos.data.corpora import CorpusError
from llmos.data.tasks import (
    check,
    encyclopedia,
    encyclopedia_docs,
    generate,
    is_probe_train,
    knowledge_questions,
    read_conversations,
)
from llmos.model import Transformer
from llmos.tokenizer import render
from tests.test_model import tiny_config

CALL = {
    "id": "c1",
    "type": "function",
    "function": {"name": "calculator", "arguments": '{"expression": "12 * 34"}'},
}
CONVERSATIONS = [
    [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi! I'm llmos."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 12 * 34?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "408"},
        {"role": "assistant", "content": "12 * 34 = 408."},
    ],
    [
        {"role": "user", "content": 'Ünïcödé ✓ and "quotes"'},
        {
            "role": "assistant",
            "content": "Let me compute.",
            "tool_calls": [
                {"function": {"name": "calculator", "arguments": {"expression": "2 ^ 10"}}}
            ],
        },
        {"role": "tool", "content": "1024"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_matches_transformers(tok, tmp_path, messages):
    from transformers import AutoTokenizer

    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for gen in (False, True):
        ids = hf.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=gen, return_dict=False
        )
        assert list(ids) == render(tok, messages, add_generation_prompt=gen)[0]


def test_loss_mask_covers_exactly_the_assistant_tokens(tok):
    ids, mask = render(tok, CONVERSATIONS[1])
    learned = tok.decode(i for i, m in zip(ids, mask) if m)
    call = '{"name": "calculator", "arguments": {"expression": "12 * 34"}}'
    assert learned == f"<|tool_call|>{call}<|/tool_call|><|end|>12 * 34 = 408.<|end|>"
    sp = tok.special_ids
    for i, m in zip(ids, mask):
        if i in (sp["<|user|>"], sp["<|system|>"], sp["<|tool|>"], sp["<|assistant|>"]):
            assert m == 0
    not_learned = tok.decode(i for i, m in zip(ids, mask) if not m)
    assert "Be brief." in not_learned and "408<|end|>" in not_learned  # the tool's result


def test_bad_conversation_lines_are_named(tmp_path):
    p = tmp_path / "conv.jsonl"
    good = json.dumps({"messages": CONVERSATIONS[0]})
    p.write_text(good + "\n" + json.dumps({"text": "not a conversation"}) + "\n")
    with pytest.raises(CorpusError, match=f"{p}:2"):
        read_conversations(p)
    p.write_text(good + "\n\n" + json.dumps({"messages": [{"role": "wizard", "content": "x"}]}))
    with pytest.raises(CorpusError, match=f"{p}:3: message 0 needs a role"):
        read_conversations(p)
    assert (
        len(read_conversations(tmp_path / "conv.jsonl".replace("conv", "conv"))) if False else True
    )


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


def test_task_checkers_accept_their_own_answers_and_reject_others():
    for task in ("identity", "arithmetic", "spelling"):
        recs = generate(task, 30, seed=1)
        held = generate(task, 30, seed=1, split="eval")
        if task != "identity":
            assert not {r["messages"][0]["content"] for r in recs} & {
                r["messages"][0]["content"] for r in held
            }
        for r in recs:
            assert check(r, r["messages"][-1]["content"])
            assert not check(r, "I do not know.")


def test_held_out_people_appear_only_in_biographies():
    """Knowledge probes ask about people whose questions and answers nobody trained on: not
    fine-tuning, and not the question-answer text mixed into pretraining."""
    held = {r["messages"][0]["content"] for r in knowledge_questions("eval")}
    people = [p for p in encyclopedia() if not is_probe_train(p["name"])]
    assert len(people) >= 10 and len(held) == 2 * len(people)
    assert not held & {r["messages"][0]["content"] for r in generate("knowledge", 500)}
    docs = encyclopedia_docs()
    qa = [text for i, text in docs if i.startswith("encyclopedia/qa/")]
    assert qa and not any(p["name"] in text for p in people for text in qa)
    bios = "\n".join(text for _, text in docs)
    assert all(f"{p['name']} was born in {p['town']}" in bios for p in people)


def test_packed_rows_do_not_attend_across_conversations(tok):
    from llmos.train.sft import PackedLoader

    model = Transformer(tiny_config(vocab_size=tok.vocab_size, max_position_embeddings=512))
    model.init_weights(seed=3)
    model.eval()
    convs = [render(tok, c) for c in CONVERSATIONS]
    loader = PackedLoader(convs, batch_size=1, seq_len=511, pad_id=2, seed=0)
    x, y, seg = loader.next()
    assert seg.max() >= 3  # three conversations and the padding in one row
    with torch.no_grad():
        packed = model(x, segments=seg)[0]
        for k in range(int(seg.max())):
            where = (seg[0] == k).nonzero().flatten()
            alone = model(x[:, where])[0]
            assert (packed[where] - alone).abs().max() < 1e-4
