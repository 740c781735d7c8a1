"""The browser tools, `search` and `open`, over a directory of pages served on loopback.

`search(query)` ranks the pages with BM25 (`bm25s`; Robertson & Zaragoza 2009) and returns
titles, URLs and snippets. `open(url)` returns a page as a reader sees it: the visible text of
the HTML (a real parser, BeautifulSoup; scripts, styles and hidden elements dropped, and the
result says what was dropped) and its links, numbered. Only loopback, or hosts given in an
allowlist, can be opened; a page that is not text, or is too large, comes back with a note.

`demo_web(out)` writes the demo web the agent practises on (~90 pages): companies and their
funding rounds spread over profiles and news announcements (one round's valuation is never
published: the showcase asks for an estimate), and the fictional people of the encyclopedia.
It is generated, never stored in the repository.

    >>> # site = Site("demo-web"); site.search("Kalori funding")[0]["url"]
"""

from __future__ import annotations

import html
import http.server
import ipaddress
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from llmos.agent.tools import function_schema
from llmos.common import LlmosError, arg
from llmos.data.encyclopedia import encyclopedia, made_up_word

MAX_PAGE_BYTES = 1 << 20  # a page is read up to 1 MiB
MAX_TEXT_CHARS = 6000  # of visible text given to the model
HIDDEN_TAGS = ("script", "style", "noscript", "template", "svg", "iframe")
BLOCK_TAGS = "p div li tr br h1 h2 h3 h4 h5 h6 nav table section article header footer pre ul ol"
BLOCK_TAGS = tuple(BLOCK_TAGS.split())


class BrowserError(LlmosError):
    """A URL that may not be opened, or a directory with no pages."""


# -- reading a page as a reader sees it -------------------------------------------------------


def visible_text(
    page: str, base_url: str = ""
) -> tuple[str, str, list[tuple[str, str]], list[str]]:
    """(title, visible text, links as (text, absolute URL), what was dropped) of an HTML page."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else ""
    dropped: dict[str, int] = {}
    for el in soup.find_all(HIDDEN_TAGS):
        dropped[el.name] = dropped.get(el.name, 0) + 1
        el.decompose()
    for el in soup.find_all(_is_hidden):
        dropped["hidden element"] = dropped.get("hidden element", 0) + 1
        el.decompose()
    if soup.head:
        soup.head.decompose()
    links = []
    for a in soup.find_all("a", href=True):
        links.append((a.get_text(" ", strip=True), urllib.parse.urljoin(base_url, a["href"])))
        a.append(f" [{len(links)}]")  # the link's number, where it stands in the text
    for el in soup.find_all(BLOCK_TAGS):  # a block ends a line; inline tags do not
        el.insert_after("\n")
    lines = (" ".join(line.split()) for line in soup.get_text().splitlines())
    text = "\n".join(line for line in lines if line)
    notes = [f"{n} {k}{'s' if n > 1 else ''}" for k, n in dropped.items()]
    return title, text, links, notes


def _is_hidden(el) -> bool:
    """Elements a browser would not show: hidden, aria-hidden, display:none, visibility:hidden."""
    if not hasattr(el, "attrs") or el.attrs is None:
        return False
    style = el.attrs.get("style", "").replace(" ", "").lower()
    return (
        "hidden" in el.attrs
        or el.attrs.get("aria-hidden") == "true"
        or "display:none" in style
        or "visibility:hidden" in style
    )


# -- opening URLs -------------------------------------------------------------------------------


def may_open(url: str, allow_hosts: tuple[str, ...] = ()) -> str:
    """The URL if it may be opened (http(s) to loopback or an allowed host); else BrowserError."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise BrowserError(f"open: only http(s) URLs can be opened, not {url[:100]!r}")
    host = u.hostname
    if host in allow_hosts or host == "localhost":
        return url
    try:  # an IP literal on loopback; a name is never looked up (no DNS rebinding to evade)
        if ipaddress.ip_address(host).is_loopback:
            return url
    except ValueError:
        pass
    raise BrowserError(f"open: {host} is not on the allowlist (loopback only unless allowed)")


