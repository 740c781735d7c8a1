"""The conversation renderer against transformers' apply_chat_template, the loss mask, and the
one tool-call parser."""

from types import SimpleNamespace

import pytest

from llmos.chat_format import (
    ToolCallError,
    assistant_message,
    hermes_tool_calls,
    parse_tool_call,
    render,
    template_text,
)

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
    [
        {"role": "user", "content": "What is 7 + 5 - 3?"},
        {"role": "assistant", "reasoning_content": "7 + 5 = 12. 12 - 3 = 9.", "content": "9."},
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


def test_reasoning_is_learned_between_think_tokens_and_read_back_apart(tok):
    ids, mask = render(tok, CONVERSATIONS[3])
    learned = tok.decode(i for i, m in zip(ids, mask) if m)
    assert learned == "<|think|>7 + 5 = 12. 12 - 3 = 9.<|/think|>9.<|end|>"
    answer = ids[ids.index(tok.special_ids["<|assistant|>"]) + 1 :]
    assert assistant_message(tok, answer) == CONVERSATIONS[3][1]
    cut = answer[:5]  # cut off mid-reasoning: all of it is reasoning, no answer yet
    assert assistant_message(tok, cut)["content"] == ""


def test_one_parser_reads_every_way_a_call_is_written():
    want = {"name": "calculator", "arguments": {"expression": "12 * 34"}}
    assert parse_tool_call('{"name": "calculator", "arguments": {"expression": "12 * 34"}}') == want
    as_string = '{"name": "calculator", "arguments": "{\\"expression\\": \\"12 * 34\\"}"}'
    assert parse_tool_call(as_string) == want  # arguments as a JSON string, as OpenAI sends
    assert parse_tool_call('{"name": "now"}') == {"name": "now", "arguments": {}}
    for bad, why in [
        ("{not json", "not JSON"),
        ('["calculator"]', "needs"),
        ('{"arguments": {}}', "needs"),
        ('{"name": "calculator", "arguments": [1]}', "must be an object"),
        ('{"name": "calculator", "arguments": "[1]"}', "must be an object"),
    ]:
        with pytest.raises(ToolCallError, match=why):
            parse_tool_call(bad)
    call = '{"name": "calculator", "arguments": {"expression": "12 * 34"}}'
    text = f"Sure. <tool_call>\n{call}\n</tool_call>"
    calls, rest = hermes_tool_calls(text + " <tool_call>{broken</tool_call>")
    assert calls == [want] and rest == "Sure.  <tool_call>{broken</tool_call>"


CHATML = (  # SmolLM2-135M-Instruct's template: it knows nothing of tools
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_a_template_without_tools_gets_them_and_earlier_calls_in_hermes_format():
    tok = SimpleNamespace(chat_template=CHATML, bos_token="", eos_token="")
    spec = {"type": "function", "function": {"name": "calculator", "parameters": {}}}
    text = template_text(tok, CONVERSATIONS[1], False, [spec])
    # The tools are listed in the (existing) system message, after its own text.
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.") and '"name": "calculator"' in system
    # The earlier call is in its assistant message, where the model's parser reads it back.
    turn = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    calls, rest = hermes_tool_calls(turn)
    assert calls == [{"name": "calculator", "arguments": {"expression": "12 * 34"}}] and rest == ""
    # Without tools and calls the conversation renders as the template alone would.
    plain = template_text(tok, CONVERSATIONS[0], True)
    want = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\nHi! I'm llmos."
    assert plain == want + "<|im_end|>\n<|im_start|>assistant\n"
