"""Fine-tuning end to end (fixtures `base` and `assistant` in conftest.py): a tiny model learns a
tool-call conversation, then the engine runs the call through the real calculator and the
model answers with its result."""

import json

import pytest

from llmos.checkpoint import load_model
from llmos.infer.engine import Engine, SamplingConfig, assistant_turn
from llmos.tokenizer import Tokenizer
from llmos.train.loop import ResumeError
from llmos.train.sft import SFTConfig, sft

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
    with pytest.raises(ResumeError, match="already holds a run"):
        sft(c, out)


def _chat(model_dir, script: str, *flags: str):
    """`llmos chat` in a subprocess, typed into through stdin."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "llmos.cli", "chat", str(model_dir), "--temperature", "0"]
    return subprocess.run([*cmd, *flags], input=script, capture_output=True, text=True, timeout=120)


def test_terminal_chat_shows_tool_calls(assistant, tmp_path):
    _, out = assistant
    script = "/help\nWhat is 1234 * 5678?\n/save {}\n/quit\n".format(tmp_path / "c.json")
    r = _chat(out, script, "--max-new-tokens", "120")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "/reset" in r.stdout  # the help text
    assert '[tool call] calculator({"expression": "1234 * 5678"})' in r.stdout
    assert "[tool result] 7006652" in r.stdout
    saved = json.loads((tmp_path / "c.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant", "tool", "assistant"]


def test_terminal_chat_with_smollm2_uses_its_template(smollm2):
    r = _chat(smollm2, "What is the capital of France?\n/quit\n", "--max-new-tokens", "40")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Paris" in r.stdout


def test_malformed_tool_call_becomes_an_error_message(base):
    """An untrained model emits garbage; force a call token to see the engine survive it."""
    tok = Tokenizer.load(base)
    engine = Engine(load_model(base), tok)
    engine.stop_ids = set()
    msgs = [{"role": "user", "content": "hi"}]
    new = assistant_turn(
        engine, msgs, SamplingConfig(temperature=1.0, seed=0, max_new_tokens=8), max_calls=2
    )
    assert new[-1]["role"] == "assistant"  # whatever it wrote, the turn ended without a crash


def test_lora_trains_low_rank_updates_and_merges(base, tmp_path):
    import torch

    from llmos.train.lora import add_lora, merged

    data = tmp_path / "conv.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    c = SFTConfig(
        base=str(base),
        data=str(data),
        batch_size=2,
        max_steps=6,
        lr=1e-2,
        warmup_steps=1,
        eval_every=3,
        val_fraction=0.0,
        lora_rank=2,
    )
    full = sft(c, tmp_path / "full")
    sft(c, tmp_path / "split", stop_at=3)
    sft(c, tmp_path / "split", resume=True)
    a, b, w0 = load_model(full), load_model(tmp_path / "split"), load_model(base)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(a.state_dict()[name], b.state_dict()[name])  # LoRA resume is exact
    delta = a.state_dict()[name] - w0.state_dict()[name]
    assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta) <= 2
    emb = "model.embed_tokens.weight"
    assert torch.equal(a.state_dict()[emb], w0.state_dict()[emb])  # frozen
    # merging changes nothing the model computes
    torch.manual_seed(0)
    m = add_lora(load_model(base), rank=3)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    x = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        before, after = m(x), merged(m)(x)
        assert (before - load_model(base)(x)).abs().max() > 0.01  # the adapters do something
        assert (before - after).abs().max() <= 1e-4 * before.abs().max()
