"""llmos/run.py, the numpy-only second file, against the torch engine."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmos import run as runpy_mod
from llmos.checkpoint import save_model_dir
from llmos.infer.engine import Engine, SamplingConfig
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer
from tests.test_model import tiny_config

RUN_PY = Path(runpy_mod.__file__)


def run_py_ids(model_dir, prompt: str, n: int) -> list[int]:
    out = subprocess.run(
        [
            sys.executable,
            str(RUN_PY),
            str(model_dir),
            "--prompt",
            prompt,
            "--max-new-tokens",
            str(n),
            "--ids",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [int(t) for t in out.split()]


def engine_ids(model_dir, model, prompt: str, n: int) -> list[int]:
    tok = Tokenizer.load(model_dir)
    engine = Engine(model, tok)
    return engine.generate(
        [tok.encode_prompt(prompt)], SamplingConfig(temperature=0, max_new_tokens=n)
    )[0].ids


def test_only_numpy_and_stdlib_and_short():
    tree = ast.parse(RUN_PY.read_text())
    mods = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert mods <= set(sys.stdlib_module_names) | {"numpy"}, mods
    assert len(RUN_PY.read_text().splitlines()) <= 500


@pytest.mark.parametrize("tied", [True, False])
def test_greedy_tokens_equal_engine_for_llmos_model(tmp_path, tok, tied):
    model = Transformer(tiny_config(tie_word_embeddings=tied, max_position_embeddings=128))
    model.init_weights(seed=7)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    save_model_dir(model, tok, tmp_path)
    want = engine_ids(tmp_path, model, "The king and the sea", 30)
    assert run_py_ids(tmp_path, "The king and the sea", 30) == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_tokens_equal_engine_for_hf_llama_with_gqa(tmp_path, tok, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        rope_theta=500.0,
    )
    hf = LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        hf.lm_head.weight.mul_(30)
    hf.save_pretrained(tmp_path)
    tok.save(tmp_path)
    from llmos.checkpoint import load_model

    want = engine_ids(tmp_path, load_model(tmp_path), "Fair river, dark night.", 25)
    assert run_py_ids(tmp_path, "Fair river, dark night.", 25) == want


def test_tokenizer_matches_hf_tokenizers(tok, tmp_path):
    tok.save(tmp_path)
    ours = runpy_mod.Tokenizer(tmp_path)
    texts = [
        "Hello world",
        "The king's 12 swords, 3.5 ships!",
        "  two  spaces\n\nand tabs\t",
        "Ünïcödé ✓ 日本語 🙂",
        "it's we'll they'd",
        "<|user|> plain",
        "a_b-c__d",
        "",
    ]
    for t in texts:
        assert ours.encode(t) == tok.encode(t), t
        assert ours.decode_bytes(ours.encode(t)).decode() == t
    assert ours.prefix == [tok.bos_id] and tok.eos_id in ours.stop


@pytest.mark.parametrize(
    "files, args, message",
    [
        ({}, [], "tokenizer.json: No such file"),
        ({"tokenizer.json": "{"}, [], "not a model directory run.py reads"),
        ({"tokenizer.json": "[]"}, [], "not a model directory run.py reads"),
        ({}, ["--top-p", "0"], None),
        ({}, ["--max-new-tokens", "0"], None),
    ],
)
def test_run_py_bad_inputs_are_one_line(files, args, message, tmp_path, capsys):
    from llmos import run

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit) as e:
        run.main([str(tmp_path), *args])
    said = e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err
    assert "run.py: error:" in said and (message is None or message in said), said
