import dataclasses
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


def test_pretraining_with_a_borrowed_tokenizer_reports_a_sample(corpus_dir, tmp_path, smollm2):
    """A tokenizer that adds no BOS of its own (SmolLM2's, as for a distilled draft): the run
    ends with its report and a sample (the sample once started from no token at all)."""
    out = pretrain(config(corpus_dir, tokenizer=str(smollm2), max_steps=2, eval_every=2), tmp_path)
    report = (out / "report.md").read_text()
    assert "sample" in report.lower() and load_model(out).cfg.vocab_size == 49152


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


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_and_resume_finishes(corpus_dir, tmp_path, sig):
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
    p.send_signal(getattr(signal, sig))
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr.decode()[-2000:]
    assert b"continue with --resume" in stdout
    state = torch.load(out / "train_state.pt", weights_only=False)
    assert state["step"] >= 3
    assert len(losses(out)) == state["step"]
    load_model(out)  # the checkpoint written on Ctrl-C loads


def test_a_finished_run_resumes_to_nothing_and_extends(corpus_dir, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain(config(corpus_dir, max_steps=6), out)
    before = (out / "model.safetensors").read_bytes()
    pretrain(config(corpus_dir, max_steps=6), out, resume=True)
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "model.safetensors").read_bytes() == before and len(losses(out)) == 6
    pretrain(config(corpus_dir, max_steps=9), out, resume=True)  # extended by 3 steps
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 10))
    # The extension trains at the minimum LR of the original 6-step schedule.
    assert [r["lr"] for r in rows[6:]] == pytest.approx([3e-4] * 3)
    with pytest.raises(ResumeError, match="lr: 0.003 -> 0.001"):
        pretrain(config(corpus_dir, max_steps=12, lr=1e-3), out, resume=True)


def test_a_run_killed_before_its_first_checkpoint_restarts_in_place(corpus_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    c = config(corpus_dir, max_steps=4)
    (out / "run.json").write_text(json.dumps({"config": __import__("dataclasses").asdict(c)}))
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    (out / ".model.safetensors.x1.tmp").write_bytes(b"half")  # a killed write
    pretrain(c, out, resume=True)
    assert len(losses(out)) == 4 and not list(out.glob(".*.tmp"))
    load_model(out)


def test_kill_9_never_leaves_a_broken_checkpoint(corpus_dir, tmp_path):
    """kill -9 at random moments, most of them inside checkpoint writes (one every step): after
    each kill the run loads, weights and state are of the same step, and the next start leaves
    no temporary files behind and continues."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from safetensors import safe_open

    out = tmp_path / "run"
    flags = ["--preset", "nano", "--corpus", str(corpus_dir / "*.txt"), "--vocab-size", "320"]
    flags += ["--seq-len", "32", "--batch-size", "4", "--eval-every", "100000"]
    flags += ["--checkpoint-every", "1", "--max-steps", "100000", "--out", str(out)]
    rng, kills, steps = random.Random(0), 0, []
    for _ in range(8):
        cmd = [sys.executable, "-m", "llmos.cli", "pretrain", *flags]
        cmd += ["--resume"] if (out / "run.json").exists() else []
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Wait for training to start (torch's import takes seconds), then kill at a random
        # moment: with a checkpoint every step, most moments fall inside a write.
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            m = out / "metrics.jsonl"
            if m.exists() and len(m.read_text().splitlines()) > (steps[-1] if steps else 0):
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.0))
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        if not (out / "train_state.pt").exists():
            continue  # killed before the first checkpoint: the next start begins again
        state = torch.load(out / "train_state.pt", weights_only=False)
        with safe_open(str(out / "model.safetensors"), framework="pt") as f:
            assert int(f.metadata()["step"]) == state["step"]
        load_model(out)
        steps.append(state["step"])
    assert kills == 8 and len(steps) >= 6 and steps == sorted(steps), steps
    # The next start cleans up after the last kill and trains on.
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmos.cli",
            "pretrain",
            *flags[:-4],
            "--max-steps",
            str(steps[-1] + 2),
            "--out",
            str(out),
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    leftovers = [*out.rglob("*.tmp"), *out.rglob(".*")]
    assert not leftovers, leftovers
    assert len(list((out / "checkpoints").iterdir())) == 1


def test_compiled_training_gives_the_same_losses(corpus_dir, tmp_path):
    """--compile on (the CUDA default) traces the same model: same losses, same weights."""
    # fp32: in bf16 (`auto` on CPUs with AVX512-BF16) the fused graph's rounding differs
    c = config(corpus_dir, max_steps=3, eval_every=3, dtype="fp32")
    pretrain(c, tmp_path / "eager")
    pretrain(dataclasses.replace(c, compile="on"), tmp_path / "compiled")
    assert all(
        abs(a - b) < 1e-4 for a, b in zip(losses(tmp_path / "eager"), losses(tmp_path / "compiled"))
    )
    # Same weights, tensor by tensor, up to Adam's sign noise: where a gradient entry is at
    # rounding level, Adam's first updates are ±lr whatever its size, so one fused reduction
    # order can flip one entry by 2·lr (a CI run saw it: max-abs beyond 1e-4, losses equal).
    # Such flips are isolated; a wrong compiled graph moves whole tensors.
    a, b = load_model(tmp_path / "eager"), load_model(tmp_path / "compiled")
    for k, x in a.state_dict().items():
        y = b.state_dict()[k]
        assert (x - y).norm() <= 1e-3 * x.norm(), k
        assert ((x - y).abs() > 1e-4).float().mean() < 1e-3, k
