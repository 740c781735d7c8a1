"""The bad-input table: files and flags a user can get wrong, each answered by `llmos` with one
line naming the file, line, field or flag (exit code 2), never a traceback. Run in-process
through `cli.main`: an exception that escapes it fails the test as the traceback it would be."""

import json
import shutil

import pytest

from llmos.cli import main


@pytest.fixture(scope="module")
def files(base, tmp_path_factory):
    """Bad files beside a copy of a good model directory, one broken thing each."""
    _, model = base if isinstance(base, tuple) else (None, base)
    d = tmp_path_factory.mktemp("bad")

    def model_dir(name, change):
        m = d / name
        shutil.copytree(model, m, symlinks=False)
        change(m)
        return m

    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    write = {
        "notjson.jsonl": "{nope\n",
        "array.jsonl": "[1, 2]\n",
        "nested.jsonl": "[" * 100000 + "]" * 100000 + "\n",
        "surrogate.jsonl": json.dumps(conv).replace("yo", "\\ud800") + "\n",
        "noassistant.jsonl": json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n",
        "badrole.jsonl": json.dumps({"messages": [{"role": "wizard", "content": "x"}]}) + "\n",
        "nomessages.jsonl": json.dumps({"text": "hi"}) + "\n",
        "contentnum.jsonl": json.dumps({"messages": [{"role": "user", "content": 5}]}) + "\n",
        "emptylines.jsonl": "\n\n",
        "notext.jsonl": json.dumps({"body": "x"}) + "\n",
        "empty.txt": "",
        "good.jsonl": json.dumps(conv) + "\n",
        "notgguf.gguf": "this is not a gguf file at all",
        "latin1.txt": "caf\xe9",
    }
    for name, text in write.items():
        (d / name).write_bytes(text.encode("utf-8", "surrogatepass"))
    (d / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    (d / "binary.bin").write_bytes(b"\x00\x01\x02" * 100)
    models = {
        "badconfig": lambda m: (m / "config.json").write_text("{oops"),
        "nofield": lambda m: (m / "config.json").write_text(
            json.dumps(
                {
                    k: v
                    for k, v in json.loads((m / "config.json").read_text()).items()
                    if k != "hidden_size"
                }
            )
        ),
        "badfield": lambda m: (m / "config.json").write_text(
            json.dumps({**json.loads((m / "config.json").read_text()), "num_hidden_layers": -2})
        ),
        "truncated": lambda m: (m / "model.safetensors").write_bytes(
            (m / "model.safetensors").read_bytes()[:1000]
        ),
        "noweights": lambda m: (m / "model.safetensors").unlink(),
        "notokenizer": lambda m: (m / "tokenizer.json").unlink(),
        "badtokconfig": lambda m: (m / "tokenizer_config.json").write_text("{"),
        "badtokenizer": lambda m: (m / "tokenizer.json").write_text("[]"),
    }
    for name, change in models.items():
        model_dir(name, change)
    (d / "good").symlink_to(model)
    return d


# (arguments with {d} for the directory of bad files, what the one line must say)
CASES = [
    # -- flags, refused before anything runs -------------------------------------------------
    ("pretrain --max-steps 0", "--max-steps: 0 is out of range"),
    ("pretrain --max-steps -5", "--max-steps: -5 is out of range"),
    ("pretrain --batch-size 0", "--batch-size: 0 is out of range"),
    ("pretrain --grad-accum 0", "--grad-accum: 0"),
    ("pretrain --lr -1", "--lr: -1.0 is out of range"),
    ("pretrain --lr abc", "--lr: 'abc' is not float"),
    ("pretrain --max-steps 1.5", "--max-steps: '1.5' is not int"),
    ("pretrain --eval-every 0", "--eval-every: 0"),
    ("pretrain --checkpoint-every 0", "--checkpoint-every: 0"),
    ("pretrain --val-fraction 1.5", "--val-fraction: 1.5"),
    ("pretrain --min-lr-ratio 2", "--min-lr-ratio: 2.0"),
    ("pretrain --warmup-steps -1", "--warmup-steps: -1"),
    ("pretrain --grad-clip -1", "--grad-clip: -1.0"),
    ("pretrain --lr nan", "--lr: nan is out of range"),
    ("pretrain --bogus 1 --out x", "unrecognized arguments: --bogus"),
    ("sft {d}/good --lora-rank -1", "--lora-rank: -1"),
    ("sft {d}/good --task-size 0", "--task-size: 0"),
    ("sample {d}/good --temperature -1", "--temperature: -1.0"),
    ("sample {d}/good --top-p 2", "--top-p: 2.0"),
    ("sample {d}/good --top-k -1", "--top-k: -1"),
    ("sample {d}/good --min-p 3", "--min-p: 3.0"),
    ("sample {d}/good --max-new-tokens 0", "--max-new-tokens: 0"),
    ("sample {d}/good --repetition-penalty 0", "--repetition-penalty: 0.0"),
    ("sample {d}/good --dtype fp8", "invalid choice: 'fp8'"),
    ("serve {d}/good --port 70000", "--port: 70000"),
    ("serve {d}/good --max-batch 0", "--max-batch: 0"),
    ("serve {d}/good --request-timeout 0", "--request-timeout: 0.0"),
    ("serve {d}/good --max-n 0", "--max-n: 0"),
    ("serve {d}/good --label-endpoints notaurl", "--label-endpoints: 'notaurl' is not"),
    ("rlhf {d}/good --reward task --temperature 0 --out {d}/o", "--temperature: 0.0"),
    ("chat {d}/good --temperature -1", "--temperature: -1.0"),
    ("chat {d}/good --max-new-tokens 0", "--max-new-tokens: 0"),
    ("tasks arithmetic --n 0", "--n: 0"),
    ("tasks arithmetic --split bogus", "invalid choice: 'bogus'"),
    ("tasks nosuchtask --out {d}/t.jsonl", "no task 'nosuchtask'"),
    ("tokenizer train --vocab-size 10", "--vocab-size: 10"),
    ("speedrun --pretrain-steps 0", "--pretrain-steps: 0"),
    ("speedrun --sft-lr -1", "--sft-lr: -1.0"),
    ("export-gguf {d}/good --out x.gguf --type q2", "invalid choice: 'q2'"),
    ("nosuchverb", "invalid choice: 'nosuchverb'"),
    # -- model directories --------------------------------------------------------------------
    ("sample /no/such/model", "/no/such/model/tokenizer.json: missing"),
    ("sample {d}/badconfig", "badconfig/config.json"),
    ("sample {d}/nofield", "hidden_size"),
    ("sample {d}/badfield", "num_hidden_layers"),
    ("sample {d}/truncated", "truncated/model.safetensors: unreadable or truncated"),
    ("sample {d}/noweights", "noweights/model.safetensors: missing"),
    ("sample {d}/notokenizer", "notokenizer/tokenizer.json: missing"),
    ("sample {d}/badtokconfig", "badtokconfig/tokenizer_config.json"),
    ("sample {d}/badtokenizer", "badtokenizer/tokenizer.json"),
    ("compress /no/such/model", "/no/such/model/config.json: missing"),
    ("compress {d}/good --text /no/such.txt", "/no/such.txt"),
    ("chat /no/such/model", "/no/such/model"),
    ("serve /no/such/model", "/no/such/model"),
    ("export-gguf /no/such/model --out {d}/x.gguf", "/no/such/model"),
    ("export-gguf {d}/truncated --out {d}/x.gguf", "truncated/model.safetensors"),
    ("import /no/such.gguf --out {d}/imp", "/no/such.gguf: no such file"),
    ("import {d}/notgguf.gguf --out {d}/imp", "notgguf.gguf"),
    ("pull nosuchmodel --out {d}/pulled", "nosuchmodel"),
    # -- data files ----------------------------------------------------------------------------
    ("sft /no/such/model --out {d}/o", "/no/such/model/config.json: missing"),
    ("sft {d}/good --data {d}/notjson.jsonl --out {d}/o", "notjson.jsonl:1: not valid JSON"),
    ("sft {d}/good --data {d}/array.jsonl --out {d}/o", "array.jsonl:1: expected a JSON object"),
    ("sft {d}/good --data {d}/nested.jsonl --out {d}/o", "nested.jsonl:1"),
    ("sft {d}/good --data {d}/surrogate.jsonl --out {d}/o", "surrogate.jsonl:1"),
    ("sft {d}/good --data {d}/noassistant.jsonl --out {d}/o", "noassistant.jsonl:1: no assistant"),
    ("sft {d}/good --data {d}/badrole.jsonl --out {d}/o", "badrole.jsonl:1"),
    ("sft {d}/good --data {d}/nomessages.jsonl --out {d}/o", "nomessages.jsonl:1"),
    ("sft {d}/good --data {d}/contentnum.jsonl --out {d}/o", "contentnum.jsonl:1"),
    ("sft {d}/good --data {d}/emptylines.jsonl --out {d}/o", "emptylines.jsonl: no conversations"),
    ("sft {d}/good --data /no/such.jsonl --out {d}/o", "/no/such.jsonl"),
    ("sft {d}/good --data nosuchtask:1 --out {d}/o", "nosuchtask"),
    ("sft {d}/good --data arithmetic:abc --out {d}/o", "arithmetic:abc"),
    (
        "dpo {d}/good --data {d}/noassistant.jsonl --out {d}/o",
        "noassistant.jsonl:1: field 'chosen'",
    ),
    ("dpo {d}/good --data nosuchprefs:1 --out {d}/o", "nosuchprefs"),
    ("dpo {d}/good --beta -1 --out {d}/o", "--beta: -1.0"),
    ("rm train {d}/good --data /no/such.jsonl --out {d}/o", "/no/such.jsonl"),
    ("rm score {d}/good --data hallucination:1", "a language model, but this command needs"),
    ("rlhf {d}/good --reward nope --out {d}/o", "--reward 'nope'"),
    ("rlhf {d}/good --reward rm:{d}/good --out {d}/o", "a language model, but this command"),
    ("rlhf {d}/good --reward task --group-size 1 --out {d}/o", "--group-size: 1"),
    ("sft {d}/good --data store:comparisons --out {d}/o", "this command reads store:corrections"),
    ("sft {d}/good --data store:corrections@{d}/no.sqlite --out {d}/o", "no store at"),
    ("prefs generate {d}/good --out {d}/p.jsonl --prompts /no/such.jsonl", "/no/such.jsonl"),
    ("pretrain --corpus /no/such/file.txt --out {d}/p", "/no/such/file.txt"),
    ("pretrain --corpus {d}/notext.jsonl --out {d}/p", "notext.jsonl:1"),
    ("pretrain --corpus {d}/empty.txt --out {d}/p", "no documents"),
    ("pretrain --corpus nosuchcorpus --out {d}/p", "nosuchcorpus"),
    ("pretrain --preset nosuch --out {d}/p", "nosuch"),
    ("pretrain --resume --out {d}/nothing", "nothing to resume"),
    ("tasks identity --out /proc/no/x.jsonl", "/proc/no"),
    ("tasks gym:nosuch --out {d}/t.jsonl", "reasoning-gym has no such dataset"),
    ("think {d}/good --strategy guess --out {d}/t", "--strategy 'guess'"),
    ("think {d}/good --n 0,4 --out {d}/t", "each N must be 1 ... 256"),
    ("think {d}/good --task nosuchtask --strategy greedy --out {d}/t", "no task 'nosuchtask'"),
    ("think {d}/good --task identity --scorer steps --out {d}/t", "has no step checker"),
    ("think {d}/good --task chain --value reachable --out {d}/t", "has no reachability value"),
    ("rl {d}/good --task nosuchtask --out {d}/r", "no task 'nosuchtask'"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_gets_one_clear_line(args, message, files, capsys):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(args.format(d=files).split()))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    line = err.splitlines()[-1].replace(str(files) + "/", "")
    assert "error: " in line and message in line, err
    # One line, after argparse's usage text for a flag it refuses.
    assert "Traceback" not in err and (err.startswith("usage:") or len(err.splitlines()) == 1)


def test_the_table_is_long_enough():
    assert len(CASES) >= 60
