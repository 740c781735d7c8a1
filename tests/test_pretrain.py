import json
import math

import pytest
import torch

from llmos.checkpoint import load_model
from llmos.eval.compress import model_bits
from llmos.train.loop import ResumeError
from llmos.train.pretrain import PretrainConfig, pretrain


def config(corpus_dir, **kw) -> PretrainConfig:
    base = dict(
        preset="nano",
        corpus=str(corpus_dir / "*.txt"),
        vocab_size=320,
        seq_len=32,
        batch_size=4,
        max_steps=8,
        warmup_steps=2,
        eval_every=4,
        eval_windows=4,
        checkpoint_every=100,
        val_fraction=0.1,
    )
    return PretrainConfig(**{**base, **kw})


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows]


def test_resume_continues_exactly(corpus_dir, tmp_path):
    c = config(corpus_dir)
    pretrain(c, tmp_path / "full")
    pretrain(c, tmp_path / "split", stop_at=4)
    assert len(losses(tmp_path / "split")) == 4
    pretrain(c, tmp_path / "split", resume=True)
    assert losses(tmp_path / "split") == losses(tmp_path / "full")
    a, b = load_model(tmp_path / "full"), load_model(tmp_path / "split")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    for f in ("report.md", "loss.png", "run.json", "config.json", "tokenizer.json"):
        assert (tmp_path / "full" / f).exists()


def test_resume_with_different_config_lists_fields(corpus_dir, tmp_path):
    pretrain(config(corpus_dir), tmp_path / "r", stop_at=2)
    with pytest.raises(ResumeError) as e:
        pretrain(config(corpus_dir, lr=1e-4, batch_size=8), tmp_path / "r", resume=True)
    assert "lr" in str(e.value) and "batch_size" in str(e.value)
    with pytest.raises(ResumeError, match="--resume"):
        pretrain(config(corpus_dir), tmp_path / "r")


def test_model_bits_equals_full_forward(corpus_dir, tmp_path, tok):
    pretrain(config(corpus_dir, max_steps=2), tmp_path / "m")
    model = load_model(tmp_path / "m")
    from llmos.tokenizer import Tokenizer

    t = Tokenizer.load(tmp_path / "m")
    ids = [t.bos_id, *t.encode("The fair king and the dark river. " * 3)]
    with torch.no_grad():
        logp = model(torch.tensor([ids[:-1]])).log_softmax(-1)[0]
    want = -sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)) / math.log(2)
    for seq_len in (5, 16, 64):  # windowing must not change which tokens are counted
        bits, n_bytes, n = model_bits(model, ids, t.token_bytes(), seq_len)
        assert n == len(ids) - 1 and n_bytes == len("The fair king and the dark river. " * 3)
        if seq_len == 64:
            assert abs(bits - want) < 1e-3


def test_ctrl_c_saves_and_resume_finishes(corpus_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [
        "--preset",
        "nano",
        "--corpus",
        str(corpus_dir / "*.txt"),
        "--vocab-size",
        "320",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--max-steps",
        "100000",
        "--eval-every",
        "100000",
        "--checkpoint-every",
        "100000",
        "--out",
        str(out),
    ]
    cmd = [sys.executable, "-m", "llmos.cli", "pretrain", *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until it is training
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr.decode()[-2000:]
    assert b"continue with --resume" in stdout
    state = torch.load(out / "train_state.pt", weights_only=False)
    assert state["step"] >= 3
    assert len(losses(out)) == state["step"]
    load_model(out)  # the checkpoint written on Ctrl-C loads
