"""Property-based fuzzing of the HTTP API (hypothesis): thousands of generated requests, each
mostly well-formed with values at the edges of their types (huge integers, tiny and huge
floats, lone surrogates, deep nesting, wrong types, unknown roles, streams the client drops
half-way). The properties: no 5xx, no hang, every error in OpenAI's shape, no slot leaked,
and the server still answering normally at the end."""

import json
import os
import time
import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmos.agent.profiles import Profile, save_profile
from llmos.serve.api import ServeConfig, create_app

from .conftest import start_server

N_REQUESTS = int(os.environ.get("LLMOS_FUZZ_REQUESTS", 5000))  # more: a longer fuzz

# -- what a request is made of -----------------------------------------------------------------

# Every code point, lone surrogates included (JSON's "\ud800" escapes decode to them).
text = st.text(st.characters(codec=None, categories=None), max_size=40)
big_int = st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64, 10**400])
small_int = st.integers(-2, 70)
edge_float = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(0, 2)
    | st.sampled_from([0.0, 1e-300, 5e-324, 1e-30, 2.0, 1.0, 1e308])
)
number = small_int | big_int | edge_float
anything = st.recursive(
    st.none() | st.booleans() | number | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
role = st.sampled_from(["system", "user", "assistant", "tool", "developer", "bogus"])
content = text | st.none() | st.lists(st.fixed_dictionaries({"type": text, "text": text}))
tool_call = st.fixed_dictionaries(
    {
        "id": text,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": text, "arguments": text | anything}),
    }
)
message = st.fixed_dictionaries(
    {"role": role},
    optional={
        "content": content | anything,
        "tool_calls": st.lists(tool_call, max_size=2),
        "tool_call_id": text,
        "name": text,
    },
)
sampling = {
    "temperature": edge_float | anything,
    "top_p": edge_float,
    "max_tokens": small_int | big_int,
    "seed": big_int,
    "n": small_int,
    "stop": text | st.lists(text, max_size=6) | st.just(["x" * 300]),
    "logit_bias": st.dictionaries(text | st.integers(0, 500).map(str), number, max_size=4),
    "stream": st.booleans(),
    "stream_options": st.just({"include_usage": True}) | anything,
}
model_name = st.sampled_from(["MODEL", "MODEL", "MODEL", "other"]) | text
chat = st.fixed_dictionaries(
    {"model": model_name, "messages": st.lists(message, min_size=0, max_size=4)},
    optional={
        **sampling,
        "max_completion_tokens": small_int | big_int,
        "tools": st.lists(anything, max_size=2),
        "tool_choice": st.sampled_from(["none", "auto", "required", "bogus"])
        | st.fixed_dictionaries({"function": anything}),
    },
)
completion = st.fixed_dictionaries(
    {
        "model": model_name,
        "prompt": text
        | st.lists(text, max_size=3)
        | st.lists(st.integers(-5, 600) | big_int, max_size=8),
    },
    optional=sampling,
)
profile_name = st.sampled_from(["pirate", "helper", "nobody"]) | text
web_turn = st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=3)},
    optional={
        "temperature": edge_float,
        "top_p": edge_float,
        "max_tokens": small_int | big_int,
        "profile": profile_name | anything,
        "custom_instructions": text | anything,
        "memory": st.booleans() | anything,
        "conversation": text | anything,
        "confirm": st.lists(
            st.fixed_dictionaries({"name": text, "arguments": anything}), max_size=2
        )
        | anything,
    },
)
# Profiles and memory (the web chat's LLM OS panels).
profile_body = st.fixed_dictionaries(
    {},
    optional={
        "description": text | anything,
        "instructions": text | anything,
        "knowledge": st.lists(text, max_size=2) | anything,
        "tools": st.lists(st.sampled_from(["calculator", "files", "nope"]) | text, max_size=3)
        | anything,
        "model": text | anything,
        "sampling": st.dictionaries(
            st.sampled_from(["temperature", "top_p", "max_tokens"]) | text, number, max_size=3
        )
        | anything,
    },
)
memory_body = st.fixed_dictionaries({}, optional={"text": text | anything})
conversation = st.fixed_dictionaries(
    {},
    optional={
        "title": text | anything,
        "messages": st.lists(message, max_size=3) | anything,
        "settings": anything,
    },
)
# The labeling page's and the web chat's labels and corrections (they write to the store).
label = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.lists(message, max_size=3) | anything,
        "answers": st.lists(text, max_size=4) | anything,
        "ranking": st.lists(small_int, max_size=4) | anything,
        "verdict": st.sampled_from(["ranked", "tie", "all_bad", "bogus"]) | anything,
        "edited": st.lists(
            st.fixed_dictionaries({"index": small_int | big_int, "text": text}), max_size=2
        )
        | anything,
        "models": st.lists(text, max_size=4) | anything,
        "labeler": text | anything,
    },
)
correction = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(message, max_size=3) | anything,
        "original": text | anything,
        "labeler": text | anything,
    },
)
label_sample = st.fixed_dictionaries(
    {},
    optional={"source": small_int | big_int | anything, "messages": st.lists(message, max_size=2),
              **{k: sampling[k] for k in ("n", "temperature", "max_tokens")}},
)  # fmt: skip

