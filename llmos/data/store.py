"""What people produce at run time, in one SQLite file: the web chat's conversations, comparison
labels from the labeling page, corrections (a conversation whose answer a person fixed), and
the assistant's memory (what it was asked to remember, and turns paged out of its context),
and red-team findings (the attacks that got through).

A connection per call keeps it thread-safe under uvicorn's workers; each write is one
transaction, so a crash never leaves half a record. Training reads labels and corrections as
data (`--data store:comparisons`, `--data store:corrections`), so this module sits with the
data, below both the server that writes it and the trainers that read it.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmos.common import cache_dir

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    messages TEXT NOT NULL,
    settings TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
)""",
    # One row per labelled prompt: the K answers shown, the ranking (best first; may be partial
    # or empty), the verdict ("ranked", "tie" or "all_bad"), edits ([{index, text}]), who, when,
    # and the model or endpoint that wrote each answer (a column added later: see Store).
    """CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt TEXT NOT NULL,
    answers TEXT NOT NULL,
    ranking TEXT NOT NULL,
    verdict TEXT NOT NULL,
    edited TEXT NOT NULL,
    labeler TEXT NOT NULL,
    created REAL NOT NULL,
    models TEXT NOT NULL DEFAULT '[]'
)""",
    """CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    messages TEXT NOT NULL,
    original TEXT NOT NULL,
    labeler TEXT NOT NULL,
    created REAL NOT NULL
)""",
    # The assistant's long-term memory: one fact a row. `source` says who wrote it ("model":
    # the remember tool; "user": the web UI; "paged": a turn that left the context window),
    # `key` makes a paged turn go in once however often the conversation is re-fitted.
    """CREATE TABLE IF NOT EXISTS memories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    text TEXT NOT NULL,
    source TEXT NOT NULL,
    key TEXT UNIQUE,
    created REAL NOT NULL
)""",
    # Red-team findings: each attack that reached its objective (`llmos redteam`), with the
    # run it came from, the target, the defenses on, and the attempt as sent and answered.
    """CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    target TEXT NOT NULL,
    suite TEXT NOT NULL,
    probe TEXT NOT NULL,
    defenses TEXT NOT NULL,
    attempt TEXT NOT NULL,
    created REAL NOT NULL
)""",
]


def default_path() -> Path:
    return cache_dir() / "chats.sqlite"


def _json(x) -> str:
    # allow_nan=False: only standard JSON goes in, so what is stored always reads back
    return json.dumps(x, ensure_ascii=False, allow_nan=False)


def label_comparisons(label: dict) -> list[tuple[str, str]]:
    """(chosen, rejected) answer texts a label implies.

    A ranking best-first orders its answers (each beats every one after it, and the best beats
    the unranked ones too); an edited answer beats every answer shown (the person wrote what
    the model should have said, the answer they started from included). A tie, or "all bad"
    without an edit, says nothing about order.

    >>> label_comparisons({"answers": ["a", "b", "c"], "ranking": [1, 0], "verdict": "ranked",
    ...                    "edited": []})
    [('b', 'a'), ('b', 'c'), ('a', 'c')]
    """
    answers, ranking = label["answers"], list(label["ranking"])
    out = []
    if label["verdict"] == "ranked" and ranking:
        # Unranked answers come after every ranked one, in no order among themselves.
        rest = [i for i in range(len(answers)) if i not in ranking]
        for a, b in itertools.combinations(ranking, 2):
            out.append((answers[a], answers[b]))
        for a in ranking[:1]:
            out += [(answers[a], answers[b]) for b in rest]
    for e in label["edited"]:
        if e["text"].strip():
            out += [(e["text"], a) for a in answers if a != e["text"]]
    return [(c, r) for c, r in out if c != r]