def open_url(url: str, allow_hosts: tuple[str, ...] = (), site: str = "") -> str:
    """The page at `url` as text for the model (see the module docstring). URLs under `site`
    (a base URL ending in /) are written as paths from it, "/about.html": a loopback URL
    costs ~34 tokens of a small vocabulary (every digit of the port one), a path ~12, and
    a page lists many."""
    url = may_open(url, allow_hosts)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            kind = r.headers.get_content_type()
            data = r.read(MAX_PAGE_BYTES + 1)
            charset = r.headers.get_content_charset() or "utf-8"
    except urllib.error.HTTPError as e:
        return f"error: {url}: HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return f"error: {url}: {e}"
    notes = []
    if len(data) > MAX_PAGE_BYTES:
        data = data[:MAX_PAGE_BYTES]
        notes.append(f"page truncated at {MAX_PAGE_BYTES >> 20} MiB")
    if not (kind.startswith("text/") or kind in ("application/xhtml+xml", "application/json")):
        return f"{url}: not a page ({kind}, {len(data):,} bytes); nothing to read"
    page = data.decode(charset, errors="replace")
    if kind in ("text/html", "application/xhtml+xml"):
        title, text, links, dropped = visible_text(page, url)
        if dropped:
            notes.append("dropped (not visible): " + ", ".join(dropped))
    else:
        title, text, links = "", page, []
    if len(text) > MAX_TEXT_CHARS:
        notes.append(f"text truncated at {MAX_TEXT_CHARS:,} of {len(text):,} characters")
        text = text[:MAX_TEXT_CHARS]
    shown = site_path(url, site)
    out = [f"{title}\n{shown}" if title else shown, text]
    if links:
        listed = (f"[{i}] {t} -> {site_path(u, site)}" for i, (t, u) in enumerate(links, 1))
        out.append("links:\n" + "\n".join(listed))
    if notes:
        out.append("[" + "; ".join(notes) + "]")
    return "\n\n".join(out)


def site_path(url: str, site: str) -> str:
    """`url` as a path from `site` (a base URL ending in /) when it is under it; else as is.

    >>> site_path("http://127.0.0.1:8000/a.html", "http://127.0.0.1:8000/")
    '/a.html'
    """
    return "/" + url[len(site) :] if site and url.startswith(site) else url


# -- a site: pages served on loopback and indexed for search ----------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a reader that stops early (open reads 1 MiB of a larger page) resets the socket


def serve_dir(root: str | Path, port: int = 0) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Serve a directory on 127.0.0.1 in a thread: (base URL, server)."""
    handler = partial(_QuietHandler, directory=str(root))
    server = _Server(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server


class Site:
    """A directory of .html/.md/.txt pages: served on loopback, searchable with BM25."""

    def __init__(self, root: str | Path, allow_hosts: tuple[str, ...] = ()):
        import bm25s

        self.root, self.allow_hosts = Path(root), allow_hosts
        files = sorted(p for p in self.root.rglob("*") if p.suffix in (".html", ".md", ".txt"))
        if not files:
            raise BrowserError(f"{self.root}: no .html, .md or .txt pages to serve")
        self.url, self.server = serve_dir(self.root)
        self.pages = []
        for p in files:
            raw = p.read_text(errors="replace")
            title, text = (visible_text(raw)[:2]) if p.suffix == ".html" else (p.stem, raw)
            rel = p.relative_to(self.root).as_posix()
            self.pages.append({"title": title or p.stem, "url": self.url + rel, "text": text})
        self.retriever = bm25s.BM25()
        corpus = [f"{p['title']}\n{p['text']}" for p in self.pages]
        self.retriever.index(
            bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False
        )

    def search(self, query: str, k: int = 5) -> list[dict]:
        import bm25s

        k = min(k, len(self.pages))
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return []
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        hits = []
        for i, score in zip(docs[0], scores[0]):
            if score <= 0:
                continue
            p = self.pages[int(i)]
            hits.append(
                {"title": p["title"], "url": p["url"], "snippet": _snippet(p["text"], query)}
            )
        return hits

    def tools(self) -> dict:
        """`search` and `open` as agent tools bound to this site."""

        def search(args: dict) -> str:
            q = args.get("query")
            if not isinstance(q, str) or not q.strip():
                return 'error: search: "query" must be a non-empty string'
            hits = self.search(q[:500])
            if not hits:
                return f"no results for {q[:100]!r}"
            return "\n\n".join(
                f"{h['title']}\n{site_path(h['url'], self.url)}\n{h['snippet']}" for h in hits
            )

        def open_(args: dict) -> str:
            url = args.get("url")
            if not isinstance(url, str):
                return 'error: open: "url" must be a string'
            if url.startswith("/"):  # a path on this site, as search and pages write them
                url = self.url + url.lstrip("/")
            try:
                return open_url(url, self.allow_hosts, self.url)
            except BrowserError as e:
                return f"error: {e}"

        return {
            "search": {
                "fn": search,
                "schema": function_schema("search", "Search the web.", "query"),
            },
            "open": {
                "fn": open_,
                "schema": function_schema(
                    "open", "Open a URL, or a path on this site (/a.html), and read it.", "url"
                ),
            },
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _snippet(text: str, query: str, width: int = 200) -> str:
    """The stretch of text around the first query word found."""
    low = text.lower()
    at = min((low.find(w) for w in query.lower().split() if low.find(w) >= 0), default=0)
    start = max(0, at - width // 4)
    return ("..." if start else "") + " ".join(text[start : start + width].split()) + "..."


# -- the demo web -----------------------------------------------------------------------------

ROUNDS = ["Seed", "Series A", "Series B", "Series C", "Series D"]
SECTORS = ["glass recycling", "weather maps", "bee health", "river ferries", "violin strings"]


def companies(n: int = 12, seed: int = 0) -> list[dict]:
    """Fictional companies with funding rounds (date, amount and post-money valuation, in $M),
    valuations growing round by round. One round per company has its valuation withheld: the
    showcase asks the agent to estimate it from the others."""
    r = random.Random(f"companies/{seed}")
    out, names = [], set()
    while len(out) < n:
        name = made_up_word(r, 2) + r.choice(["ly", "io", "ora", "tek", "wave"])
        if name in names:
            continue
        names.add(name)
        year, valuation, rounds = r.randint(2012, 2017), r.randint(4, 12), []
        for k in range(r.randint(3, 5)):
            year += r.randint(1, 2)
            amount = round(valuation * r.uniform(0.15, 0.3), 1)
            date = f"{year}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
            rounds.append(
                {"round": ROUNDS[k], "date": date, "amount": amount, "valuation": valuation}
            )
            valuation = int(valuation * r.uniform(2.0, 3.5))
        hidden = r.randrange(1, len(rounds))  # never the first: an estimate needs a before
        out.append({"name": name, "sector": r.choice(SECTORS), "founded": rounds[0]["date"][:4],
                    "rounds": rounds, "hidden": hidden})  # fmt: skip
    return out


def _page(title: str, body: str) -> str:
    # Every page carries what a reader never sees: a script, a style and a hidden tracker.
    return f"""<!doctype html>
