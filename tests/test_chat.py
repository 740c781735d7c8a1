"""`llmos chat` in a subprocess, typed into through stdin: tool calls shown as they happen,
/save, a model with its own template, and commands that go wrong without ending the chat."""

import json


def _chat(model_dir, script: str, *flags: str, env=None):
    """`llmos chat` in a subprocess, typed into through stdin."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "llmos.cli", "chat", str(model_dir), "--temperature", "0"]
    return subprocess.run(
        [*cmd, *flags], input=script, capture_output=True, text=True, timeout=120, env=env
    )


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


def test_a_bad_command_does_not_end_the_chat(assistant, tmp_path):
    _, out = assistant
    script = f"/temp warm\n/load {tmp_path / 'nope.json'}\n/help\n/quit\n"
    r = _chat(out, script)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "error: could not convert" in r.stdout and "nope.json" in r.stdout
    assert "/reset" in r.stdout  # still there after both errors


def test_a_model_without_a_template_is_refused_in_one_line(smollm2, tmp_path):
    # SmolLM2 with its chat template taken out: a base model with no way to render a chat.
    for f in smollm2.iterdir():
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "tokenizer_config.json").unlink()
    config = json.loads((smollm2 / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    r = _chat(tmp_path, "hi\n")
    assert r.returncode == 2 and "no chat template" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_chat_is_autosaved_and_resumes(assistant, tmp_path):
    import os

    _, out = assistant
    env = {**os.environ, "LLMOS_CACHE": str(tmp_path / "cache")}
    script = "What is 1234 * 5678?\n/temp -3\n/save\n/quit\n"
    r = _chat(out, script, "--max-new-tokens", "60", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "error: --temperature: -3.0 is out of range" in r.stdout and "usage: /save" in r.stdout
    saved = list((tmp_path / "cache" / "chats").glob("*.json"))
    assert len(saved) == 1
    r = _chat(out, f"/save {tmp_path / 'again.json'}\n/quit\n", "--resume", env=env)
    assert r.returncode == 0 and "resumed" in r.stdout, r.stderr[-2000:]
    again = json.loads((tmp_path / "again.json").read_text())["messages"]
    assert again == json.loads(saved[0].read_text())["messages"]
    assert again[0] == {"role": "user", "content": "What is 1234 * 5678?"}


def test_ctrl_c_stops_the_reply_not_the_chat(assistant, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    _, out = assistant
    env = {**os.environ, "LLMOS_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "llmos.cli", "chat", str(out), "--temperature", "1.5"]
    cmd += ["--max-new-tokens", "100000"]
    p = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    seen = bytearray()  # stdout so far, read byte by byte as the reply streams
    threading.Thread(
        target=lambda: [seen.extend(b) for b in iter(lambda: p.stdout.read(1), b"")], daemon=True
    ).start()

    def wait_for(pattern: bytes, after: int, timeout=60.0) -> int:
        deadline = time.time() + timeout
        while (i := bytes(seen).find(pattern, after)) < 0:
            assert time.time() < deadline and p.poll() is None, bytes(seen)[-2000:]
            time.sleep(0.01)
        return i + len(pattern)

    # A reply ends by itself at the end token or the context's end, so Ctrl-C is sent as soon
    # as the reply starts; should the reply end first anyway, the chat is asked again.
    for _ in range(5):
        mark = len(seen)
        p.stdin.write(b"Tell me everything.\n")
        p.stdin.flush()
        start = wait_for(b"assistant> ", mark)
        while len(seen) <= start:  # the reply's first byte
            time.sleep(0.005)
        if seen[start:].startswith(b"\n"):  # an empty reply (the end token first): ask again,
            wait_for(b"you> ", start)  # as Ctrl-C at the prompt would end the chat
            continue
        p.send_signal(signal.SIGINT)
        wait_for(b"you> ", start)
        if b"[stopped]" in seen[start:]:
            break
    p.stdin.write(b"/quit\n")
    p.stdin.flush()
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr.decode()[-2000:]
    assert b"[stopped]" in seen and b"Traceback" not in stderr
    saved = json.loads(next((tmp_path / "cache" / "chats").glob("*.json")).read_text())
    assert [m["role"] for m in saved["messages"]][-1] == "assistant"  # the partial reply kept
