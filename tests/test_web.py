"""The web chat page at / in headless Chromium: send, watch the reasoning then the answer stream, fold the thought,
switch DeepThink off, stop a reply; Markdown, KaTeX and highlighted code in the answer and the thought, copy and
regenerate, conversations kept across a reload. Saves a screenshot (tmp dir, and docs/web-chat.png for the README).

Needs Debian's `chromium` (/usr/bin/chromium) and the `playwright` Python package (no browser download); skipped
with a reason otherwise. The model is the scripted stand-in (r1kit.serve.scripted), slowed to ~40 tokens/s so the
streaming states can be observed.
"""
import shutil
import time
from pathlib import Path

import httpx
import pytest
import torch

from r1kit.serve.app import create_app
from r1kit.serve.serve import serve_in_thread
from r1kit.serve.scripted import ScriptedModel
from r1kit.tokenizer import Tokenizer

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[1] / "docs"

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)


class SlowScripted(ScriptedModel):
    def forward(self, *a, **kw):
        time.sleep(0.025)  # ~40 tokens/s: slow enough to watch the page stream
        return super().forward(*a, **kw)


THOUGHT = ("Let me think. The question is short, so the answer is short too. Two and two make four; "
           "checking once more, four it is.")  # ~100 tokens: ~2.5 s of visible thinking


MATH_THOUGHT = "Halve it: $\\frac{1}{2}$ of the **whole**."
MATH_ANSWER = ("The result is $\\frac{1}{2}$, and as a display:\n\n$$\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$$\n\n"
               "In **Python**:\n\n```python\ndef half(x):\n    return x / 2\n```\n")


def script(user: str):
    if "[endless]" in user:
        return "thinking forever " * 1000, ""
    if "[math]" in user:
        return MATH_THOUGHT, MATH_ANSWER
    return (THOUGHT, f"The answer to \"{user}\" is 4.")


@pytest.fixture(scope="module")
def url():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = Tokenizer.builtin()
    app = create_app(SlowScripted(tok, script, max_seq_len=2048), tok, model_name="r1kit-scripted", max_batch=2)
    with serve_in_thread(app) as base:
        yield base
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
        except Exception as e:  # e.g. missing shared libraries
            pytest.skip(f"chromium does not start: {e}")
        pg = browser.new_page(viewport={"width": 960, "height": 640})
        yield pg
        browser.close()


def test_web_chat_streams_reasoning_then_answer(url, page, tmp_path):
    page.goto(url + "/")
    sync_api.expect(page.locator("#model")).to_have_text("r1kit-scripted")
    page.fill("#input", "What is 2+2?")
    page.click("#send")
    msg = page.locator(".msg.assistant").last
    # while the thought streams: an open <details> with reasoning text, no answer yet, a Stop button
    sync_api.expect(msg.locator("details.thought .reasoning")).to_contain_text("Let me think")
    assert msg.locator("details.thought").get_attribute("open") is not None
    assert page.locator("#stop").is_visible()
    # then the answer streams and the thought folds to a one-line summary
    sync_api.expect(msg.locator(".answer")).to_have_text('The answer to "What is 2+2?" is 4.', timeout=20_000)
    sync_api.expect(msg).to_have_attribute("data-state", "done")
    assert msg.locator("details.thought").get_attribute("open") is None
    assert msg.locator("summary").inner_text().startswith("Thought for")
    assert "reasoning" in msg.locator(".meta").inner_text()
    msg.locator("summary").click()  # unfold: the full thought is there
    sync_api.expect(msg.locator(".reasoning")).to_have_text(THOUGHT)

    # DeepThink off: no thought block, the reply is all answer
    page.click("#think")
    assert page.locator("#think").get_attribute("aria-pressed") == "false"
    page.fill("#input", "And 3+3?")
    page.press("#input", "Enter")
    msg2 = page.locator(".msg.assistant").last
    sync_api.expect(msg2).to_have_attribute("data-state", "done", timeout=20_000)
    assert msg2.locator(".answer").inner_text() == 'The answer to "And 3+3?" is 4.'
    assert msg2.locator("details.thought").count() == 0
    page.click("#think")  # back on


def test_web_chat_renders_markdown_latex_and_code_and_keeps_conversations(url, page, tmp_path):
    page.goto(url + "/")
    page.evaluate("localStorage.clear()")
    page.reload()
    sync_api.expect(page.locator("#empty")).to_be_visible()  # the empty state, before any message
    assert page.locator("link[rel=icon]").get_attribute("href") == "/static/favicon.svg"
    assert httpx.get(url + "/static/favicon.svg").headers["content-type"].startswith("image/svg")
    sync_api.expect(page.locator("#model")).to_have_text("r1kit-scripted")
    page.fill("#input", "What is half of one? [math]")
    page.click("#send")
    msg = page.locator(".msg.assistant").last
    sync_api.expect(msg).to_have_attribute("data-state", "done", timeout=30_000)
    answer = msg.locator(".answer")
    # $\frac{1}{2}$ is KaTeX (inline, with a MathML twin), $$...$$ a display formula, the fence a highlighted block
    sync_api.expect(answer.locator(".katex").first).to_be_visible()
    assert answer.locator(".katex .mfrac").count() >= 2 and answer.locator(".katex-display").count() == 1
    assert answer.locator("annotation").first.text_content() == "\\frac{1}{2}"
    assert answer.locator("pre code.hljs.language-python").inner_text().startswith("def half(x):")
    assert answer.locator("pre code .hljs-keyword").first.inner_text() == "def"
    assert answer.locator("strong").inner_text() == "Python" and "$" not in answer.inner_text()
    msg.locator("summary").click()  # the folded thought is rendered too
    thought = msg.locator(".reasoning")
    assert thought.locator(".katex .mfrac").count() == 1 and thought.locator("strong").inner_text() == "whole"
    # copy and regenerate buttons; regenerate replaces the reply
    assert msg.locator("button.copy").is_visible()
    msg.locator("button.regenerate").click()
    sync_api.expect(page.locator(".msg.assistant")).to_have_count(1)
    sync_api.expect(page.locator(".msg.assistant").last).to_have_attribute("data-state", "done", timeout=30_000)
    assert page.locator(".msg.user").count() == 1

    shot = tmp_path / "web-chat.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    DOCS.mkdir(exist_ok=True)
    shutil.copy(shot, DOCS / "web-chat.png")

    # the conversation survives a reload (localStorage), rendered the same way
    page.reload()
    sync_api.expect(page.locator("#convs button")).to_have_count(1)
    page.locator("#convs button").first.click()
    sync_api.expect(page.locator(".msg.assistant .answer .katex").first).to_be_visible()
    assert page.locator(".msg.user").inner_text() == "What is half of one? [math]"


def test_web_chat_stop_button_aborts_the_request(url, page):
    page.goto(url + "/")
    sync_api.expect(page.locator("#model")).to_have_text("r1kit-scripted")
    page.fill("#input", "Think [endless]")
    page.click("#send")
    msg = page.locator(".msg.assistant").last
    sync_api.expect(msg.locator(".reasoning")).to_contain_text("thinking forever")
    page.click("#stop")
    sync_api.expect(msg).to_have_attribute("data-state", "stopped")
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    deadline = time.monotonic() + 10  # the server noticed the disconnect and freed the slot
    while (h := httpx.get(url + "/health").json())["running"] or h["in_flight"]:
        assert time.monotonic() < deadline, h
        time.sleep(0.05)