class Store:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            for table in SCHEMA:
                db.execute(table)
            # A store from before labels had `models` gains it (an old label's answers have
            # no recorded model).
            if "models" not in {r["name"] for r in db.execute("PRAGMA table_info(labels)")}:
                db.execute("ALTER TABLE labels ADD COLUMN models TEXT NOT NULL DEFAULT '[]'")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()

    # -- conversations (the web chat) ----------------------------------------------------------

    def list(self) -> list[dict]:
        with self._db() as db:
            rows = db.execute(
                "SELECT id, title, created, updated FROM conversations ORDER BY updated DESC"
            ).fetchall()
        return [dict(r) for r in rows]

    def get(self, cid: str) -> dict | None:
        with self._db() as db:
            r = db.execute("SELECT * FROM conversations WHERE id = ?", (cid,)).fetchone()
        if r is None:
            return None
        out = dict(r)
        out["messages"], out["settings"] = json.loads(r["messages"]), json.loads(r["settings"])
        return out

    def put(self, cid: str, title=None, messages=None, settings=None) -> dict:
        """Create or update; fields left as None keep their stored value."""
        now = time.time()
        old = self.get(cid) or {"title": "New chat", "messages": [], "settings": {}, "created": now}
        row = (
            cid,
            old["title"] if title is None else title,
            _json(old["messages"] if messages is None else messages),
            _json(old["settings"] if settings is None else settings),
            old["created"],
            now,
        )
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO conversations VALUES (?, ?, ?, ?, ?, ?)", row)
        return self.get(cid)

    def delete(self, cid: str) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM conversations WHERE id = ?", (cid,)).rowcount > 0

    # -- comparison labels (the labeling page) -------------------------------------------------

    def add_label(self, label: dict) -> int:
        row = [_json(label[k]) for k in ("prompt", "answers", "ranking")]
        row += [label["verdict"], _json(label["edited"]), label["labeler"], time.time()]
        row += [_json(label.get("models") or [])]
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO labels (prompt, answers, ranking, verdict, edited, labeler, created, "
                "models) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return int(cur.lastrowid)

    def delete_label(self, lid: int) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM labels WHERE id = ?", (lid,)).rowcount > 0

    def labels(self) -> list[dict]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM labels ORDER BY id").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for k in ("prompt", "answers", "ranking", "edited", "models"):
                d[k] = json.loads(d[k])
            out.append(d)
        return out

    def comparisons(self) -> list[dict]:
        """Every label as TRL comparison records (with who labelled it and when, and which
        model wrote each answer where the label recorded it; an edit is the labeler's)."""
        out = []
        for label in self.labels():
            wrote = dict(zip(label["answers"], label["models"]))
            wrote |= {e["text"]: f"{label['labeler']} (edit)" for e in label["edited"]}
            for chosen, rejected in label_comparisons(label):
                rec = {
                    "prompt": label["prompt"],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                    "labeler": label["labeler"],
                    "created": label["created"],
                    "label_id": label["id"],
                }
                if wrote:
                    rec |= {
                        "chosen_model": wrote.get(chosen),
                        "rejected_model": wrote.get(rejected),
                    }
                out.append(rec)
        return out

    # -- corrections ("fix this answer" in the web chat) ---------------------------------------

    def add_correction(self, messages: list[dict], original: str, labeler: str) -> int:
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO corrections (messages, original, labeler, created) "
                "VALUES (?, ?, ?, ?)",
                (_json(messages), original, labeler, time.time()),
            )
            return int(cur.lastrowid)

    def corrections(self) -> list[dict]:
        """Corrected conversations as `{"messages"}` records to fine-tune on."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM corrections ORDER BY id").fetchall()
        return [
            {"messages": json.loads(r["messages"]), "labeler": r["labeler"], "id": r["id"]}
            for r in rows
        ]

    # -- memory (the remember / recall / forget tools, the web UI's memory panel) -------------

    def remember(self, text: str, source: str = "model", key: str | None = None) -> int | None:
        """Store one memory; its id (None: a memory with this key is already stored)."""
        with self._db() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO memories (text, source, key, created) VALUES (?, ?, ?, ?)",
                (text, source, key, time.time()),
            )
            return cur.lastrowid if cur.rowcount else None

    def memories(self, source: str | None = None) -> list[dict]:
        """Every memory, oldest first (`source`: only those)."""
        q, args = "SELECT id, text, source, created FROM memories", ()
        if source:
            q, args = q + " WHERE source = ?", (source,)
        with self._db() as db:
            return [dict(r) for r in db.execute(q + " ORDER BY id", args)]

    def edit_memory(self, mid: int, text: str) -> bool:
        with self._db() as db:
            return db.execute("UPDATE memories SET text = ? WHERE id = ?", (text, mid)).rowcount > 0

    def forget(self, mid: int) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM memories WHERE id = ?", (mid,)).rowcount > 0

    def add_findings(self, run: str, target: str, defenses: list[str], attempts: list[dict]) -> int:
        """Keep the successful attempts of a red-team run; how many were added."""
        rows = [
            (run, target, a["suite"], a["probe"], _json(defenses), _json(a), time.time())
            for a in attempts
            if a.get("success")
        ]
        with self._db() as db:
            db.executemany(
                "INSERT INTO findings (run, target, suite, probe, defenses, attempt, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def findings(self, suite: str | None = None) -> list[dict]:
        """Red-team findings, oldest first (of one suite, if given)."""
        q, args = "SELECT * FROM findings", ()
        if suite:
            q, args = q + " WHERE suite = ?", (suite,)
        with self._db() as db:
            rows = db.execute(q + " ORDER BY id", args).fetchall()
        keys = ("id", "run", "target", "suite", "probe", "defenses", "attempt", "created")
        out = [dict(zip(keys, r)) for r in rows]
        for f in out:
            f["defenses"], f["attempt"] = json.loads(f["defenses"]), json.loads(f["attempt"])
        return out
