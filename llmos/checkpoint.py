"""Model directories (a Hugging Face Llama checkpoint) and training state, written atomically.

A model directory holds config.json, model.safetensors (HF names), tokenizer.json,
tokenizer_config.json and generation_config.json. Training state (optimizer, step, data
position, RNG) lives beside it in train_state.pt, never inside the weights. Every file is
written to a temporary name and renamed, so a crash mid-write leaves the previous file intact.

A training run's checkpoint is one unit (`save_checkpoint`): the weights and the training state
of a step are written into `checkpoints/step-N/` under a temporary name, the directory is
renamed into place, and then one symlink, `checkpoint`, is swapped to point at it. The run
directory's `model.safetensors` and `train_state.pt` are fixed symlinks through `checkpoint`,
so a reader (and a kill -9 at any instant) always sees weights and state of the same step, and
the run directory stays a model directory that transformers, llama.cpp's converter and
`llmos sample` load as they are.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llmos.common import LlmosError, atomic_write, atomic_write_text
from llmos.config import ModelConfig
from llmos.model import RewardModel, Transformer, rope_tables
from llmos.tokenizer import Tokenizer


class CheckpointError(LlmosError):
    """A model directory llmos cannot load; the message names the file and the tensor."""


def save_weights(model: Transformer, path: str | Path, metadata: dict | None = None) -> None:
    """model.safetensors with HF names; a tied lm_head is left out, as transformers does."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    meta = {"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


def save_model_dir(model: Transformer, tok: Tokenizer, out: str | Path, step: int = 0) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / "model.safetensors", {"step": step})
    _save_model_files(model.cfg, tok, out)


def _save_model_files(cfg: ModelConfig, tok: Tokenizer, out: Path) -> None:
    """Everything of a model directory but the weights (the same at every step)."""
    cfg.save(out / "config.json")
    tok.save(out, model_max_length=cfg.max_position_embeddings)
    gen = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "do_sample": True,
        "temperature": 0.8,
        "top_p": 0.95,
    }
    atomic_write_text(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")


def read_tensors(model_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors of model.safetensors (or a sharded index) and the first file's metadata."""
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    files = (
        sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()})
        if index.exists()
        else [d / "model.safetensors"]
    )
    tensors, meta = {}, {}
    for path in files:
        if not path.exists():
            raise CheckpointError(f"{path}: missing (a model directory needs model.safetensors)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = meta or (f.metadata() or {})
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(
                f"{path}: unreadable or truncated safetensors file ({e})"
            ) from None
    return tensors, meta


def load_model(
    model_dir: str | Path, dtype: torch.dtype = torch.float32, reward: bool = False
) -> Transformer:
    """A Transformer from any Llama-format model directory, checking every tensor's shape;
    with `reward`, the RewardModel of a LlamaForSequenceClassification directory."""
    d = Path(model_dir)
    cfg = ModelConfig.load(d / "config.json")
    if bool(cfg.num_labels) != reward:
        what = (
            "a reward model (LlamaForSequenceClassification)"
            if cfg.num_labels
            else "a language model"
        )
        want = "a language model" if not reward else "a reward model (`llmos rm` makes one)"
        raise CheckpointError(f"{d}: {what}, but this command needs {want}")
    tensors, _ = read_tensors(d)
    with torch.device("meta"):
        model = RewardModel(cfg) if reward else Transformer(cfg)
    expected = model.state_dict()
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    where = d / "model.safetensors"
    for name, t in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{where}: tensor '{name}' is missing")
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{where}: tensor '{name}' has shape {tuple(tensors[name].shape)}, but "
                f"{d / 'config.json'} implies {tuple(t.shape)}"
            )
    sd = {k: tensors[k].to(dtype) for k in expected}
    model.load_state_dict(sd, strict=False, assign=True)
    if cfg.tie_word_embeddings and not reward:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Buffers made on the meta device hold no values: compute the rotary tables for real.
    model.rope_cos, model.rope_sin = rope_tables(cfg, cfg.max_position_embeddings)
    return model.eval()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _symlink(target: str, link: Path) -> None:
    """Point `link` at `target`, atomically: a new link under a temporary name renamed over."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def save_checkpoint(model: Transformer, tok: Tokenizer, out: str | Path, state: dict) -> None:
    """One step's weights and training state as one unit (see the module's docstring)."""
    out = Path(out)
    step = state["step"]
    name = f"step-{step:07d}"
    steps = out / "checkpoints"
    steps.mkdir(parents=True, exist_ok=True)
    if (steps / name).exists():  # this step is saved already (a stop right after a save)
        return
    _save_model_files(model.cfg, tok, out)  # the same at every step: before the first link
    tmp = steps / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model, tmp / "model.safetensors", {"step": step})
    atomic_write(tmp / "train_state.pt", lambda f: torch.save(state, f))
    _fsync(tmp)
    os.rename(tmp, steps / name)  # the step is complete on disk ...
    _fsync(steps)
    _symlink(f"checkpoints/{name}", out / "checkpoint")  # ... and now it is the checkpoint
    for f in ("model.safetensors", "train_state.pt"):
        if not (out / f).is_symlink():  # first checkpoint (or a run from before this layout)
            _symlink(f"checkpoint/{f}", out / f)
    _fsync(out)
    for old in steps.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def clean_partial_writes(out: str | Path) -> list[Path]:
    """Remove what a killed write left in a run directory (temporary files, a step directory
    never renamed into place, steps no longer pointed at); returns what was removed."""
    out = Path(out)
    current = (out / "checkpoint").resolve() if (out / "checkpoint").is_symlink() else None
    gone = [*out.glob(".*.tmp"), *(out / "checkpoints").glob(".*.tmp")]
    gone += [d for d in (out / "checkpoints").glob("step-*") if d.resolve() != current]
    for p in gone:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return gone


def load_state(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable training state ({e})") from None
