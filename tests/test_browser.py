"""The browser tools over the demo web: BM25 search, pages read as a reader sees them, only
loopback opened, and an agent that searches and opens pages through a scripted endpoint."""

import json

import pytest

from llmos.agent.agent import AgentConfig, run_agent
from llmos.agent.browser import BrowserError, Site, companies, demo_web, may_open, open_url
from tests.test_agent import Script, call


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = demo_web(tmp_path_factory.mktemp("web"))
    (d / "secret-page.html").write_text(
        "<html><head><title>Trap</title><script>SCRIPT_MARKER()</script>"
        "<style>.x { STYLE_MARKER: 1 }</style></head><body><p>Visible words.</p>"
        '<p hidden>HIDDEN_MARKER</p><div style="display: none">NONE_MARKER</div>'
        '<span aria-hidden="true">ARIA_MARKER</span><a href="/index.html">home</a></body></html>'
    )
    (d / "big.html").write_text("<p>" + "word " * 400_000 + "</p>")  # 2 MB
    (d / "blob.bin").write_bytes(bytes(range(256)) * 100)
    s = Site(d)
    yield s
    s.close()


def test_the_demo_web(site):
    cs = companies()
    assert len(site.pages) >= 50 and len(cs) == 12
    for c in cs:  # valuations grow round by round; one is withheld, never the first
        vals = [r["valuation"] for r in c["rounds"]]
        assert vals == sorted(vals) and 0 < c["hidden"] < len(vals)


def test_search_ranks_a_companys_pages_first(site):
    c = companies()[3]
    hits = site.search(f"{c['name']} funding round")
    assert hits and all(c["name"] in h["title"] for h in hits[:3])
    assert hits[0]["url"].startswith(site.url) and c["name"] in hits[0]["snippet"]
    assert site.search("zzzqqq nothing like this") == []


def test_open_shows_what_a_reader_sees(site):
    text = open_url(site.url + "secret-page.html")
    assert "Visible words." in text
    for marker in ("SCRIPT_MARKER", "STYLE_MARKER", "HIDDEN_MARKER", "NONE_MARKER", "ARIA_MARKER"):
        assert marker not in text
    assert "dropped (not visible): 1 script, 1 style, 3 hidden elements" in text
    assert f"[1] home -> {site.url}index.html" in text
    # Through the site's tools: a path opens the page, and its links on the site are paths
    # (a loopback URL costs a small vocabulary ~34 tokens, a path ~12).
    text = site.tools()["open"]["fn"]({"url": "/secret-page.html"})
    assert text.startswith("Trap\n/secret-page.html\n") and "[1] home -> /index.html" in text


def test_large_and_binary_pages_come_back_with_a_note(site):
    big = open_url(site.url + "big.html")
    assert "page truncated at 1 MiB" in big and "text truncated at 6,000" in big
    assert len(big) < 8000
    assert "not a page (application/octet-stream" in open_url(site.url + "blob.bin")
    assert "HTTP 404" in open_url(site.url + "missing.html")


@pytest.mark.parametrize(
    "url",
    ["http://example.com/", "https://10.0.0.1/", "file:///etc/passwd", "ftp://127.0.0.1/",
     "http://169.254.169.254/latest/meta-data/", "javascript:alert(1)", "http:///x"],
)  # fmt: skip
def test_only_loopback_or_allowed_hosts_open(url):
    with pytest.raises(BrowserError):
        may_open(url)
    assert may_open("http://example.com/a", allow_hosts=("example.com",))
    assert may_open("http://[::1]:8/") and may_open("http://localhost:9/")


def test_an_agent_searches_and_opens_pages(site, tmp_path):
    c = companies()[0]
    script = Script(
        [
            {"tool_calls": [call("search", {"query": f"{c['name']} funding"}, 0)]},
            {
                "tool_calls": [
                    call("open", {"url": u}, i)
                    for i, u in enumerate(
                        [
                            site.url + f"{c['name'].lower()}.html",
                            "http://example.com/",
                            f"/{c['name'].lower()}-seed.html",  # a path, as results show them
                        ]
                    )
                ]
            },  # fmt: skip
            {"content": "done"},
        ]
    )
    cfg = AgentConfig(task="funding?", base_url=script.url, model="m", tools="", web=str(site.root))
    s = run_agent(cfg, tmp_path)
    assert s["answer"] == "done"
    assert {t["function"]["name"] for t in script.requests[0]["tools"]} == {"search", "open"}
    results = [m["content"] for m in script.requests[2]["messages"] if m["role"] == "tool"]
    assert c["name"] in results[0] and f"{c['name'].lower()}-seed.html" in results[0]
    assert f"{c['name']} works on" in results[1] and "not on the allowlist" in results[2]
    assert "raised $" in results[3] and f"\n/{c['name'].lower()}-seed.html\n" in results[3]
    assert f"\n/{c['name'].lower()}-seed.html\n" in results[0]  # search shows paths too
    run = next(tmp_path.iterdir())
    kinds = [json.loads(line)["type"] for line in (run / "trace.jsonl").read_text().splitlines()]
    assert kinds.count("result") == 4
