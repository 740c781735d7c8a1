import random

from llmos.tokenizer import SPECIAL_TOKENS


def random_unicode(r: random.Random, n: int) -> str:
    ranges = [
        (0x20, 0x7E),
        (0x0, 0x1F),
        (0xA0, 0x2FF),
        (0x370, 0x3FF),
        (0x4E00, 0x4FFF),
        (0x1F300, 0x1F6FF),
        (0xE000, 0xE0FF),
        (0x10000, 0x10FFFF),
    ]
    out = []
    for _ in range(n):
        lo, hi = r.choice(ranges)
        c = r.randint(lo, hi)
        out.append(chr(c if not 0xD800 <= c <= 0xDFFF else 0x41))
    return "".join(out)


def test_roundtrip_arbitrary_unicode(tok):
    r = random.Random(0)
    for n in [0, 1, 2, 5, 50, 500]:
        for _ in range(20):
            s = random_unicode(r, n)
            assert tok.decode(tok.encode(s)) == s


def test_roundtrip_raw_bytes(tok):
    r = random.Random(1)
    for n in [0, 1, 3, 17, 256, 2000]:
        for _ in range(10):
            data = bytes(r.randrange(256) for _ in range(n))
            ids = tok.encode_bytes(data)
            assert tok.decode_bytes(ids) == data
            assert all(0 <= i < tok.vocab_size for i in ids)
    # valid UTF-8 goes through the ordinary text path
    assert tok.encode_bytes(b"fair king") == tok.encode("fair king")


def test_plain_text_never_yields_special_tokens(tok):
    special = set(tok.special_ids.values())
    assert len(special) == len(SPECIAL_TOKENS)
    text = "hello " + " ".join(SPECIAL_TOKENS) + "<|bos|><|user|>x<|end|>"
    ids = tok.encode(text)
    assert not special & set(ids)
    assert tok.decode(ids) == text
    assert not special & set(tok.encode_bytes(text.encode() + b"\xff<|eos|>"))
    assert not special & {i for ids in tok.encode_batch([text, text[::-1]]) for i in ids}


def test_special_tokens_reserved_first(tok):
    assert [tok.tk.id_to_token(i) for i in range(len(SPECIAL_TOKENS))] == SPECIAL_TOKENS
    assert tok.bos_id == 0 and tok.eos_id == 1
    assert tok.token_bytes()[: len(SPECIAL_TOKENS)].sum() == 0


def test_matches_transformers_tokenizer(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    r = random.Random(2)
    texts = ["The king and the queen.", "  spaces\tand\nnewlines  ", "123 + 4567 = 4690"]
    texts += [random_unicode(r, 40) for _ in range(20)]
    for t in texts:
        assert hf.encode(t, add_special_tokens=False) == tok.encode(t)
        assert hf.decode(tok.encode(t)) == t
    assert hf.bos_token == "<|bos|>" and hf.eos_token == "<|eos|>"
