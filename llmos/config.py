"""Model config: the fields of Hugging Face's LlamaConfig that define the network, and presets.

`config.json` in a model directory is exactly what `transformers` writes for a LlamaConfig, so a
directory moves freely between llmos, transformers, vLLM and llama.cpp's converters.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from llmos.common import LlmosError, atomic_write_text


class ConfigError(LlmosError):
    """A config file that llmos cannot use; the message names the file and the field."""


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    bos_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int | None = None
    # Set for a reward model (LlamaForSequenceClassification): the score head's outputs.
    num_labels: int | None = None

    def __post_init__(self) -> None:
        heads = self.num_attention_heads
        if (
            not self.head_dim
            and isinstance(self.hidden_size, int)
            and isinstance(heads, int)
            and heads
        ):
            self.head_dim = self.hidden_size // self.num_attention_heads

    def validate(self, where: str = "config") -> None:
        for f in dataclasses.fields(self):
            v, kind = getattr(self, f.name), f.type.split(" ")[0]  # "int", "float", "bool"
            if v is None and "None" in f.type:
                continue
            if kind == "bool":
                ok = isinstance(v, bool)
            else:
                ok = isinstance(v, int if kind == "int" else (int, float)) and not isinstance(
                    v, bool
                )
                ok = ok and (v > 0 or f.name.endswith("token_id") and v >= 0)
            if not ok:
                raise ConfigError(f"{where}: field '{f.name}' must be a positive {kind}, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{where}: field 'num_key_value_heads' ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})"
            )

    @property
    def n_params(self) -> int:
        """Parameter count; the tied embedding is counted once."""
        h, hd = self.hidden_size, self.head_dim
        attn = h * hd * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        block = attn + 3 * h * self.intermediate_size + 2 * h
        emb = self.vocab_size * h
        return self.num_hidden_layers * block + h + emb * (1 if self.tie_word_embeddings else 2)

    @property
    def n_params_no_embedding(self) -> int:
        """Parameters that cost FLOPs per token: everything but the input embedding (the head
        is counted, as in Kaplan et al. 2020 plus the unembedding matmul)."""
        return self.n_params - self.vocab_size * self.hidden_size * (
            0 if self.tie_word_embeddings else 1
        )

    def to_hf(self) -> dict:
        """The dict `transformers` writes for this LlamaConfig."""
        d = dataclasses.asdict(self)
        labels = d.pop("num_labels")
        if labels:  # HF counts the labels by id2label
            d["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
            d["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
        d.update(
            architectures=["LlamaForSequenceClassification" if labels else "LlamaForCausalLM"],
            model_type="llama",
            hidden_act="silu",
            attention_bias=False,
            mlp_bias=False,
            attention_dropout=0.0,
            # transformers >= 5 reads rope_parameters; older readers read rope_theta.
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            torch_dtype="float32",
        )
        return d

    @classmethod
    def from_hf(cls, d: dict, where: str = "config") -> ModelConfig:
        """Build from a HF Llama-family config dict, refusing what llmos does not implement."""
        arch = d.get("model_type", "llama")
        if arch not in ("llama", "mistral", "qwen2"):
            raise ConfigError(f"{where}: field 'model_type' is {arch!r}; llmos runs Llama models")
        if arch == "qwen2" or d.get("attention_bias"):
            raise ConfigError(f"{where}: field 'attention_bias' is true; llmos has no q/k/v bias")
        if d.get("mlp_bias"):
            raise ConfigError(f"{where}: field 'mlp_bias' is true; llmos has no MLP bias")
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{where}: field 'hidden_act' is {d['hidden_act']!r}, not 'silu'")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ConfigError(f"{where}: field 'rope_scaling' type {rope!r} is not supported")
        if d.get("sliding_window") and arch == "mistral":
            raise ConfigError(f"{where}: field 'sliding_window' is not supported")
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if d.get(f.name) is not None}
        kw.pop("num_labels", None)
        if any("ForSequenceClassification" in a for a in d.get("architectures") or []):
            kw["num_labels"] = len(d.get("id2label") or {}) or 2  # HF's default is 2 labels
        if "rope_theta" in rope:
            kw["rope_theta"] = rope["rope_theta"]
        for k in ("bos_token_id", "eos_token_id"):
            if isinstance(kw.get(k), list):  # Llama 3 lists several end tokens
                kw[k] = kw[k][0]
        kw.setdefault("num_key_value_heads", kw.get("num_attention_heads", 4))
        kw.setdefault("tie_word_embeddings", d.get("tie_word_embeddings", True))
        cfg = cls(**kw)
        cfg.validate(where)
        return cfg

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_hf(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: missing (a model directory needs config.json)") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if name not in d:
                raise ConfigError(f"{path}: field '{name}' is missing")
        return cls.from_hf(d, where=str(path))


def _llama(dim: int, layers: int, heads: int, kv: int, ffn: int, ctx: int, vocab: int, tie: bool):
    return dict(
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=ffn,
        max_position_embeddings=ctx,
        vocab_size=vocab,
        tie_word_embeddings=tie,
    )


# Named shapes. The small ones fit a 2-core CPU; the stories* ones are llama2.c's TinyStories
# models (Karpathy 2023), the reference shapes for inference benchmarks.
PRESETS: dict[str, dict] = {
    "nano": _llama(128, 4, 4, 4, 384, 256, 2048, True),  # ~1M params, tests and quick looks
    "micro": _llama(192, 6, 6, 2, 512, 256, 4096, True),  # the CPU default
    "small": _llama(384, 8, 6, 2, 1024, 512, 8192, True),
    "stories15M": _llama(288, 6, 6, 6, 768, 256, 32000, True),
    "stories42M": _llama(512, 8, 8, 8, 1376, 1024, 32000, True),
    "stories110M": _llama(768, 12, 12, 12, 2048, 1024, 32000, True),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = ModelConfig(**{**PRESETS[name], **overrides})
    cfg.validate(f"preset {name}")
    return cfg


def list_presets(_=None) -> None:
    """`llmos presets`: every named shape and its parameter count."""
    for name in PRESETS:
        c = preset(name)
        print(
            f"{name:12s} {c.n_params / 1e6:7.2f}M params  layers {c.num_hidden_layers:2d}  "
            f"width {c.hidden_size:4d}  heads {c.num_attention_heads}/{c.num_key_value_heads}  "
            f"ctx {c.max_position_embeddings}  vocab {c.vocab_size}"
        )
