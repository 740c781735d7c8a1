import numpy as np

from llmos.data.corpora import load_corpus
from llmos.data.shards import TokenLoader, build_shards


def test_shards_hold_every_document_and_skip_when_unchanged(corpus_dir, tok, tmp_path):
    docs = load_corpus(str(corpus_dir / "*.txt"))
    d = build_shards(docs, tok, tmp_path / "s", shard_tokens=2000)
    files = sorted(d.glob("shard_*.bin"))
    assert len(files) > 1
    ids = np.concatenate([np.fromfile(f, dtype=np.uint16) for f in files])
    expected = [i for doc in docs for i in (tok.bos_id, *tok.encode(doc.text))]
    assert ids.tolist() == expected
    mtimes = [f.stat().st_mtime_ns for f in files]
    build_shards(docs, tok, d, shard_tokens=2000)  # unchanged inputs: nothing rewritten
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    docs[0].text += " changed"
    build_shards(docs, tok, d, shard_tokens=2000)
    assert files[0].stat().st_mtime_ns != mtimes[0]


def test_loader_targets_are_inputs_shifted_and_state_resumes(corpus_dir, tok, tmp_path):
    d = build_shards(load_corpus(str(corpus_dir / "*.txt")), tok, tmp_path / "s", 3000)
    a = TokenLoader(d, batch_size=4, seq_len=32, seed=5)
    x, y = a.next()
    assert x.shape == (4, 32) and (x[:, 1:] == y[:, :-1]).all()
    seen = [a.next() for _ in range(3)]
    b = TokenLoader(d, batch_size=4, seq_len=32, seed=5)
    b.load_state({"epoch": 0, "index": 4})
    for (x1, y1), (x2, y2) in zip(seen, [b.next() for _ in range(3)]):
        assert (x1 == x2).all() and (y1 == y2).all()
    # an epoch visits every window once
    c = TokenLoader(d, batch_size=1, seq_len=32, seed=5)
    got = []
    for _ in range(c.n_windows):
        x, y = c.next()
        got.append((*x[0].tolist(), y[0, -1].item()))
    assert sorted(got) == sorted(tuple(c._window(w).tolist()) for w in range(c.n_windows))
    assert c.state() == {"epoch": 1, "index": 0}


def test_ranks_split_an_epoch_into_disjoint_parts(corpus_dir, tok, tmp_path):
    d = build_shards(load_corpus(str(corpus_dir / "*.txt")), tok, tmp_path / "s", 3000)
    n = TokenLoader(d, batch_size=1, seq_len=32).n_windows
    parts = []
    for rank in range(2):
        loader = TokenLoader(d, batch_size=1, seq_len=32, seed=5, rank=rank, world=2)
        parts.append({tuple(loader.next()[0][0].tolist()) for _ in range(n // 2)})
    assert not parts[0] & parts[1]
    whole = TokenLoader(d, batch_size=1, seq_len=32, seed=5)
    assert parts[0] | parts[1] <= {tuple(whole.next()[0][0].tolist()) for _ in range(n)}