<html><head><title>{html.escape(title)}</title>
<style>body {{ font-family: serif }}</style>
<script>var tracker = "pixel"; document.title += "";</script></head>
<body><nav><a href="index.html">Home</a></nav>
<h1>{html.escape(title)}</h1>
{body}
<div style="display:none">tracking-id 0000</div>
</body></html>
"""


def demo_web(out: str | Path, seed: int = 0) -> Path:
    """Write the demo web into `out` (index, company profiles, funding news, people)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    links = []
    for c in companies(seed=seed):
        slug = c["name"].lower()
        news = []
        for k, rd in enumerate(c["rounds"]):
            valuation = (
                "The company did not disclose its valuation."
                if k == c["hidden"]
                else f"The round values {c['name']} at ${rd['valuation']} million."
            )
            page = f"{slug}-{rd['round'].lower().replace(' ', '-')}.html"
            body = (
                f"<p><b>{rd['date']}</b> — {c['name']}, the {c['sector']} company, raised "
                f"${rd['amount']} million in a {rd['round']} round. {valuation}</p>"
                f'<p>See the <a href="{slug}.html">company profile</a>.</p>'
            )
            (out / page).write_text(_page(f"{c['name']} raises {rd['round']}", body))
            news.append(f'<li><a href="{page}">{rd["round"]} ({rd["date"][:4]})</a></li>')
        profile = (
            f"<p>{c['name']} works on {c['sector']}. Founded in {c['founded']}, it has raised "
            f"{len(c['rounds'])} rounds.</p><ul>{''.join(news)}</ul>"
        )
        (out / f"{slug}.html").write_text(_page(f"{c['name']} (company)", profile))
        links.append(f'<li><a href="{slug}.html">{c["name"]}</a></li>')
    for p in encyclopedia():
        slug = p["name"].lower().replace(" ", "-")
        body = f"<p>{p['name']} was born in {p['town']} and worked as {p['a']} {p['job']}.</p>"
        (out / f"{slug}.html").write_text(_page(p["name"], body))
        links.append(f'<li><a href="{slug}.html">{p["name"]}</a></li>')
    (out / "index.html").write_text(_page("The demo web", f"<ul>{''.join(links)}</ul>"))
    return out


@dataclass
class WebConfig:
    dir: str = arg("", "a directory of .html/.md/.txt pages", positional=True)
    port: int = arg(8080, "the port on 127.0.0.1", lo=0, hi=65535)


@dataclass
class WebDemoConfig:
    out: str = arg("demo-web", "the directory to write the demo web into")
    seed: int = arg(0, "which demo world")


def web_serve(c: WebConfig) -> None:
    """`llmos web serve DIR`: serve pages on loopback until Ctrl-C."""
    site = Site(c.dir)
    site.close()  # Site served on a free port; serve in the foreground on the one asked for
    url, server = serve_dir(c.dir, c.port)
    print(f"serving {len(site.pages)} pages of {c.dir} at {url} (Ctrl-C stops)")
    threading.Event().wait()


def web_demo(c: WebDemoConfig) -> None:
    out = demo_web(c.out, c.seed)
    print(f"{out}: {len(list(out.glob('*.html')))} pages")
