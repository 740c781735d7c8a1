"""The command line: every flag's --help says what it does, and a mistake the user makes is
one clear line and exit code 2, not a traceback."""

import subprocess
import sys

import pytest

from llmos.cli import build_parser


def help_text(*verb: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "llmos.cli", *verb, "--help"], capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("verb", ["pretrain", "sft", "sample", "serve", "dpo", "rlhf"])
def test_help_describes_every_flag(verb):
    text = help_text(verb)
    parser = build_parser()._subparsers._group_actions[0].choices[verb]
    for action in parser._actions:
        if action.dest in ("help",):
            continue
        # argparse puts the help after the flag; a bare "(default: X)" says nothing
        assert action.help and not action.help.startswith("(default"), (verb, action.dest)
        assert action.help.split(" (default")[0].split()[0] in text
    assert "--max-steps" in text or verb in ("sample", "serve")


def run_cli(*args: str):
    return subprocess.run(
        [sys.executable, "-m", "llmos.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "/no/such/model"], "/no/such/model/tokenizer.json: missing"),
        (["compress", "/no/such/model"], "/no/such/model/config.json: missing"),
        (["import", "/no/such.gguf", "--out", "x"], "/no/such.gguf: no such file"),
        (["sft", "/no/such/model", "--out", "x"], "/no/such/model/config.json: missing"),
        (["tasks", "identity", "--out", "/proc/no/x.jsonl"], "/proc/no"),
    ],
)
def test_user_errors_are_one_line(args, message, tmp_path):
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and message in r.stderr
