"""Model directories: bad files give errors naming the file and field; writes are atomic."""

import json

import pytest
import safetensors.torch
import torch

from llmos import checkpoint
from llmos.checkpoint import CheckpointError, load_model, save_model_dir
from llmos.config import ConfigError
from llmos.model import Transformer
from tests.test_model import tiny_config


@pytest.fixture
def model_dir(tmp_path, tok):
    model = Transformer(tiny_config())
    model.init_weights(seed=0)
    save_model_dir(model, tok, tmp_path / "m")
    return tmp_path / "m"


def test_truncated_safetensors_names_the_file(model_dir):
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(model_dir)


@pytest.mark.parametrize(
    "field,value",
    [
        ("hidden_size", "wide"),
        ("num_key_value_heads", 3),
        ("rms_norm_eps", -1.0),
        ("tie_word_embeddings", "yes"),
        ("model_type", "gpt2"),
    ],
)
def test_bad_config_field_names_file_and_field(model_dir, field, value):
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    cfg[field] = value
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        load_model(model_dir)
    assert str(path) in str(e.value) and field in str(e.value)


def test_missing_field_and_shape_mismatch(model_dir):
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in cfg.items() if k != "vocab_size"}))
    with pytest.raises(ConfigError, match="vocab_size"):
        load_model(model_dir)
    path.write_text(json.dumps({**cfg, "intermediate_size": 128}))
    with pytest.raises(CheckpointError, match=r"mlp.gate_proj.weight.*shape"):
        load_model(model_dir)


def test_killed_during_write_keeps_previous_checkpoint(model_dir, tok, monkeypatch):
    before = load_model(model_dir).state_dict()["model.norm.weight"].clone()

    def dies_halfway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)
        raise KeyboardInterrupt  # the process is killed mid-write

    model = Transformer(tiny_config())
    model.init_weights(seed=99)
    with torch.no_grad():
        model.model.norm.weight.fill_(7.0)
    monkeypatch.setattr(checkpoint, "save_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_model_dir(model, tok, model_dir)
    monkeypatch.setattr(checkpoint, "save_file", safetensors.torch.save_file)
    after = load_model(model_dir).state_dict()["model.norm.weight"]
    assert torch.equal(before, after)
    assert not list(model_dir.glob(".*.tmp"))


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path):
    from llmos.common import atomic_write_text

    (tmp_path / "plain.md").write_text("x")  # open(): 0666 less the umask
    atomic_write_text(tmp_path / "report.md", "x")  # mkstemp alone would leave 0600
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "report.md") == mode(tmp_path / "plain.md")
