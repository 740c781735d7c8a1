"""GGUF export/import against the gguf reader and transformers' GGUF loader; real SmolLM2."""

import json

import numpy as np
import pytest
import torch

from llmos.checkpoint import load_model, save_model_dir
from llmos.convert import ConvertError, export_gguf, import_any, import_gguf
from llmos.infer.engine import Engine, SamplingConfig
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer
from tests.test_model import tiny_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("m")
    m = Transformer(
        tiny_config(
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            tie_word_embeddings=False,
        )
    )
    m.init_weights(seed=5)
    save_model_dir(m, tok, d)
    return d


@pytest.mark.parametrize("qtype,tol", [("F32", 1e-4), ("F16", 2e-2), ("Q8_0", 0.1)])
def test_export_read_back_same_logits(model_dir, tmp_path, qtype, tol):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    path = export_gguf(model_dir, tmp_path / "m.gguf", qtype)
    reader = GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "llama"
    ours = load_model(model_dir)
    x = torch.randint(0, 400, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = ours(x)
        hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
        assert (hf(x).logits - ref).abs().max() <= tol
        back = load_model(import_gguf(path, tmp_path / "back"))
        assert (back(x) - ref).abs().max() <= tol
    t = Tokenizer.load(tmp_path / "back")
    assert t.encode("The king's 12 swords!") == Tokenizer.load(model_dir).encode(
        "The king's 12 swords!"
    )


def test_truncated_gguf_and_unsupported_architecture(model_dir, tmp_path):
    import gguf

    path = export_gguf(model_dir, tmp_path / "m.gguf", "F32")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ConvertError, match="cut.gguf"):
        import_any(cut, tmp_path / "o1")
    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConvertError, match="architecture 'gpt2' is not supported"):
        import_any(tmp_path / "gpt2.gguf", tmp_path / "o2")
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    with pytest.raises(ConvertError, match="neither a GGUF"):
        import_any(tmp_path / "junk.bin", tmp_path / "o3")


def test_smollm2_matches_transformers_and_answers(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos.data.corpora import cache_dir

    gguf_path = cache_dir() / "packages" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    hf_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tok = Tokenizer.load(smollm2)
    for text in ["What is the capital of France?", "It's 2024: 12 + 7 = 19.\n\n  ok"]:
        assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    model = load_model(smollm2)
    x = torch.tensor([tok.encode("The capital of France is")])
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        ).eval()
        assert (model(x) - hf(x).logits).abs().max() <= 1e-3
    # Greedy answer through the model's own chat template (rendered by transformers).
    mine = AutoTokenizer.from_pretrained(smollm2)
    ids = mine.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    engine = Engine(model, tok)
    engine.stop_ids |= {tok.tk.token_to_id("<|im_end|>")}
    answer = engine.generate([list(ids)], SamplingConfig(temperature=0, max_new_tokens=30))[0]
    assert "Paris" in answer.text


def test_import_hf_directory(tmp_path, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    hf = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    hf.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf")
    out = import_any(tmp_path / "hf", tmp_path / "ours")
    x = torch.randint(0, tok.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (load_model(out)(x) - hf.float()(x).logits).abs().max() <= 1e-4
    assert Tokenizer.load(out).encode("fair king") == tok.encode("fair king")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(
        '{"model_type": "gpt2", "hidden_size": 8, '
        '"num_hidden_layers": 1, "num_attention_heads": '
        '1, "vocab_size": 10}'
    )
    from llmos.config import ConfigError

    with pytest.raises(ConfigError, match="model_type"):
        import_any(tmp_path / "bad", tmp_path / "o")


def test_smollm2_keeps_its_template_and_fine_tunes_with_lora(smollm2, tmp_path):
    from transformers import AutoTokenizer

    from llmos.chat_format import render
    from llmos.train.sft import SFTConfig, sft

    tok = Tokenizer.load(smollm2)
    assert not tok.llmos_format and "<|im_start|>" in tok.chat_template
    msgs = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Green."},
    ]
    ids, mask = render(tok, msgs)
    hf = AutoTokenizer.from_pretrained(smollm2)
    assert ids == list(hf.apply_chat_template(msgs, tokenize=True, return_dict=False))
    learned = tok.decode(i for i, m in zip(ids, mask) if m)
    assert learned == "Blue.<|im_end|>\nGreen.<|im_end|>\n"
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"messages": msgs}) + "\n")
    c = SFTConfig(
        base=str(smollm2),
        data=str(data),
        batch_size=1,
        max_steps=2,
        seq_len=64,
        eval_every=2,
        val_fraction=0.0,
        lora_rank=4,
    )
    out = sft(c, tmp_path / "lora")
    assert (out / "model.safetensors").exists() and Tokenizer.load(out).chat_template
