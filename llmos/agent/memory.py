"""Memory: what the assistant keeps across conversations, and what leaves its context window.

The context window is RAM: small and fast. Memory is disk: the `memories` table of the SQLite
store (data/store.py), which outlives the conversation and the server. The model reads and
writes it through three tools:

- `remember(text)`: keep a fact ("the user's locker code is 4417"). It writes, so the guard
  runs it only if the system or the user asked to remember something (a page cannot plant a
  memory: that is how memory poisoning works).
- `recall(query)`: the memories that best match, by BM25, marked as data like any tool output.
- `forget(id)`: delete one (a write again: the user must have asked).

When a conversation outgrows the context, `fit_with_memory` pages the oldest turns out into
memory ("paged" memories, one a message, each written once) instead of dropping them, and
tells the model in a system note that it can `recall` them: a fact from turn 2 of a long chat
is still there at turn 30.
"""

from __future__ import annotations

import hashlib

from llmos.agent.tools import ToolError, function_schema
from llmos.chat_format import fit_to_context
from llmos.data.store import Store

PAGED_NOTE = (
    "{n} earlier messages of this conversation were moved to memory to fit the context; "
    "use the recall tool to look them up."
)


def recall(store: Store, query: str, k: int = 3) -> list[dict]:
    """The k memories that best match `query` by BM25 (a memory shares no word: not shown)."""
    import bm25s

    rows = store.memories()
    if not rows:
        return []
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([r["text"] for r in rows], stopwords="en", show_progress=False),
        show_progress=False,
    )
    tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
    if not tokens.vocab:
        return []
    docs, scores = retriever.retrieve(tokens, k=min(k, len(rows)), show_progress=False)
    return [rows[int(i)] for i, s in zip(docs[0], scores[0]) if s > 0]


def memory_tools(store: Store) -> dict:
    """`remember`, `recall` and `forget` over one store."""

    def remember(args: dict) -> str:
        text = args.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ToolError('remember: "text" must be a non-empty string')
        return f"remembered (memory {store.remember(text.strip()[:2000], 'model')})"

    def recall_(args: dict) -> str:
        q = args.get("query")
        if not isinstance(q, str) or not q.strip():
            raise ToolError('recall: "query" must be a non-empty string')
        hits = recall(store, q[:500])
        if not hits:
            return f"no memories match {q[:100]!r}"
        return "\n".join(f"[memory {h['id']}] {h['text']}" for h in hits)

    def forget(args: dict) -> str:
        mid = args.get("id")
        if not isinstance(mid, int) or isinstance(mid, bool):
            raise ToolError('forget: "id" must be the number of a memory (from recall)')
        return f"forgot memory {mid}" if store.forget(mid) else f"no memory {mid}"

    return {
        "remember": {
            "fn": remember,
            "privilege": "memory",
            "intent": ("remember", "memorize", "memorise", "note that", "keep in mind", "save"),
            "schema": function_schema("remember", "Keep a fact in long-term memory.", "text"),
        },
        "recall": {
            "fn": recall_,
            "schema": function_schema("recall", "Search long-term memory.", "query"),
        },
        "forget": {
            "fn": forget,
            "privilege": "memory",
            "intent": ("forget", "delete", "remove", "erase"),
            "schema": function_schema("forget", "Delete a memory by its number.", "id", "integer"),
        },
    }


def fit_with_memory(
    tok, messages: list[dict], budget: int, store: Store, conversation: str
) -> tuple[list[dict], int]:
    """Like chat_format.fit_to_context, but the messages that do not fit go to memory (once
    each, keyed by conversation and position) and a system note says how many did.

    Returns (the messages to render, how many were paged out)."""
    note = {"role": "system", "content": PAGED_NOTE.format(n=len(messages))}  # the longest one
    fitted, dropped = fit_to_context(tok, messages, budget)
    if not dropped:
        return fitted, 0
    fitted, dropped = fit_to_context(tok, [note, *messages], budget)  # room for the note
    rest = [m for m in messages if m.get("role") != "system"]
    for i, m in enumerate(rest[:dropped]):
        if not m.get("content"):
            continue  # a bare tool call; its result (next) says what came of it
        key = hashlib.sha1(f"{conversation}\0{i}\0{m['content']}".encode()).hexdigest()
        who = {"user": "The user", "assistant": "The assistant", "tool": "A tool"}[m["role"]]
        store.remember(f"{who} said (message {i + 1}): {m['content']}", "paged", key)
    system = [m for m in fitted if m.get("role") == "system" and m is not note]
    kept = [m for m in fitted if m.get("role") != "system"]
    return [*system, {"role": "system", "content": PAGED_NOTE.format(n=dropped)}, *kept], dropped
