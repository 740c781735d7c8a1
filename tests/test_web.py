"""The web chat in a real browser: Playwright drives Debian's Chromium (`make test` installs it
with apt; Playwright downloads no browser). The screenshot is kept in tests/output/."""

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from llmos.serve.api import ServeConfig, create_app
from llmos.train.sft import SFTConfig, sft

from .test_serve import KEY, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUTPUT = Path(__file__).parent / "output"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_chat(browser, url: str):
    """A new page on the web chat with the API key set; (page, every URL it requested)."""
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.click("#settings summary")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    return page, requests


@pytest.fixture(scope="module")
def page(browser, assistant, tmp_path_factory):
    _, model_dir = assistant
    db = tmp_path_factory.mktemp("web") / "chats.sqlite"
    url, srv = start_server(create_app(model_dir, ServeConfig(api_key=KEY, db=str(db))))
    page, requests = open_chat(browser, url)
    yield page, url, requests
    srv.should_exit = True


def test_chat_streams_and_survives_a_reload(page):
    page, url, requests = page
    page.fill("#temperature", "0")
    page.fill("#input", "What is 1234 * 5678?")
    page.click("#send")
    page.locator(".msg.assistant").first.wait_for()
    page.wait_for_function("() => !document.getElementById('send').hidden")
    assert page.locator(".msg.user").first.inner_text() == "What is 1234 * 5678?"
    # The model called the calculator (shown as it happened) and answered with its result.
    assert "calculator" in page.locator(".msg.tool").first.inner_text()
    assert "7006652" in page.locator(".msg.assistant").last.inner_text()
    shown = page.locator("#messages .msg").all_inner_texts()
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "web_chat.png"), full_page=True)
    # Reload: the conversation is listed (kept in SQLite) and opens with the same messages.
    page.reload()
    item = page.locator(".conv-item .title", has_text="What is 1234 * 5678?")
    item.wait_for()
    item.click()
    page.locator(".msg.user", has_text="What is 1234 * 5678?").wait_for()
    assert page.locator("#messages .msg").all_inner_texts() == shown
    # Rename and delete from the list (the page asks with prompt() and confirm()).
    page.once("dialog", lambda d: d.accept("Multiplication"))
    page.locator(".conv-item .rename").first.click()
    page.locator(".conv-item .title", has_text="Multiplication").wait_for()
    page.reload()
    page.locator(".conv-item .title", has_text="Multiplication").wait_for()
    page.once("dialog", lambda d: d.accept())
    page.locator(".conv-item .delete").first.click()
    page.locator(".conv-item").wait_for(state="detached")
    assert page.locator("#messages .msg").count() == 0
    assert all(r.startswith(url) for r in requests), "the page loaded something from elsewhere"


def test_markdown_escapes_html_and_loads_no_remote_images(page):
    page, _, _ = page
    html = page.evaluate(
        """() => markdown("<img src=x onerror=alert(1)> **bold** <script>alert(2)</script>\\n"
            + "![cat](https://example.com/cat.png) [link](javascript:alert(3))\\n"
            + "```\\n<b>\\n```")"""
    )
    box = page.evaluate(
        "html => { const d = document.createElement('div'); d.innerHTML = html;"
        " return { img: d.querySelectorAll('img').length, script: d.querySelectorAll('script')"
        ".length, strong: d.querySelectorAll('strong').length, b: d.querySelectorAll('b').length,"
        " hrefs: [...d.querySelectorAll('a')].map(a => a.href) } }",
        html,
    )
    assert box == {
        "img": 0,
        "script": 0,
        "strong": 1,
        "b": 0,
        "hrefs": ["https://example.com/cat.png"],
    }


# -- the python tool in the web chat: a plot made in the sandbox, shown inline ------------------

PLOT_CODE = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.savefig('sq.png')"
PLOT_CONVERSATION = [
    {"role": "user", "content": "Plot the squares."},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "python", "arguments": {"code": PLOT_CODE}}}
        ],
    },
    {
        "role": "tool",
        "content": "[sandbox: bubblewrap; exit code 0; 1.0 s]\nfiles: sq.png (17,017 bytes)",
    },
    {"role": "assistant", "content": "Here is the plot: sq.png."},
]
SANDBOX_PLOTS = (
    shutil.which("bwrap")
    and not subprocess.run(
        ["/usr/bin/python3", "-c", "import matplotlib"], capture_output=True
    ).returncode
)


@pytest.fixture(scope="module")
def plotter(base, tmp_path_factory):
    """A tiny assistant fine-tuned on one conversation in which it plots with python."""
    tmp = tmp_path_factory.mktemp("plotter")
    data = tmp / "plot.jsonl"
    data.write_text(json.dumps({"messages": PLOT_CONVERSATION}) + "\n")
    c = SFTConfig(base=str(base), data=f"{data}:1", batch_size=2, max_steps=80, lr=3e-3,
                  warmup_steps=5, eval_every=80, val_fraction=0.0)  # fmt: skip
    return sft(c, tmp / "out")


@pytest.mark.skipif(not SANDBOX_PLOTS, reason="needs bubblewrap and Debian's python3-matplotlib")
def test_web_chat_runs_python_and_shows_the_plot(browser, plotter, tmp_path):
    c = ServeConfig(api_key=KEY, db=str(tmp_path / "chats.sqlite"), tools="calculator,python")
    url, srv = start_server(create_app(plotter, c))
    try:
        page, requests = open_chat(browser, url)
        page.fill("#temperature", "0")
        page.fill("#input", "Plot the squares.")
        page.click("#send")
        page.wait_for_function("() => !document.getElementById('send').hidden", timeout=60e3)
        # The model's call ran in the sandbox on the server; the PNG it saved is shown in the
        # tool's message, loaded and decoded by the browser (not a broken image).
        assert "python" in page.locator(".msg.tool").first.inner_text()
        img = page.locator(".msg.tool img.attachment")
        img.wait_for()
        size = img.evaluate("i => i.complete ? [i.naturalWidth, i.naturalHeight] : null")
        assert size and size[0] >= 100 and size[1] >= 100, size
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / "web_chat_plot.png"), full_page=True)
        src = img.get_attribute("src")
        assert all(r.startswith(url) for r in requests)
        # After a reload the conversation, kept in SQLite, shows the same image again.
        page.reload()
        page.locator(".conv-item .title", has_text="Plot the squares.").click()
        page.locator(f'.msg.tool img[src="{src}"]').wait_for()
        # The file is served as a PNG that cannot run anything; names outside the store are not.
        r = httpx.get(url + src)
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert r.headers["content-type"] == "image/png"
        assert "sandbox" in r.headers["content-security-policy"]
        for bad in ("/files/../chats.sqlite", "/files/x/sq.png", src.replace("sq.png", "..")):
            assert httpx.get(url + bad).status_code == 404, bad
    finally:
        srv.should_exit = True
