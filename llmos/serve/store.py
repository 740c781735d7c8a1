"""The web chat's conversations in SQLite: one row per conversation, messages as JSON.

A connection per call keeps it thread-safe under uvicorn's workers; each write is one
transaction, so a crash never leaves half a conversation.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    messages TEXT NOT NULL,
    settings TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
)"""


class ChatStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()

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
            # allow_nan=False: only standard JSON goes in, so what is stored always reads back
            json.dumps(
                old["messages"] if messages is None else messages,
                ensure_ascii=False,
                allow_nan=False,
            ),
            json.dumps(old["settings"] if settings is None else settings, allow_nan=False),
            old["created"],
            now,
        )
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO conversations VALUES (?, ?, ?, ?, ?, ?)", row)
        return self.get(cid)

    def delete(self, cid: str) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM conversations WHERE id = ?", (cid,)).rowcount > 0
