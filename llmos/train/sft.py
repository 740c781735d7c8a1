"""Supervised fine-tuning: from a document generator to an assistant.

Conversations (task generators or users' `{"messages"}` JSONL) are rendered to ids plus a loss
mask (assistant tokens only) and packed into rows of the context length; packed conversations
restart their positions and never attend to each other (model.packed_rope_and_mask). The loop,
checkpoints, resume and run directory are pretraining's (train/loop.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmos import runs
from llmos.chat_format import render
from llmos.checkpoint import load_model
from llmos.common import arg, atomic_write_text, dist_info, is_main
from llmos.data.corpora import CorpusError, is_val
from llmos.data.shards import EpochOrder
from llmos.eval.tasks import heldout
from llmos.tasks import mixture
from llmos.tokenizer import Tokenizer
from llmos.train import lora
from llmos.train.loop import TrainConfig, check_start, to_device, train_loop
from llmos.train.lora import add_lora, merged


@dataclass
class SFTConfig(TrainConfig):
    base: str = arg("", "the model directory to start from", positional=True)
    data: str = arg(
        "identity:1,arithmetic:3,spelling:1",
        "tasks and JSONL files of conversations, comma-separated name[:weight]",
    )
    task_size: int = arg(1000, "conversations a task generates per unit of weight", lo=1)
    seq_len: int = arg(
        0,
        "packed row length; 0: the model's context, at most 1024; longer than the context "
        "trains the positions past it and saves the longer context",
        lo=0,
    )
    val_fraction: float = arg(
        0.05, "share of the conversations held out for the val loss", lo=0, hi=0.9
    )
    lora_rank: int = lora.rank_arg()
    lora_alpha: float = lora.alpha_arg()
    eval_task: str = arg(
        "",
        "a task whose held-out questions each eval also scores: greedy accuracy, and pass@1 "
        "and pass@k from --eval-k samples at temperature 1 (curves of what fine-tuning teaches)",
    )
    eval_n: int = arg(50, "held-out questions of --eval-task", lo=1)
    eval_k: int = arg(8, "samples per question of --eval-task for pass@k", lo=1)
    # Fine-tuning defaults (help as in TrainConfig): a shorter run on a pretrained model.
    batch_size: int = 8
    max_steps: int = 300
    lr: float = 1e-3
    min_lr_ratio: float = 0.0
    warmup_steps: int = 20
    weight_decay: float = 0.0
    eval_windows: int = 16


class PackedLoader:
    """(inputs, targets, segments) rows of packed conversations, shuffled per epoch.

    Conversations are short and of every length; padding each to the context would spend most
    of the compute on padding. Packing fills each row with whole conversations one after
    another: segment k of a row is its k-th conversation, and the model restarts positions and
    blocks attention at segment boundaries (model.packed_rope_and_mask), so a packed
    conversation trains exactly as it would alone. A conversation that does not fit in what is
    left of a row starts the next row (it is never split), so the state is just the position in
    the shuffled order, as for pretraining's TokenLoader."""

    def __init__(
        self,
        rendered: list[tuple[list[int], list[int]]],
        batch_size: int,
        seq_len: int,
        pad_id: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        # A row holds seq_len inputs plus one more token for the last target; longer
        # conversations are cut to that (their end is not learned).
        self.items = [(ids[: seq_len + 1], mask[: seq_len + 1]) for ids, mask in rendered]
        self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
        self.order = EpochOrder(len(self.items), seed, rank, world)

    def state(self) -> dict:
        return self.order.state()

    def load_state(self, state: dict) -> None:
        self.order.load_state(state)

    def next(self):
        T = self.seq_len + 1
        ids = torch.full((self.batch_size, T), self.pad_id)
        learn = torch.zeros((self.batch_size, T), dtype=torch.bool)
        seg = torch.full((self.batch_size, T), -1)
        for row in range(self.batch_size):
            at, k = 0, 0  # where the next conversation goes in the row, and its segment number
            # Take conversations while the next one fits; a row always takes at least one (cut
            # to the row if it is longer).
            while at == 0 or at + len(self.items[self.order.peek()][0]) <= T:
                item_ids, mask = self.items[self.order.next()]
                n = len(item_ids)
                ids[row, at : at + n] = torch.tensor(item_ids)
                learn[row, at : at + n] = torch.tensor(mask, dtype=torch.bool)
                seg[row, at : at + n] = k
                at, k = at + n, k + 1
                if at >= T:
                    break
            # Padding stays segment -1: a segment of its own, attending only to itself. A
            # batch whose rows each hold one conversation (segments 0 and -1 only) then trains
            # with plain causal attention (see Transformer.forward).
        # Targets are the next token where it is an assistant token to learn, else -1
        # (ignored): the model never learns to write the user's, system's or tool's text.
        y = torch.where(learn[:, 1:], ids[:, 1:], -1)
        return ids[:, :-1], y, seg[:, :-1]


def sft(c: SFTConfig, out: str | Path, resume: bool = False, stop_at: int | None = None) -> Path:
    """Fine-tune c.base on c.data into `out` (a model directory and run directory)."""
    out = Path(out)
    if check_start(out, c, resume):
        return out
    t0 = time.time()
    torch.manual_seed(c.seed)
    model, tok = load_model(c.base), Tokenizer.load(c.base)
    say = print if is_main() else (lambda *a: None)  # under torchrun, rank 0 speaks
    if not tok.llmos_format and not tok.chat_template:
        raise CorpusError(f"{c.base}: no chat format (neither llmos's tokens nor a template)")
    convs = mixture(c.data, c.task_size, c.seed)
    train = [r for i, r in enumerate(convs) if not is_val(str(i), c.val_fraction)]
    val = [r for i, r in enumerate(convs) if is_val(str(i), c.val_fraction)] or convs[:1]
    seq_len = c.seq_len or min(model.cfg.max_position_embeddings, 1024)
    if seq_len > model.cfg.max_position_embeddings:
        # Fine-tuning at a longer length teaches the model those positions (RoPE has no table
        # to outgrow: model.py extends it), so the saved model's context is the new length.
        say(f"sft: context {model.cfg.max_position_embeddings} -> {seq_len} (--seq-len)")
        model.cfg.max_position_embeddings = seq_len
    pad = tok.special_ids.get("<|pad|>", tok.eos_id)
    rank, world = dist_info()  # under torchrun each rank packs its share of every batch
    loader = PackedLoader(
        [render(tok, r["messages"], tools=r.get("tools")) for r in train],
        c.batch_size // world,
        seq_len,
        pad,
        c.seed,
        rank,
        world,
    )
    val_rendered = [render(tok, r["messages"], tools=r.get("tools")) for r in val]
    val_rows = PackedLoader(val_rendered, c.batch_size, seq_len, pad, 0)
    val_batches = [
        val_rows.next() for _ in range(max(1, min(c.eval_windows, len(val) // c.batch_size)))
    ]
    say(f"sft: {len(train)} train / {len(val)} val conversations from '{c.data}'; base {c.base}")

    @torch.no_grad()
    def evaluate(model, windows: int | None) -> dict:
        model.eval()
        total, n = 0.0, 0
        dev = next(model.parameters()).device
        for x, y, seg in val_batches:
            x, y, seg = to_device((x, y, seg), dev)
            total += model(x, y, segments=seg, reduction="sum").item()
            n += int((y >= 0).sum())
        out = {"val_loss": total / max(n, 1)}
        if c.eval_task and windows is not None:  # periodic evals (the final one is loss only)
            out |= heldout(export(model), tok, c.eval_task, c.eval_n, c.eval_k, seed=c.seed)
        return out

    export = merged if c.lora_rank > 0 else (lambda m: m)
    if c.lora_rank > 0:
        add_lora(model, c.lora_rank, c.lora_alpha)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        say(f"LoRA rank {c.lora_rank}: training {n:,} adapter parameters")
    model, finished = train_loop(
        c, out, model, tok, loader, evaluate, "sft", resume, stop_at, export=export
    )
    model = export(model)
    if finished and is_main():
        runs.plot_curves(out, ["loss", "val_loss"])
        final = evaluate(model, None)
        text = (
            f"# Fine-tuning report\n\n- base `{c.base}`; data `{c.data}`; {len(train)} train "
            f"conversations; {c.max_steps} steps\n- wall time {(time.time() - t0) / 60:.1f} min\n"
            f"- final val loss (assistant tokens) {final['val_loss']:.3f} "
            f"(perplexity {math.exp(final['val_loss']):.2f})\n\n![loss](loss.png)\n"
        )
        atomic_write_text(out / "report.md", text)
        print(f"val loss {final['val_loss']:.3f}; report in {out}/report.md")
    return out
