"""The web chat in a real browser: Playwright drives Debian's Chromium (`make test` installs it
with apt; Playwright downloads no browser). The screenshot is kept in tests/output/."""

import shutil
from pathlib import Path

import pytest

from llmos.serve.api import ServeConfig, create_app

from .test_serve import KEY, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUTPUT = Path(__file__).parent / "output"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def page(assistant, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    _, model_dir = assistant
    db = tmp_path_factory.mktemp("web") / "chats.sqlite"
    url, srv = start_server(create_app(model_dir, ServeConfig(api_key=KEY, db=str(db))))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        page.click("#settings summary")
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        yield page, url, requests
        browser.close()
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
