"""The chat page in a real headless Chromium (Debian's, driven by Playwright; no browser download).

It types a question and sees the answer stream in, stops a long answer, reloads and finds the
conversation kept, and fails on any request that leaves 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from . import serveproc

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("LLAMA3ZH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying Google's hosts.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
FRANCE = "What is the capital of France? Answer in English."
LONG = "Write a very long story about a dragon who learns to cook. Make it at least 2000 words."


def wait_until(page: object, js: str, timeout: float = 30.0) -> None:
    """Poll ``js`` (a function expression) until it is truthy. Playwright's wait_for_function
    polls through eval, which the page's CSP (script-src 'self') refuses at random; evaluate
    calls the function through the debugger protocol, which the CSP does not cover."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(js):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout:.0f} s: {js}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def browser() -> object:
    # CI installs both (.ci/run): there a missing browser is a failure, not a skip
    if os.environ.get("CI") and not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: .ci/run should have installed it")
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def test_chat_page(browser: object, tmp_path: Path, smollm2_gguf: Path) -> None:
    args = (str(smollm2_gguf), "--parallel", "2", "--ctx", "1024")
    with serveproc.running(tmp_path / "home", *args) as srv:
        context = browser.new_context(locale="zh-CN")  # type: ignore[attr-defined]
        outside: list[str] = []

        def only_here(route: object) -> None:
            url = route.request.url  # type: ignore[attr-defined]
            if url.startswith("data:") or urlsplit(url).hostname == "127.0.0.1":
                route.continue_()  # type: ignore[attr-defined]
            else:
                outside.append(url)
                route.abort()  # type: ignore[attr-defined]

        context.route("**/*", only_here)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        try:
            page.goto(srv.url + "/")
            assert "本地聊天" in page.title()
            page.evaluate(
                "localStorage.setItem('llama3zh.settings.v1', JSON.stringify({system: "
                "'You are a helpful assistant. 你是一个乐于助人的助手。', temperature: 0, key: '', "
                "model: ''}))"
            )
            page.reload()
            wait_until(page, "() => document.querySelector('#model').options.length > 0")
            assert page.input_value("#model") == "smollm2-135m-instruct:q4_1"

            # ask: the answer streams in, with tokens/s from usage
            page.fill("#input", FRANCE)
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.assistant .stats", timeout=120_000)
            answer = page.locator(".msg.assistant .body").last.inner_text()
            assert "Paris" in answer
            assert "tok/s" in page.locator(".msg.assistant .stats").last.inner_text()

            # a long answer, stopped while it streams
            page.fill("#input", LONG)
            page.press("#input", "Enter")
            wait_until(
                page,
                "() => { const b = [...document.querySelectorAll('.msg.assistant .body')].pop();"
                " return b && b.textContent.length > 40; }",
                timeout=120,
            )
            assert page.is_visible("#stop")
            page.click("#stop")
            wait_until(
                page,
                "() => [...document.querySelectorAll('.msg.assistant .stats')].pop()"
                "?.textContent.includes('Stopped')",
            )
            assert page.is_visible("#send") and not page.is_visible("#stop")
            assert serveproc.wait_idle(srv) < 5  # the server stopped generating too
            stopped = page.locator(".msg.assistant .body").last.inner_text()
            assert len(stopped) > 40

            # reload: the conversation is still there (localStorage)
            page.reload()
            page.wait_for_selector(".msg.assistant")
            assert page.locator(".msg").count() == 4
            assert "Paris" in page.locator(".msg.assistant .body").first.inner_text()
            assert page.locator("#chats li").count() == 1
            shot = os.environ.get("LLAMA3ZH_SCREENSHOT")
            if shot:
                page.set_viewport_size({"width": 1100, "height": 640})
                page.screenshot(path=shot)

            # model output is text: HTML in it is shown, never run; only http(s) links
            html = page.evaluate(
                'markdown(\'<img src=x onerror="window.pwned=1"> **b** `<i>` '
                "[x](javascript:alert(1)) [y](https://example.com)')"
            )
            assert "<img" not in html and "&lt;img" in html
            assert "<strong>b</strong>" in html and "<code>&lt;i&gt;</code>" in html
            assert "javascript:" not in html.split("href=")[1] if "href=" in html else True
            assert html.count("<a ") == 1 and 'href="https://example.com"' in html
            assert page.evaluate("window.pwned") is None

            assert outside == [], f"requests left 127.0.0.1: {outside}"
            assert errors == [], errors
        except Exception as err:
            raise AssertionError(
                f"{type(err).__name__}: {err}\n--- page:\n{page.inner_text('body')[-3000:]}"
                f"\n--- server:\n{srv.output()[-3000:]}\n--- browser errors: {errors}"
            ) from err
        context.close()
