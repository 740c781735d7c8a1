"""Speculative decoding: speedup and acceptance per draft, against the target decoding alone.

Targets and drafts, measured in the same run (greedy, batch 1, best of 3; every speculative
output is checked token for token against the target's own):

- SmolLM2-135M-Instruct (`llmos pull smollm2`) with prompt lookup, and with a draft distilled
  from it here: a `micro` llmos model (~12M parameters) pretrained with SmolLM2's tokenizer on
  SmolLM2's own chat answers (`--distill-steps`, a few minutes; kept in the llmos cache).
- a speedrun's assistant (`--speedrun DIR`, e.g. runs/speedrun) with the speedrun's base as the
  draft (the same size: it shows acceptance, not speed) and with prompt lookup.

Two workloads: "quote" (answer from a passage in the prompt: copying, where prompt lookup
shines) and "chat" (an open question: little to copy).

    python bench/speculative.py [--speedrun runs/speedrun] [--k 4] [--new-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from llmos.chat_format import render
from llmos.checkpoint import load_model
from llmos.common import cache_dir, set_threads
from llmos.convert import pull
from llmos.infer.engine import Engine, SamplingConfig
from llmos.infer.speculative import ModelDraft, PromptLookup, Speculative
from llmos.tokenizer import Tokenizer
from llmos.train.pretrain import PretrainConfig, pretrain
from llmos.train.sft import SFTConfig, sft

PASSAGE = (
    "The lighthouse at Kerran Point was built in 1867 from granite quarried on the island. "
    "Its lamp burned paraffin until 1931, when it was converted to electricity, and the last "
    "keeper, Ada Morrow, left in 1989 when the light became automatic. The tower is 34 metres "
    "tall and its beam can be seen 22 nautical miles out to sea."
)
WORKLOADS = {
    "quote": f"{PASSAGE}\n\nUsing only the text above, say when the lighthouse was built, "
    "what its lamp burned, and who the last keeper was.",
    "chat": "Give me three tips for keeping houseplants healthy in winter.",
}
TOPICS = ("rivers bees volcanoes bread bicycles tides libraries clouds glass coffee maps "
          "violins trains gardens owls salt bridges paper kites moss deserts whales chess "
          "candles rain forests harbours clocks wool copper lanterns orchards").split()  # fmt: skip
ASKS = ["Write a short paragraph about {t}.", "Explain how {t} work to a child.",
        "List three surprising facts about {t}.", "What should a beginner know about {t}?",
        "Summarise the history of {t} in a few sentences."]  # fmt: skip


def timed_tokens(fn) -> tuple[list[int], float]:
    t = time.perf_counter()
    ids = fn()
    return ids, time.perf_counter() - t


def measure(target: Engine, draft, prompt: list[int], n: int, k: int, runs: int = 3) -> dict:
    s = SamplingConfig(temperature=0, max_new_tokens=n)
    alone_ids, alone = min(
        (
            timed_tokens(lambda: target.generate([prompt], s, frozenset())[0].ids)
            for _ in range(runs)
        ),
        key=lambda x: x[1],
    )
    best, spec = None, None
    for _ in range(runs):
        spec = Speculative(target, draft, k)
        ids, t = timed_tokens(lambda sp=spec: [x for x, _, _ in sp.stream(prompt, s, frozenset())])
        assert ids == alone_ids, "speculative greedy output differs from the target's"
        best = t if best is None else min(best, t)
    return {"alone_tok_s": n / alone, "spec_tok_s": n / best, "speedup": alone / best,
            "acceptance": spec.acceptance, "tokens_per_pass": n / spec.passes}  # fmt: skip


def distilled_draft(smollm2: Path, steps: int, samples: int) -> Path:
    """A micro llmos model with SmolLM2's tokenizer, pretrained on SmolLM2's chat answers and
    then fine-tuned on them as conversations. Pretraining reads text, where "<|im_start|>" is
    characters, never the special token (so text cannot forge the template); alone, the draft
    never saw the target's real template tokens and 3-4% of its guesses were accepted."""
    out = cache_dir() / f"bench-draft-smollm2-{steps}-sft"
    if (out / "model.safetensors").exists():
        return out
    corpus = cache_dir() / f"bench-draft-smollm2-{samples}.jsonl"
    if not corpus.exists():
        tok = Tokenizer.load(smollm2)
        engine = Engine(load_model(smollm2), tok)
        r = random.Random(0)
        prompts = [a.format(t=t) for t in TOPICS for a in ASKS]
        r.shuffle(prompts)
        rows, t0 = [], time.time()
        s = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=200, seed=0)
        for i in range(0, min(samples, len(prompts) * 4), 32):
            batch = [prompts[(i + j) % len(prompts)] for j in range(32)]
            ids = [render(tok, [{"role": "user", "content": p}], add_generation_prompt=True)[0]
                   for p in batch]  # fmt: skip
            for p, c in zip(ids, engine.generate(ids, s)):
                rows.append({"text": tok.decode(p + c.ids)})
            print(f"distill: {len(rows)} answers from SmolLM2, {time.time() - t0:.0f} s")
        corpus.write_text("".join(json.dumps(x) + "\n" for x in rows))
    c = PretrainConfig(preset="micro", corpus=str(corpus), tokenizer=str(smollm2),
                       max_steps=steps, batch_size=16, eval_every=steps)  # fmt: skip
    base = cache_dir() / f"bench-draft-smollm2-{steps}"
    if not (base / "model.safetensors").exists():
        pretrain(c, base)
    conversations = corpus.with_suffix(".conversations.jsonl")
    with conversations.open("w") as f:
        for line in corpus.read_text().splitlines():
            text = json.loads(line)["text"]
            user = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
            answer = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
            turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": turns}) + "\n")
    return sft(SFTConfig(base=str(base), data=f"{conversations}:1", max_steps=300), out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speedrun", default="", help="a speedrun run dir (with base/ and assistant/)")
    ap.add_argument("--k", type=int, default=4, help="tokens guessed per target pass")
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--distill-steps", type=int, default=600, help="0: no distilled draft")
    ap.add_argument("--distill-samples", type=int, default=480)
    a = ap.parse_args()
    set_threads()
    rows = []
    smollm2 = cache_dir() / "bench-smollm2"
    if not (smollm2 / "config.json").exists():
        pull("smollm2", smollm2)
    pairs = [("SmolLM2-135M", smollm2, None), ("SmolLM2-135M", smollm2, "lookup")]
    if a.distill_steps:
        pairs.append(("SmolLM2-135M", smollm2, distilled_draft(smollm2, a.distill_steps,
                                                               a.distill_samples)))  # fmt: skip
    if a.speedrun:
        sr = Path(a.speedrun)
        pairs += [
            ("speedrun assistant", sr / "assistant", sr / "base"),
            ("speedrun assistant", sr / "assistant", "lookup"),
        ]
    engines: dict[Path, Engine] = {}

    def engine(d: Path) -> Engine:
        if d not in engines:
            engines[d] = Engine(load_model(d), Tokenizer.load(d))
        return engines[d]

    for name, target_dir, draft_dir in pairs:
        if draft_dir is None:
            continue
        target = engine(target_dir)
        draft = PromptLookup() if draft_dir == "lookup" else ModelDraft(engine(draft_dir))
        label = "prompt lookup" if draft_dir == "lookup" else f"model {Path(draft_dir).name}"
        for work, text in WORKLOADS.items():
            prompt = render(
                target.tok, [{"role": "user", "content": text}], add_generation_prompt=True
            )[0]
            n = min(a.new_tokens, target.model.cfg.max_position_embeddings - len(prompt) - a.k - 2)
            r = measure(target, draft, prompt, n, a.k)
            rows.append({"target": name, "draft": label, "workload": work, "tokens": n, **r})
            print(json.dumps(rows[-1]))
    print("\n| target | draft | workload | alone tok/s | speculative tok/s | speedup | "
          "acceptance | tokens/pass |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(f"| {r['target']} | {r['draft']} | {r['workload']} | {r['alone_tok_s']:.0f} | "
              f"{r['spec_tok_s']:.0f} | {r['speedup']:.2f}x | {r['acceptance']:.0%} | "
              f"{r['tokens_per_pass']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
