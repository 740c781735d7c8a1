"""The server against real clients on localhost: the `openai` package, raw HTTP for the errors,
and concurrent streams for continuous batching. The model is the tiny assistant of conftest.py
(fine-tuned on one calculator conversation), so tool calls are real model output."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from llmos.agent.loop import assistant_turn
from llmos.chat_format import render
from llmos.checkpoint import load_model
from llmos.infer.engine import Engine, SamplingConfig
from llmos.serve.api import ServeConfig, create_app
from llmos.tokenizer import Tokenizer

from .conftest import CONVERSATION, KEY, start_server

AUTH = {"Authorization": f"Bearer {KEY}"}

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}


@pytest.fixture
def client(server):
    url, _, _ = server
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def test_chat_and_usage_with_the_openai_client(server, client):
    _, name, model_dir = server
    assert [m.id for m in client.models.list()] == [name]
    msgs = ask("Hello there, who are you?")
    r = client.chat.completions.create(model=name, messages=msgs, max_tokens=20, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    prompt_ids, _ = render(Tokenizer.load(model_dir), msgs, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert 1 <= r.usage.completion_tokens <= 20
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # Streaming gives the same text, piece by piece, and usage when asked.
    chunks = list(
        client.chat.completions.create(
            model=name,
            messages=msgs,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (r.choices[0].message.content or "")
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[
        0
    ].finish_reason


def test_tool_calls_round_trip(server, client):
    _, name, _ = server
    msgs = ask(CONVERSATION[0]["content"])
    r = client.chat.completions.create(
        model=name, messages=msgs, tools=[CALCULATOR], temperature=0, max_tokens=100
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "1234 * 5678"}
    # The client runs the tool and sends the result back; the model answers with it.
    msgs += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "7006652"},
    ]
    r2 = client.chat.completions.create(
        model=name, messages=msgs, tools=[CALCULATOR], temperature=0, max_tokens=60
    )
    assert "7006652" in r2.choices[0].message.content
    # Streaming returns the call as a tool_calls delta.
    chunks = list(
        client.chat.completions.create(
            model=name, messages=ask(CONVERSATION[0]["content"]), tools=[CALCULATOR],
            temperature=0, max_tokens=100, stream=True,
        )
    )  # fmt: skip
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert calls and calls[0][0].function.name == "calculator"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # tool_choice "none" keeps the model from calling.
    r3 = client.chat.completions.create(
        model=name, messages=ask(CONVERSATION[0]["content"]), tools=[CALCULATOR],
        tool_choice="none", temperature=0, max_tokens=30,
    )  # fmt: skip
    assert (
        r3.choices[0].finish_reason in ("stop", "length") and not r3.choices[0].message.tool_calls
    )


def test_n_choices_and_seeds(server, client):
    _, name, _ = server
    kw = dict(model=name, messages=ask("Tell me a story."), max_tokens=15, temperature=1.0)
    r = client.chat.completions.create(n=3, seed=7, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    again = client.chat.completions.create(n=3, seed=7, **kw)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    assert len({c.message.content for c in r.choices}) > 1  # one seed, still different choices
    assert 3 <= r.usage.completion_tokens <= 45


def test_completions_endpoint(server, client):
    _, name, _ = server
    r = client.completions.create(model=name, prompt="The king", max_tokens=10, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 10
    streamed = client.completions.create(
        model=name, prompt="The king", max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_32_concurrent_streams_equal_each_alone(server, client):
    _, name, _ = server
    prompts = [f"Question {i}: what is the {i}th word?" for i in range(32)]

    def run(p: str) -> str:
        stream = client.chat.completions.create(
            model=name, messages=ask(p), max_tokens=24, temperature=0, seed=1, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream)

    alone = [run(p) for p in prompts]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(run, prompts))
    assert together == alone
    assert len(set(alone)) > 1  # the prompts do lead to different replies


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client):
    url, name, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    chat = url + "/v1/chat/completions"
    ok = {"model": name, "messages": ask("hi"), "max_tokens": 3}
    error_of(httpx.post(chat, content=b"{not json", headers=auth), 400)
    err = error_of(httpx.post(chat, json={**ok, "model": "gpt-9"}, headers=auth), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    long = {**ok, "messages": ask("word " * 5000)}
    err = error_of(httpx.post(chat, json=long, headers=auth), 400)
    assert err["code"] == "context_length_exceeded"
    err = error_of(httpx.post(chat, json={**ok, "temperature": 7}, headers=auth), 400)
    assert err["param"] == "temperature"
    error_of(httpx.post(chat, json={**ok, "n": 99}, headers=auth), 400)
    error_of(httpx.post(chat, json={**ok, "max_tokens": 10**6}, headers=auth), 400)
    error_of(httpx.post(chat, json={**ok, "messages": [{"role": "wizard"}]}, headers=auth), 400)
    err = error_of(httpx.post(chat, json=ok), 401)
    assert err["code"] == "invalid_api_key"
    error_of(httpx.post(chat, json=ok, headers={"Authorization": "Bearer wrong"}), 401)
    # The openai client raises its own typed errors for these.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=ask("hi"))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    # ... and the server still answers.
    assert httpx.get(url + "/health").json()["status"] == "ok"
    assert httpx.post(chat, json=ok, headers=auth).status_code == 200


def test_a_client_that_leaves_mid_stream_does_not_stall_others(server):
    url, name, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    health = lambda: httpx.get(url + "/health").json()  # noqa: E731
    body = {"model": name, "messages": ask("Tell me a long story."), "stream": True}
    before = health()["generated_tokens"]
    tok = Tokenizer.load(server[2])
    no_end = {str(i): -100 for i in tok.special_ids.values()}  # it would run all 200 tokens
    leaver = {**body, "max_tokens": 200, "temperature": 1.0, "logit_bias": no_end}
    with httpx.stream("POST", url + "/v1/chat/completions", json=leaver, headers=auth) as r:
        next(r.iter_lines())  # the stream started; now hang up
    t = time.time()
    stayer = {**body, "max_tokens": 30, "temperature": 0}
    with httpx.stream("POST", url + "/v1/chat/completions", json=stayer, headers=auth) as r:
        lines = [x for x in r.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and time.time() - t < 30
    for _ in range(100):
        if health()["running"] == 0:
            break
        time.sleep(0.05)
    assert health()["running"] == 0
    # The leaver's row was freed when it hung up: far fewer than its 200 tokens were made.
    leaver_tokens = health()["generated_tokens"] - before - (len(lines) - 3)
    assert leaver_tokens < 150, leaver_tokens


def test_conversation_store(server):
    url, _, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    api = url + "/api/conversations"
    msgs = ask("hello")
    r = httpx.put(api + "/abc123", json={"title": "First", "messages": msgs}, headers=auth)
    assert r.status_code == 200 and r.json()["messages"] == msgs
    httpx.put(api + "/abc123", json={"title": "Renamed"}, headers=auth)
    got = httpx.get(api + "/abc123", headers=auth).json()
    assert got["title"] == "Renamed" and got["messages"] == msgs
    assert "abc123" in [c["id"] for c in httpx.get(api, headers=auth).json()["data"]]
    assert httpx.delete(api + "/abc123", headers=auth).status_code == 200
    error_of(httpx.get(api + "/abc123", headers=auth), 404)
    error_of(httpx.get(api), 401)


def chat_turn(url: str, messages: list[dict], **settings) -> list[dict]:
    """The events of one web-chat turn (/api/chat, tools run on the server)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"messages": messages, "temperature": 0, "max_tokens": 120, **settings}
    events = []
    with httpx.stream("POST", url + "/api/chat", json=body, headers=auth, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def test_web_chat_turn_runs_the_tool_loop_on_the_server(server):
    url, _, model_dir = server
    events = chat_turn(url, ask(CONVERSATION[0]["content"]))
    messages = [e["message"] for e in events if e["type"] == "message"]
    assert [m["role"] for m in messages] == ["assistant", "tool", "assistant"], events
    call = json.loads(messages[0]["tool_calls"][0]["function"]["arguments"])
    assert call == {"expression": "1234 * 5678"}
    assert messages[1]["content"] == "7006652"  # the server's calculator, not the model
    streamed = "".join(e["text"] for e in events if e["type"] == "text")
    assert "7006652" in messages[2]["content"] and messages[2]["content"] in streamed
    # the same turn through the engine alone (llmos chat's path) gives the same messages
    engine = Engine(load_model(model_dir), Tokenizer.load(model_dir))
    greedy = SamplingConfig(temperature=0, max_new_tokens=120)
    alone = assistant_turn(engine, ask(CONVERSATION[0]["content"]), greedy)
    assert [m["content"] for m in alone] == [m["content"] for m in messages]
    bad = httpx.post(
        url + "/api/chat",
        json={"messages": [{"role": "wizard"}]},
        headers=AUTH,
    )
    assert error_of(bad, 400)["param"] == "messages"


def test_web_chat_leaves_out_old_turns_that_do_not_fit(server):
    url, _, _ = server
    old = []
    for i in range(40):  # far more than the tiny model's context
        old += [
            {"role": "user", "content": f"Tell me about the number {i} at some length."},
            {"role": "assistant", "content": f"The number {i} is a number. " * 5},
        ]
    system = {"role": "system", "content": "Be brief."}
    events = chat_turn(url, [system, *old, *ask(CONVERSATION[0]["content"])])
    notice = [e for e in events if e["type"] == "notice"]
    assert len(notice) == 1 and "were left out" in notice[0]["message"], events[:3]
    # The turn completes: the tiny model (trained on one exchange) answers what is left as best
    # it can, or, if a tool's result overfills the nearly full context, the turn ends with an
    # error that says so (the page shows it); nothing else.
    last = events[-1]
    if last["type"] == "error":
        assert "the context is" in last["message"], events[-4:]
    else:
        assert last["type"] == "message" and last["message"]["role"] == "assistant", events[-4:]
    too_long = ask("word " * 5000)
    r = httpx.post(url + "/api/chat", json={"messages": too_long}, headers=AUTH)
    assert error_of(r, 400)["code"] == "context_length_exceeded"


def test_busy_server_answers_429(assistant, tmp_path):
    _, model_dir = assistant
    c = ServeConfig(db=str(tmp_path / "db.sqlite"), max_batch=1, max_queue=0)
    url, srv = start_server(create_app(model_dir, c))
    try:
        tok = Tokenizer.load(model_dir)
        no_end = {str(i): -100 for i in tok.special_ids.values()}
        body = {"model": model_dir.resolve().name, "messages": ask("Hi"), "stream": True}
        long = {**body, "max_tokens": 200, "logit_bias": no_end}
        with httpx.stream("POST", url + "/v1/chat/completions", json=long) as r:
            lines = r.iter_lines()  # (kept: a dropped iterator closes the connection)
            next(lines)  # one request holds the only row
            err = error_of(httpx.post(url + "/v1/chat/completions", json=body), 429)
            assert err["code"] == "rate_limit_exceeded"
    finally:
        srv.should_exit = True


def test_a_model_with_its_own_template_serves_through_it(smollm2, tmp_path):
    c = ServeConfig(db=str(tmp_path / "db.sqlite"), max_batch=2, context=256)
    url, srv = start_server(create_app(smollm2, c))
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(
            model=smollm2.resolve().name,
            messages=ask("What is the capital of France? Answer in one word."),
            max_tokens=8,
            temperature=0,
        )
        assert "Paris" in r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"  # its own end token (<|im_end|>) ends it
    finally:
        srv.should_exit = True
