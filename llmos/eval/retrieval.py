"""`llmos retrieval-eval`: recall@k and MRR of BM25, dense and hybrid retrieval on questions
generated from a real document collection (Python's own reST documentation by default:
Debian's `python3.11-doc`).

The questions are made the way the inverse cloze task makes them (Lee et al. 2019, ORQA): an
API entry of the docs (`.. function:: gcd(*integers)`) is followed by a description whose first
sentence ("Return the greatest common divisor of the specified integer arguments.") becomes
the question, and that sentence is *removed* from the collection before indexing (its line
left blank, so line numbers hold). The right answer is any chunk holding the entry's
directive line: the retriever has to match a description to the entry it describes from the
rest of the text, not find the sentence itself. Questions of fewer than 6 words are skipped.

    llmos retrieval-eval --n 300 --out runs/retrieval
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from llmos.agent.files import Index, IndexConfig, build_index
from llmos.common import LlmosError, arg, atomic_write_text, write_json, write_jsonl

PYTHON_DOCS = "/usr/share/doc/python3.11-doc/html/_sources/library"
DIRECTIVE = re.compile(r"^\.\. (function|method|class|exception)::\s+(\S.*)$")
ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")  # :func:`x` -> x


@dataclass
class RetrievalEvalConfig:
    docs: str = arg(PYTHON_DOCS, "a directory of reST files with API entries (.rst / .rst.txt)")
    n: int = arg(300, "questions to ask (sampled from every entry with a description)", lo=1)
    seed: int = arg(0, "which questions")
    chunk_chars: int = arg(1000, "characters per chunk", lo=100)
    overlap_chars: int = arg(200, "characters a chunk repeats from the one before", lo=0)


def plain(text: str) -> str:
    """reST inline markup as a reader would say it: roles and literals without the marks."""
    return " ".join(ROLE.sub(r"\1", text).replace("``", "").replace("*", "").split())


def api_questions(files: dict[str, list[str]]) -> list[dict]:
    """Every API entry with a described first sentence: {"file", "line" (the directive's,
    1-based), "blank" (0-based lines the sentence spans), "question"}."""
    out = []
    for rel, lines in files.items():
        for i, ln in enumerate(lines):
            if not DIRECTIVE.match(ln):
                continue
            j = i + 1  # skip the entry's options and further signatures to its first paragraph
            while j < len(lines) and (
                not lines[j].strip()
                or lines[j].strip().startswith(":")
                or DIRECTIVE.match(lines[j].strip())
                or lines[j].startswith(" " * 3 + " " * 9)  # a continued signature line
            ):
                j += 1
            para = []
            while j + len(para) < len(lines) and lines[j + len(para)].startswith("   "):
                if not lines[j + len(para)].strip():
                    break
                para.append(lines[j + len(para)].strip())
            text = " ".join(para)
            m = re.match(r"(.+?[.!?])(\s|$)", text)
            if not para or not m or text.startswith(".."):
                continue
            sentence = m.group(1)
            # The lines the sentence spans: up to the line where its end falls.
            span, seen = [], 0
            for k, p in enumerate(para):
                span.append(j + k)
                seen += len(p) + 1
                if seen >= len(sentence):
                    break
            q = plain(sentence)
            if len(q.split()) >= 6:
                out.append({"file": rel, "line": i + 1, "blank": span, "question": q})
    return out


def retrieval_eval(c: RetrievalEvalConfig, out: str | Path) -> dict:
    """Write the collection with the questions' sentences blanked, index it, and measure
    recall@1/5/10 and MRR (of the first right chunk, within the top 100) for each ranking."""
    docs, run = Path(c.docs), Path(out)
    paths = sorted(p for p in docs.rglob("*") if p.name.endswith((".rst", ".rst.txt")))
    if not paths:
        raise LlmosError(f"{docs}: no .rst or .rst.txt files (apt-get install python3.11-doc)")
    files = {p.relative_to(docs).as_posix(): p.read_text(errors="replace").split("\n")
             for p in paths}  # fmt: skip
    pool = api_questions(files)
    if not pool:
        raise LlmosError(f"{docs}: no API entries with a description to ask about")
    qs = random.Random(c.seed).sample(pool, min(c.n, len(pool)))
    for q in qs:  # the blanked lines stay as empty lines: line numbers hold
        for k in q["blank"]:
            files[q["file"]][k] = ""
    corpus = run / "corpus"
    for rel, lines in files.items():
        dest = corpus / rel.removesuffix(".txt")  # .rst: what a person's docs folder holds
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("\n".join(lines))
    t = time.monotonic()
    build_index(IndexConfig(str(corpus), str(run / "index"), c.chunk_chars, c.overlap_chars))
    index_s = time.monotonic() - t
    index = Index.load(run / "index")
    rows = {}
    for mode in ("bm25", "dense", "hybrid"):
        t = time.monotonic()
        ranks = []
        for q in qs:
            file = q["file"].removesuffix(".txt")
            ranked = index.rank(q["question"], mode)
            right = [
                r for r, i in enumerate(ranked)
                if index.chunks[i]["file"] == file
                and index.chunks[i]["start"] <= q["line"] <= index.chunks[i]["end"]
            ]  # fmt: skip
            ranks.append(right[0] + 1 if right else None)
        rows[mode] = {
            **{
                f"recall@{k}": sum(r is not None and r <= k for r in ranks) / len(qs)
                for k in (1, 5, 10, 100)
            },  # fmt: skip
            "mrr": sum(1 / r for r in ranks if r) / len(qs),
            "ms_per_query": 1000 * (time.monotonic() - t) / len(qs),
        }
    result = {"questions": len(qs), "entries": len(pool), "files": len(files),
              "chunks": len(index.chunks), "index_seconds": round(index_s, 1), "modes": rows,
              "config": vars(c)}  # fmt: skip
    write_json(run / "metrics.json", result)
    write_jsonl(run / "questions.jsonl", qs)
    _plot(run, rows)
    _report(run, result, qs)
    print(f"{len(qs)} questions over {len(files)} files ({len(index.chunks)} chunks):")
    for mode, r in rows.items():
        print(f"  {mode:6s} recall@5 {r['recall@5']:.1%}  MRR {r['mrr']:.3f}")
    return result


def _plot(run: Path, rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = [1, 5, 10, 100]
    for mode, r in rows.items():
        ax.plot(
            ks, [r[f"recall@{k}"] for k in ks], marker="o", label=f"{mode} (MRR {r['mrr']:.2f})"
        )
    ax.set(xscale="log", xlabel="k", ylabel="recall@k", ylim=(0, 1), title="Retrieval")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "recall.png", dpi=120)
    plt.close(fig)


def _report(run: Path, r: dict, qs: list[dict]) -> None:
    lines = [
        "# Retrieval: BM25, dense and hybrid\n",
        f"{r['questions']} questions (of {r['entries']} API entries with a description) over "
        f"{r['files']} files, {r['chunks']} chunks of {r['config']['chunk_chars']} characters "
        f"(overlap {r['config']['overlap_chars']}); index built in {r['index_seconds']} s. Each "
        "question is an entry's first sentence, removed from the collection; a hit is a chunk "
        "holding the entry's directive line.\n",
        "| ranking | recall@1 | recall@5 | recall@10 | MRR | ms/query |",
        "|---|---|---|---|---|---|",
        *(f"| {m} | {x['recall@1']:.1%} | {x['recall@5']:.1%} | {x['recall@10']:.1%} | "
          f"{x['mrr']:.3f} | {x['ms_per_query']:.1f} |" for m, x in r["modes"].items()),
        "\n![recall](recall.png)\n",
        "Example questions:\n",
        *(f"- {q['question']} → `{q['file']}:{q['line']}`" for q in qs[:5]),
    ]  # fmt: skip
    atomic_write_text(run / "report.md", "\n".join(lines) + "\n")