# Mostly valid requests with one or more edge values: these reach the engine and the sampler.
user_turn = st.fixed_dictionaries({"role": st.just("user"), "content": text})
valid_chat = st.fixed_dictionaries(
    {"model": st.just("MODEL"), "messages": st.lists(user_turn, min_size=1, max_size=2)},
    optional=sampling,
)
valid_completion = st.fixed_dictionaries(
    {"model": st.just("MODEL"), "prompt": text}, optional=sampling
)


def nested(depth: int) -> str:
    return '{"model": "MODEL", "messages": ' + "[" * depth + "]" * depth + "}"


request = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), valid_chat.map(json.dumps)),
    st.tuples(st.just("/v1/completions"), valid_completion.map(json.dumps)),
    st.tuples(st.just("/v1/chat/completions"), chat.map(json.dumps)),
    st.tuples(st.just("/v1/completions"), completion.map(json.dumps)),
    st.tuples(st.just("/api/chat"), web_turn.map(json.dumps)),
    st.tuples(
        st.sampled_from(["/api/conversations/c1", "/api/conversations/" + "x" * 80]),
        conversation.map(json.dumps),
    ),
    st.tuples(st.just("/api/labels"), label.map(json.dumps)),
    st.tuples(
        st.sampled_from(["/api/profiles/pirate", "/api/profiles/helper", "/api/profiles/B A D"]),
        profile_body.map(json.dumps),
    ),
    st.tuples(
        st.just("/api/memory")
        | (small_int | big_int).map(lambda i: f"/api/memory/{i}")
        | text.map(lambda t: "/api/memory/" + urllib.parse.quote(t, safe="")),
        memory_body.map(json.dumps),
    ),
    st.tuples(st.just("/api/corrections"), correction.map(json.dumps)),
    st.tuples(st.just("/api/label/sample"), label_sample.map(json.dumps)),
    st.tuples(
        st.sampled_from(["/v1/chat/completions", "/v1/completions", "/api/chat", "/api/labels"]),
        st.binary(max_size=60)
        | st.sampled_from([nested(40), nested(5000), '{"model": NaN}', '{"a": 1e999}', "[]"])
        | anything.map(json.dumps),
    ),
)

# -- the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed(assistant, tmp_path_factory):
    _, model_dir = assistant
    db = tmp_path_factory.mktemp("db")
    c = ServeConfig(db=str(db / "chats.sqlite"), profiles=str(db / "profiles"))
    save_profile(Profile(name="pirate", tools=["calculator"]), c.profiles)
    c.max_batch, c.max_queue, c.context, c.max_tokens, c.max_n = 4, 16, 96, 16, 3
    c.request_timeout = 20.0
    app = create_app(model_dir, c)
    url, server = start_server(app)
    yield url, app.state.served.name
    server.should_exit = True


def test_fuzzed_requests_never_break_the_server(fuzzed):
    url, name = fuzzed
    seen = {"requests": 0, "2xx": 0, "4xx": 0, "hung up": 0}
    client = httpx.Client(base_url=url, timeout=30)

    @settings(
        max_examples=N_REQUESTS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(req=request, hang_up=st.booleans())
    def one(req, hang_up):
        path, body = req
        body = body.replace("MODEL", name) if isinstance(body, str) else body
        put = ("/api/conversations", "/api/profiles", "/api/memory/")
        method = "PUT" if path.startswith(put) else "POST"
        seen["requests"] += 1
        # A streaming client that goes away after the first chunk must free its slot too.
        with client.stream(method, path, content=body) as r:
            if hang_up and r.status_code == 200:
                next(r.iter_bytes(), None)
                seen["hung up"] += 1
                return
            data = r.read()
        assert r.status_code < 500, (path, body[:500], data[:500])
        if r.status_code >= 400:
            seen["4xx"] += 1
            err = json.loads(data)["error"]
            assert isinstance(err["message"], str) and err["message"], data
        else:
            seen["2xx"] += 1

    t = time.monotonic()
    one()
    elapsed = time.monotonic() - t
    # Nothing leaked: every request, finished, refused or abandoned, let go of its slot.
    for _ in range(100):
        health = client.get("/health").json()
        if health["in_flight"] == 0 and health["running"] == 0:
            break
        time.sleep(0.1)
    assert health["in_flight"] == 0 and health["running"] == 0, health
    ok = client.post(
        "/v1/chat/completions",
        json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"
    print(f"fuzz: {seen} in {elapsed:.0f} s")
    assert seen["requests"] >= N_REQUESTS
