"""The model against Hugging Face transformers' LlamaForCausalLM, both directions."""

import pytest
import torch

from llmos.checkpoint import load_model, save_model_dir
from llmos.config import ModelConfig
from llmos.model import KVCache, Transformer


def tiny_config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=400,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_loads_llmos_dir_with_same_logits(tmp_path, tok, tied):
    from transformers import AutoModelForCausalLM

    model = Transformer(tiny_config(tie_word_embeddings=tied))
    model.init_weights(seed=1)
    save_model_dir(model, tok, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randint(0, 400, (2, 50), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.eval()(x), hf(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_llmos_loads_transformers_dir_with_same_logits(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=96,
        intermediate_size=200,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        rope_theta=50000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF initializes norms to 1; make them matter
        for p in hf.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert not ours.cfg.tie_word_embeddings and ours.cfg.num_key_value_heads == 2
    x = torch.randint(0, 300, (3, 70), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert diff <= 1e-4


def test_kv_cache_decode_equals_full_forward():
    model = Transformer(tiny_config())
    model.init_weights(seed=2)
    model.eval()
    x = torch.randint(0, 400, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(model.cfg, 2, 30, torch.float32)
        parts = [model(x[:, :11], cache=cache), model(x[:, 11:20], cache=cache)]
        parts += [model(x[:, t : t + 1], cache=cache) for t in range(20, 30)]
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-4


def test_parameter_count_matches_torch():
    for tied in (True, False):
        cfg = tiny_config(tie_word_embeddings=tied)
        model = Transformer(cfg)
        assert cfg.n_params == sum(p.numel() for p in model.parameters())
