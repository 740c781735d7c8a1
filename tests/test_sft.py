"""Fine-tuning: packing without cross-talk, a run that refuses to overwrite itself, LoRA's
low-rank updates with an exact resume and a merge that changes nothing."""

import json

import pytest
import torch

from llmos.chat_format import render
from llmos.checkpoint import load_model
from llmos.model import Transformer
from llmos.train.loop import ResumeError
from llmos.train.lora import add_lora, merged
from llmos.train.sft import PackedLoader, SFTConfig, sft

from .conftest import CONVERSATION
from .test_chat_format import CONVERSATIONS
from .test_model import tiny_config


def test_a_finished_run_is_not_overwritten(assistant):
    c, out = assistant
    for f in ("report.md", "loss.png", "metrics.jsonl", "model.safetensors", "train_state.pt"):
        assert (out / f).exists()
    with pytest.raises(ResumeError, match="already holds a run"):
        sft(c, out)


def test_packed_rows_do_not_attend_across_conversations(tok):
    model = Transformer(tiny_config(vocab_size=tok.vocab_size, max_position_embeddings=512))
    model.init_weights(seed=3)
    model.eval()
    convs = [render(tok, c) for c in CONVERSATIONS]
    loader = PackedLoader(convs, batch_size=1, seq_len=511, pad_id=2, seed=0)
    x, y, seg = loader.next()
    assert seg.max() >= 2 and seg.min() == -1  # conversations, then padding (-1), in one row
    with torch.no_grad():
        packed = model(x, segments=seg)[0]
        for k in range(int(seg.max()) + 1):
            where = (seg[0] == k).nonzero().flatten()
            alone = model(x[:, where])[0]
            assert (packed[where] - alone).abs().max() < 1e-4
    # Rows of one conversation each take the causal fast path: the same loss as each alone.
    n = len(convs[1][0])
    x, y, seg = PackedLoader([convs[1]], batch_size=2, seq_len=n + 40, pad_id=2, seed=0).next()
    assert seg.max() == 0 and (y[:, n:] == -1).all()
    with torch.no_grad():
        fast = model(x, y, segments=seg, reduction="sum")
        alone = sum(model(x[r : r + 1, :n], y[r : r + 1, :n], reduction="sum") for r in range(2))
    assert abs(fast.item() - alone.item()) < 1e-3 * abs(alone.item())


def test_lora_trains_low_rank_updates_and_merges(base, tmp_path):
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


def test_fine_tuning_past_the_context_extends_it(base, tmp_path):
    """--seq-len beyond the base's 256 positions: the saved model's context is the new length
    and the engine generates after a prompt longer than the old one."""
    from llmos.infer.engine import Engine, SamplingConfig
    from llmos.tokenizer import Tokenizer

    long = [{"role": "user", "content": "the river and the ferry " * 50}, CONVERSATION[-1]]
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"messages": long}) + "\n")
    c = SFTConfig(base=str(base), data=f"{data}:1", seq_len=700, batch_size=1, max_steps=2,
                  warmup_steps=1, eval_every=2, val_fraction=0.0)  # fmt: skip
    out = sft(c, tmp_path / "out")
    assert load_model(base).cfg.max_position_embeddings == 256
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 700
    tok = Tokenizer.load(out)
    prompt, _ = render(tok, long[:1], add_generation_prompt=True)
    assert 256 < len(prompt) < 690
    s = SamplingConfig(temperature=0, max_new_tokens=8)
    assert len(Engine(load_model(out), tok).generate([prompt], s, set())[0].ids) == 8
