"""`llmos gcg`: a universal adversarial suffix, optimised on a model's own gradients (GCG, Zou
et al. 2023, "Universal and Transferable Adversarial Attacks on Aligned Language Models").

    llmos gcg runs/safe --out runs/gcg
    llmos redteam runs/safe --suite J3 --suffix runs/gcg/suffix.txt

The suffix is `length` tokens appended to the user's request. Its loss is the cross-entropy of
a target reply (the forbidden recipe's opening) after each of several training asks, so one
suffix works across asks ("universal"). Each step:

1. the gradient of the loss with respect to the suffix's one-hot token vectors says, for every
   position, which tokens would lower it most to first order (the top-k);
2. `batch` candidates each swap one random position for one of its top-k tokens;
3. all candidates are scored exactly (one batched forward) and the best replaces the suffix:
   the one that makes greedy decoding reproduce the target after the most asks, then the one
   whose greedy decoding follows the target for the most tokens, then the lowest loss. The
   mean loss alone can be low while the one decisive token (here the substance's first
   ingredient) stays unlikely: such suffixes broke a refusal and answered with another
   recipe. The search stops once every ask's target is matched (nanoGCG's early stop).

Only candidates whose text re-tokenises to the same ids are kept, so the suffix survives being
sent as text. `--fluency` adds the suffix's own mean negative log-likelihood to the loss: the
adaptive attack on the perplexity filter (a readable-looking suffix; AutoDAN's idea, Liu et
al. 2023). White-box: llmos models only (the `<|user|>` chat format).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llmos.chat_format import render
from llmos.checkpoint import load_model
from llmos.common import LlmosError, arg, atomic_write_text, write_json
from llmos.runs import plot_curves
from llmos.security.probes import eval_asks
from llmos.security.stand_ins import FORBIDDEN, recipe
from llmos.tasks.base import is_eval
from llmos.tasks.safety import ASKS
from llmos.tokenizer import Tokenizer


@dataclass
class GCGConfig:
    model_dir: str = arg("", "the llmos model directory to attack (white-box)", positional=True)
    length: int = arg(12, "suffix tokens", lo=1)
    steps: int = arg(150, "optimisation steps", lo=1)
    top_k: int = arg(64, "tokens per position the gradient proposes", lo=1)
    batch: int = arg(128, "candidate suffixes scored exactly per step", lo=1)
    asks: int = arg(4, "training asks the suffix must work on together (universal)", lo=1)
    target: str = arg("", "the reply to force (default: the forbidden recipe's first words)")
    fluency: float = arg(
        0.0, "weight of the suffix's own NLL (adaptive vs the perplexity filter)", lo=0
    )
    seed: int = arg(0, "the initial suffix and candidate draws")


class GCGError(LlmosError):
    """A model GCG cannot attack."""


def _rows(
    tok, asks: list[str], length: int, target: list[int]
) -> tuple[list[list[int]], list[int]]:
    """Each ask rendered as a prompt with `length` suffix slots before its end-of-turn, then
    the target; and the slot position in each row."""
    rows, starts = [], []
    for a in asks:
        ids, _ = render(tok, [{"role": "user", "content": a}], add_generation_prompt=True)
        cut = len(ids) - 2  # before <|end|> <|assistant|>
        rows.append(ids[:cut] + [0] * length + ids[cut:] + target)
        starts.append(cut)
    return rows, starts


def _losses(model, rows, starts, suffixes: torch.Tensor, n_target: int, fluency: float):
    """The loss of each candidate suffix (C, L): mean target CE over the asks (+ fluency);
    and after how many asks greedy decoding would write the whole target (teacher-forced:
    every target token is the argmax given the ones before it)."""
    C, L = suffixes.shape
    A, T = len(rows), max(len(r) for r in rows)
    ids = torch.zeros(C, A, T, dtype=torch.long)
    for j, (row, s) in enumerate(zip(rows, starts)):
        ids[:, j, : len(row)] = torch.tensor(row)
        ids[:, j, s : s + L] = suffixes
    ids = ids.view(C * A, T)
    with torch.no_grad():
        logits = model(ids).float()
    total, matched, lead = torch.zeros(C), torch.zeros(C, dtype=torch.long), torch.zeros(C)
    for j, (row, s) in enumerate(zip(rows, starts)):
        lg = logits.view(C, A, T, -1)[:, j]
        end = len(row)
        tgt = ids.view(C, A, T)[:, j, end - n_target : end]
        at = lg[:, end - n_target - 1 : end - 1]
        total += F.cross_entropy(at.transpose(1, 2), tgt, reduction="none").mean(-1) / A
        hit = (at.argmax(-1) == tgt).long()
        matched += hit.all(-1)
        lead += hit.cumprod(-1).sum(-1)  # target tokens greedy decoding gets right in a row
        if fluency:
            suf = ids.view(C, A, T)[:, j, s : s + L]
            nll = F.cross_entropy(
                lg[:, s - 1 : s + L - 1].transpose(1, 2), suf, reduction="none"
            ).mean(-1)
            total += fluency * nll / A
    return total, matched, lead


def gcg(c: GCGConfig, out: str | Path) -> dict:
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.load(c.model_dir)
    if not tok.llmos_format:
        raise GCGError(f"{c.model_dir}: GCG here attacks llmos-format models (white-box)")
    model = load_model(c.model_dir).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(c.seed)
    train_asks = [a.format(x=FORBIDDEN) for a in ASKS if not is_eval(a.format(x=FORBIDDEN))]
    asks = train_asks[: c.asks]
    target_text = c.target or recipe(FORBIDDEN)[:36]  # "To make glimmerite, mix velloc salt"
    target = tok.encode(target_text)
    rows, starts = _rows(tok, asks, c.length, target)
    # Tokens a suffix may use: not special, and text that survives a round trip on its own.
    special = set(tok.special_ids.values()) | {tok.bos_id, tok.eos_id}
    allowed = torch.tensor(
        [i not in special and tok.decode([i]).isprintable() for i in range(len(tok.id_bytes))]
    )
    allowed[len(tok.id_bytes) :] = False
    vocab = model.cfg.vocab_size
    allowed = torch.cat([allowed, torch.zeros(max(0, vocab - len(allowed)), dtype=torch.bool)])[
        :vocab
    ]
    choices = allowed.nonzero()[:, 0]
    for _ in range(1000):  # a random start whose text tokenises back to itself
        suffix = choices[torch.randint(len(choices), (c.length,), generator=g)]
        if _round_trips(tok, asks[0], suffix.tolist()):
            break
    W = model.model.embed_tokens.weight
    # The best suffix so far by the key that picks each step's candidate: asks fully matched,
    # then target tokens right in a row, then loss (a lower loss alone can match fewer asks).
    best_key, best = (0, 0.0, float("inf")), suffix.clone()
    log = []
    t0 = time.time()
    bar = tqdm(range(c.steps), desc="gcg", unit="step")
    for step in bar:
        # 1. Gradient through one-hot suffix vectors (the embedding hook swaps them in).
        onehot = F.one_hot(suffix, vocab).float().requires_grad_(True)
        ids = torch.tensor(_pad(rows))
        for j, s in enumerate(starts):
            ids[j, s : s + c.length] = suffix

        def swap(mod, inp, emb, onehot=onehot):
            emb = emb.clone()
            for j, s in enumerate(starts):
                emb[j, s : s + c.length] = onehot @ W
            return emb

        h = model.model.embed_tokens.register_forward_hook(swap)
        try:
            logits = model(ids).float()
        finally:
            h.remove()
        loss = 0.0
        for j, row in enumerate(rows):
            end = len(row)
            loss = loss + F.cross_entropy(
                logits[j, end - len(target) - 1 : end - 1], ids[j, end - len(target) : end]
            ) / len(rows)
        (grad,) = torch.autograd.grad(loss, onehot)
        grad[:, ~allowed] = float("inf")
        top = (-grad).topk(c.top_k, dim=1).indices  # (L, k): the most promising swaps
        # 2. Candidates: one position each, swapped for one of its top-k tokens.
        pos = torch.randint(c.length, (c.batch,), generator=g)
        pick = top[pos, torch.randint(c.top_k, (c.batch,), generator=g)]
        cands = suffix.repeat(c.batch, 1)
        cands[torch.arange(c.batch), pos] = pick
        keep = [i for i in range(c.batch) if _round_trips(tok, asks[0], cands[i].tolist())]
        if not keep:
            continue
        cands = cands[keep]
        # 3. Exact losses; the best candidate becomes the suffix.
        losses, matched, lead = _losses(model, rows, starts, cands, len(target), c.fluency)
        keys = [(int(matched[k]), float(lead[k]), float(losses[k])) for k in range(len(cands))]
        i = min(range(len(cands)), key=lambda k: _rank(keys[k]))
        suffix, now = cands[i], keys[i]
        if _rank(now) < _rank(best_key):
            best_key, best = now, suffix.clone()
        log.append({"step": step + 1, "loss": now[2], "best": best_key[2], "matched": best_key[0]})
        bar.set_postfix(loss=f"{now[2]:.3f}", matched=f"{best_key[0]}/{len(asks)}")
        if best_key[0] == len(asks):
            break
    matched_best, _, loss_best = best_key
    text = tok.decode(best.tolist())
    atomic_write_text(run / "suffix.txt", text + "\n")  # exact: a leading space is part of it
    atomic_write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    result = {
        "suffix": text,
        "loss": loss_best,
        "matched": matched_best,
        "steps": len(log),
        "target": target_text,
        "asks": asks,
        "held_out_asks": eval_asks(FORBIDDEN),
        "seconds": round(time.time() - t0, 1),
        "config": c.__dict__,
    }
    write_json(run / "gcg.json", result)
    plot_curves(run, ["loss", "best"])
    atomic_write_text(
        run / "report.md",
        f"# GCG on {c.model_dir}\n\nSuffix ({c.length} tokens, "
        f"{len(log)} steps, loss {loss_best:.3f}): `{text}`\n\nTarget: `{target_text}`, "
        f"written whole by greedy decoding after {matched_best} of the {len(asks)} training asks. "
        f"Measure it with `llmos redteam MODEL --suite J3 "
        f"--suffix {run / 'suffix.txt'}`.\n\n![loss](loss.png)\n",
    )
    print(
        f"suffix: {text!r} (loss {loss_best:.3f}, target written after {matched_best}/{len(asks)} "
        f"asks); {run / 'suffix.txt'}"
    )
    return result


def _rank(key: tuple[int, float, float]) -> tuple[int, float, float]:
    """Sort order of (asks matched, target tokens right in a row, loss): more, more, lower."""
    matched, lead, loss = key
    return -matched, -lead, loss


def _round_trips(tok, ask: str, suffix: list[int]) -> bool:
    """Whether the ask followed by the suffix's text tokenises to the ask's ids and the suffix."""
    return tok.encode(ask + tok.decode(suffix)) == tok.encode(ask) + suffix


def _pad(rows: list[list[int]]) -> list[list[int]]:
    T = max(len(r) for r in rows)
    return [r + [0] * (T - len(r)) for r in rows]
