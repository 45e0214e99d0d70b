"""The chat page in headless Chromium, against a real gateway in this event loop.

Debian's ``chromium`` driven by the ``playwright`` package (never ``playwright install``).
The scripted ``demo`` model's reply comes from the gateway's config, so the page sends what
a person would type and nothing test-only. The page's Content-Security-Policy is bypassed
(Playwright's waits evaluate strings), so the Markdown renderer alone must keep a reply's HTML
inert; one test runs under the policy to show the page works with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.browsers import CHROMIUM, launched
from tests.credentials import secured
from tests.gateway import Gateway, serve
from tests.processes import upgraded
from tests.waiting import until
from tokenrelay.auth.keys import issue_key
from tokenrelay.events import Failed, TextDelta

playwright_api = pytest.importorskip("playwright.async_api")

ROOT = Path(__file__).resolve().parent.parent
# The README's picture is retaken only when asked (TOKENRELAY_SCREENSHOT=1), so that running
# the tests leaves the checkout as it was.
DOCS_SCREENSHOT = ROOT / "docs" / "screenshot.png"
WAIT_MS = 8000

# Recorded in the page: every status line shown, and the reply's text at every paint.
RECORDER = """
addEventListener("DOMContentLoaded", () => {
  window.__statuses = [];
  window.__paints = [];
  const status = document.getElementById("status");
  new MutationObserver(() => window.__statuses.push(status.textContent)).observe(status, {
    childList: true, characterData: true, subtree: true,
  });
  const sample = () => {
    const body = document.querySelector(".message.assistant:last-of-type .body");
    const text = body ? body.textContent : "";
    if (text && text !== window.__paints.at(-1)) window.__paints.push(text);
    requestAnimationFrame(sample);
  };
  requestAnimationFrame(sample);
});
"""

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with launched() as chromium:
        yield chromium


def demo(**script: Any) -> dict[str, Any]:
    return {"demo": {"provider": "scripted", "options": {"script": script}}}


def words(count: int) -> list[str]:
    """Tokens whose text has no outer whitespace (a rendered paragraph drops it)."""
    return ["word00", *(f" word{i:02d}" for i in range(1, count))]


@contextlib.asynccontextmanager
async def chat_page(
    browser: Any,
    gateway: Gateway,
    path: str = "/",
    before_load: Callable[[Any], Awaitable[None]] | None = None,
    **context: Any,
) -> AsyncIterator[Any]:
    """The page, loaded; closed before the gateway stops so no connection outlives it.
    ``before_load`` gets the browser context first (to route what the page asks as it loads)."""
    options = {"viewport": {"width": 1000, "height": 640}, "bypass_csp": True, **context}
    ctx = await browser.new_context(**options)
    try:
        if before_load is not None:
            await before_load(ctx)
        await ctx.add_init_script(RECORDER)
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors
        await page.goto(gateway.url + path)
        await page.wait_for_selector("#model option", state="attached", timeout=WAIT_MS)
        yield page
    finally:
        await ctx.close()


async def ask(page: Any, text: str) -> None:
    await page.focus("#input")
    await page.keyboard.type(text)
    await page.keyboard.press("Enter")


async def refuse_new_messages(page: Any) -> None:
    """A conversation turn's POST answers 502 ``upstream_unavailable`` until unrouted."""
    refused = {
        "error": {"message": "connect failed", "type": "api", "code": "upstream_unavailable"}
    }
    await page.route(
        "**/messages",
        lambda route: (
            route.fulfill(status=502, json=refused)
            if route.request.method == "POST"
            else route.fallback()
        ),
    )


async def reply_text(page: Any) -> str:
    text: str = await page.text_content(".message.assistant:last-of-type .body") or ""
    return text


async def wait_for_reply_longer_than(page: Any, chars: int) -> None:
    await page.wait_for_function(
        f"(document.querySelector('.message.assistant:last-of-type .body')?.textContent ?? '')"
        f".length > {chars}",
        timeout=WAIT_MS,
    )


async def wait_until_done(page: Any) -> None:
    await page.wait_for_selector(
        ".message.assistant:last-of-type[data-status=complete]", timeout=WAIT_MS
    )


async def fresh_database(tmp_path: Path) -> str:
    return await upgraded(f"sqlite:///{tmp_path / 'page.db'}")


SHOWCASE = (
    "Each token reaches the page as soon as the model writes it:\n\n"
    "1. the provider yields a **token**\n"
    "2. the relay appends it to the stream's log\n"
    "3. every viewer reads the log from its own offset\n\n"
    "```python\nasync for event in stream:\n    print(event.text)\n```\n\n"
    "A dropped connection resumes with `Last-Event-ID`; see "
    "[the spec](https://html.spec.whatwg.org/multipage/server-sent-events.html)."
)


async def test_tokens_appear_progressively_with_status_and_markdown(
    browser: Any, tmp_path: Path
) -> None:
    models = demo(text=SHOWCASE, delay=0.03, first_delay=0.4)
    database = await fresh_database(tmp_path)
    async with (
        serve(models=models, database_url=database) as gateway,
        chat_page(browser, gateway) as page,
    ):
        # Keyboard only: Shift+Enter is a new line, Enter sends.
        await page.focus("#input")
        await page.keyboard.type("How does streaming work")
        await page.keyboard.press("Shift+Enter")
        await page.keyboard.type("here?")
        await page.keyboard.press("Enter")
        await wait_until_done(page)

        user = await page.text_content(".message.user .body")
        assert user == "How does streaming work\nhere?"
        paints: list[str] = await page.evaluate("window.__paints")
        assert len(paints) >= 3, paints
        statuses: list[str] = await page.evaluate("window.__statuses")
        assert "thinking…" in statuses
        assert any("tokens/s" in s and s.startswith("streaming") for s in statuses), statuses
        assert await page.locator(".message.assistant ol li").count() == 3
        assert await page.text_content(".message.assistant pre code") == (
            "async for event in stream:\n    print(event.text)"
        )
        link = page.locator(".message.assistant a")
        assert await link.get_attribute("rel") == "noopener noreferrer"
        assert (await link.get_attribute("href") or "").startswith("https://html.spec.whatwg.org")
        assert await page.is_visible(".message.assistant .copy")
        assert await page.is_visible(".message.assistant .regenerate")
        assert page.errors == []
        shot = DOCS_SCREENSHOT if os.environ.get("TOKENRELAY_SCREENSHOT") else tmp_path / "shot.png"
        await page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size < 200_000


async def test_stop_cancels_the_generation_on_the_server(browser: Any) -> None:
    async with (
        serve(models=demo(tokens=words(300), delay=0.03)) as gateway,
        chat_page(browser, gateway) as page,
    ):
        await ask(page, "talk for a long time")
        await wait_for_reply_longer_than(page, 40)
        [stream] = gateway.relay.streams.values()
        assert not stream.finished
        await page.click("#stop")
        await page.wait_for_selector(
            ".message.assistant:last-of-type[data-status=cancelled]", timeout=WAIT_MS
        )
        assert stream.status == "cancelled"
        assert stream.task is not None and stream.task.done()
        last = stream.log.events[-1]
        assert isinstance(last, Failed) and last.error.code == "cancelled"
        sent = sum(isinstance(e, TextDelta) for e in stream.log.events)
        assert sent < 300
        assert await page.text_content("#status") == "Stopped."
        assert await page.is_visible("#send")
        assert not await page.is_visible("#stop")


async def test_a_connection_cut_mid_reply_resumes_to_the_exact_reply(browser: Any) -> None:
    tokens = words(45)
    async with (
        serve(models=demo(tokens=tokens, delay=0.04)) as gateway,
        chat_page(browser, gateway) as page,
    ):
        await ask(page, "keep going")
        await wait_for_reply_longer_than(page, 60)
        # Drop every connection from the server's side, as a lost network would.
        for connection in list(gateway.server.server_state.connections):
            connection.transport.abort()  # type: ignore[union-attr]
        await wait_until_done(page)

        assert await reply_text(page) == "".join(tokens)
        assert gateway.relay.started_total == 1
        statuses: list[str] = await page.evaluate("window.__statuses")
        assert any(s.startswith("connection lost, reconnecting") for s in statuses), statuses
        assert page.errors == []


async def test_a_reload_mid_reply_reattaches_to_the_live_stream(browser: Any) -> None:
    tokens = words(60)
    async with (
        serve(models=demo(tokens=tokens, delay=0.04)) as gateway,
        chat_page(browser, gateway) as page,
    ):
        await ask(page, "a long one")
        await wait_for_reply_longer_than(page, 60)
        [stream] = gateway.relay.streams.values()
        await page.reload()
        # Following the live reply again, not showing a stored copy once it has ended.
        await page.wait_for_selector(
            ".message.assistant:last-of-type[aria-busy=true]", timeout=WAIT_MS
        )
        assert not stream.finished
        statuses: list[str] = await page.evaluate("window.__statuses")
        assert "re-attaching to the reply…" in statuses
        await wait_until_done(page)

        assert await reply_text(page) == "".join(tokens)
        assert await page.locator(".message.user").count() == 1
        assert gateway.relay.started_total == 1
        paints: list[str] = await page.evaluate("window.__paints")
        assert len(paints) >= 2, "the reply did not grow after the reload"
        assert await page.evaluate("sessionStorage.getItem('tokenrelay.live')") is None


async def test_emoji_and_cjk_split_mid_character_upstream_arrive_intact(browser: Any) -> None:
    text = "Emoji 👋🏽 🇯🇵 👩‍👩‍👧 and CJK 世界、こんにちは、한국어 — done."
    async with (
        serve(models=demo(text=text, split_utf8=True, delay=0.01)) as gateway,
        chat_page(browser, gateway) as page,
    ):
        await ask(page, "你好 👋")
        await wait_until_done(page)
        assert await reply_text(page) == text
        assert await page.text_content(".message.user .body") == "你好 👋"


async def test_html_in_a_reply_is_shown_as_text_and_never_runs(browser: Any) -> None:
    text = (
        'Look: <img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> '
        '<a href="javascript:window.__pwned=3">click</a> [me](javascript:window.__pwned=4) **bold**'
    )
    async with serve(models=demo(text=text)) as gateway, chat_page(browser, gateway) as page:
        await ask(page, "<b>and mine</b>")
        await wait_until_done(page)
        assert await page.locator("#messages img, #messages script, #messages b").count() == 0
        assert await page.locator("#messages a").count() == 0
        assert await page.locator(".message.assistant strong").count() == 1
        shown = await reply_text(page)
        assert '<img src=x onerror="window.__pwned=1">' in shown
        assert "<script>window.__pwned=2</script>" in shown
        assert "[me](javascript:window.__pwned=4)" in shown
        assert await page.evaluate("window.__pwned") is None
        assert await page.text_content(".message.user .body") == "<b>and mine</b>"


async def test_without_stored_conversations_the_page_keeps_one_in_the_tab(browser: Any) -> None:
    async with (
        serve(models=demo(echo="history", delay=0.01)) as gateway,
        chat_page(browser, gateway) as page,
    ):
        # A gateway without the conversations API answers 404 there.
        await page.route(
            "**/v1/conversations**",
            lambda route: route.fulfill(
                status=404,
                content_type="application/json",
                body='{"error": {"message": "no route", "type": "not_found", "code": "not_found"}}',
            ),
        )
        await page.reload()
        await page.wait_for_selector("#memory-note:not([hidden])", timeout=WAIT_MS)
        await ask(page, "first")
        await wait_until_done(page)
        await ask(page, "second")
        await wait_until_done(page)
        assert await reply_text(page) == "user: first | assistant: user: first | user: second"
        await page.reload()
        await page.wait_for_selector(".message.assistant >> nth=1", timeout=WAIT_MS)
        assert await page.locator(".message").count() == 4


async def test_a_key_in_the_address_is_kept_sent_as_bearer_and_removed(browser: Any) -> None:
    # Auth is on and the keys are real, so the gateway itself checks that the page sends them:
    # a request without the bearer is a 401, and the page would ask for a key instead.
    async with serve(**secured()) as gateway:
        accounts = gateway.services.accounts
        first, first_key = await issue_key(accounts, "page-user", ("chat",))
        async with chat_page(browser, gateway, path=f"/?key={first_key}", bypass_csp=False) as page:
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            assert page.url == gateway.url + "/"
            stored = await page.evaluate("localStorage.getItem('tokenrelay.key')")
            assert stored == f'"{first_key}"'
            await ask(page, "hello")
            await wait_until_done(page)

            # The key is revoked: the page asks for another and goes on with it.
            await accounts.revoke_key(first.id)
            gateway.services.authenticator.forget_keys()  # as the admin route does
            await page.reload()
            await page.wait_for_selector("#key-dialog[open]", timeout=WAIT_MS)
            _, second_key = await issue_key(accounts, "page-user", ("chat",))
            await page.fill("#key-input", second_key)
            await page.keyboard.press("Enter")
            await page.wait_for_selector("#model option", state="attached", timeout=WAIT_MS)
            await ask(page, "again")
            await wait_until_done(page)
            # Under the page's own Content-Security-Policy nothing was refused but the 401.
            assert [c for c in console if "401" not in c] == []


async def test_on_a_dark_phone_the_list_opens_from_the_menu_button(browser: Any) -> None:
    phone = {"viewport": {"width": 390, "height": 844}, "color_scheme": "dark"}
    async with serve() as gateway, chat_page(browser, gateway, **phone) as page:
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(23, 24, 27)"
        assert not await page.is_visible("#new-chat")
        await page.focus("#menu")
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#new-chat", state="visible", timeout=WAIT_MS)
        assert await page.get_attribute("#menu", "aria-expanded") == "true"
        await page.keyboard.press("Escape")
        await page.wait_for_selector("#new-chat", state="hidden", timeout=WAIT_MS)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390


async def test_regenerate_asks_again_in_place_and_copy_takes_the_markdown(browser: Any) -> None:
    async with (
        serve(models=demo(delay=0.01)) as gateway,
        chat_page(browser, gateway) as page,
    ):
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        await ask(page, "say **this**")
        await wait_until_done(page)
        await page.click(".message.assistant .copy")
        assert await page.evaluate("navigator.clipboard.readText()") == "You said: say **this**"
        await page.click(".message.assistant .regenerate")
        await until(lambda: gateway.relay.started_total == 2)
        await wait_until_done(page)
        assert await page.locator(".message.user").count() == 1
        assert await page.locator(".message.assistant").count() == 1
        assert await reply_text(page) == "You said: say this"


async def test_a_failure_reads_as_a_human_error_and_retry_sends_again(browser: Any) -> None:
    async with serve() as gateway, chat_page(browser, gateway) as page:
        await refuse_new_messages(page)
        await ask(page, "are you there")
        await page.wait_for_selector("#status.error button", timeout=WAIT_MS)
        status = await page.text_content("#status")
        assert status is not None and "The model's server could not be reached." in status
        assert "connect failed" in status
        await page.unroute("**/messages")
        await page.click("#status button")
        await wait_until_done(page)
        assert await reply_text(page) == "You said: are you there"
        assert await page.locator(".message.user").count() == 1


async def test_a_message_sent_while_the_page_connects_waits_for_it(browser: Any) -> None:
    """A slow server: the page shows its model list before it knows whether the server keeps
    conversations. A message typed then is sent once it knows, and the end of connecting does
    not wipe the reply's status line (an error shown there was cleared once, on a busy CI)."""
    connected = asyncio.Event()

    async def held(route: Any) -> None:
        await connected.wait()
        await route.fallback()

    async def hold_the_probe(ctx: Any) -> None:
        await ctx.route("**/v1/conversations?limit=1", held)

    async with serve() as gateway, chat_page(browser, gateway, before_load=hold_the_probe) as page:
        await refuse_new_messages(page)
        await ask(page, "are you there")
        assert await page.locator(".message.user").count() == 0
        assert await page.input_value("#input") == "are you there"
        connected.set()
        await page.wait_for_selector("#status.error button", timeout=WAIT_MS)
        await page.unroute("**/messages")
        # Connecting ended before the message left, so nothing clears the error after it.
        status = await page.text_content("#status")
        assert status is not None and "The model's server could not be reached." in status
        assert await page.input_value("#input") == ""
        await page.click("#status button")
        await wait_until_done(page)
        assert await reply_text(page) == "You said: are you there"


async def test_a_queued_reply_shows_its_place_in_the_queue(browser: Any) -> None:
    frames = (
        'id: 1\nevent: stream\ndata: {"stream_id": "str_q", "model": "demo"}\n\n'
        'id: 2\nevent: queued\ndata: {"position": 2}\n\n'
        'id: 3\nevent: token\ndata: {"text": "served"}\n\n'
        'id: 4\nevent: done\ndata: {"finish_reason": "stop"}\n\n'
    )
    async with serve() as gateway, chat_page(browser, gateway) as page:
        # The scripted model never queues; a local model busy with another reply does.
        await page.route(
            "**/messages",
            lambda route: route.fulfill(status=200, content_type="text/event-stream", body=frames),
        )
        await ask(page, "wait your turn")
        await wait_until_done(page)
        statuses: list[str] = await page.evaluate("window.__statuses")
        assert "queued, #2" in statuses
        assert await reply_text(page) == "served"


THOUGHT = "The user wants the weather, so I should call the weather tool for Paris first."
WEATHER_CALL = {"id": "call_w1", "name": "get_weather", "arguments": {"city": "Paris"}}


async def test_reasoning_streams_collapsed_and_a_tool_call_shows_as_a_call_not_text(
    browser: Any, tmp_path: Path
) -> None:
    models = demo(reasoning=THOUGHT, tool_calls=[{**WEATHER_CALL, "fragment": 3}], delay=0.05)
    database = await fresh_database(tmp_path)
    last = ".message.assistant:last-of-type"
    async with (
        serve(models=models, database_url=database) as gateway,
        chat_page(browser, gateway) as page,
    ):
        await ask(page, "Weather in Paris?")
        await page.wait_for_selector(f"{last}[aria-busy=true] details.reasoning", timeout=WAIT_MS)
        thinking = await page.text_content(f"{last} details.reasoning summary")
        open_while_streaming = await page.get_attribute(f"{last} details.reasoning", "open")
        text_hidden = not await page.is_visible(f"{last} .reasoning-text")
        await wait_until_done(page)
        await page.click(f"{last} details.reasoning summary")
        shown = await page.text_content(f"{last} .reasoning-text")
        name = await page.text_content(f"{last} .tool-call .tool-name")
        arguments = await page.text_content(f"{last} .tool-call .tool-arguments")
        # Everything in the reply's body but the reasoning and the call: the reply's text.
        prose = await page.evaluate(
            f"""[...document.querySelector('{last} .body').children]
                .filter((el) => !el.matches('.reasoning, .tool-call'))
                .map((el) => el.textContent).join('')"""
        )
        await page.reload()
        await page.wait_for_selector(f"{last} .tool-call", timeout=WAIT_MS)
        stored_name = await page.text_content(f"{last} .tool-call .tool-name")
        stored_summary = await page.text_content(f"{last} details.reasoning summary")
        stored_thought = await page.text_content(f"{last} .reasoning-text")
        assert page.errors == []

    assert thinking == "Thinking…" and open_while_streaming is None and text_hidden
    assert shown == THOUGHT
    assert name == "get_weather"
    assert arguments is not None and orjson.loads(arguments) == {"city": "Paris"}
    assert prose == ""
    assert (stored_name, stored_summary, stored_thought) == ("get_weather", "Thought", THOUGHT)


async def test_reasoning_the_provider_redacted_shows_that_it_thought_and_nothing_of_it(
    browser: Any, tmp_path: Path
) -> None:
    models = demo(redacted=["RW5jcnlwdGVk"], text="Here you go.")
    database = await fresh_database(tmp_path)
    last = ".message.assistant:last-of-type"
    async with (
        serve(models=models, database_url=database) as gateway,
        chat_page(browser, gateway) as page,
    ):
        await ask(page, "Think hard.")
        await wait_until_done(page)
        live = await page.text_content(f"{last} .reasoning-text")
        await page.reload()
        await page.wait_for_selector(f"{last} details.reasoning", timeout=WAIT_MS)
        stored = await page.text_content(f"{last} .reasoning-text")
        body = await page.text_content(f"{last} .body")
        assert page.errors == []
    assert live == stored == "(the provider keeps this reasoning hidden)"
    assert body is not None and "RW5j" not in body and "Here you go." in body


async def test_a_reload_mid_reasoning_reattaches_with_no_gap_or_repeat(browser: Any) -> None:
    thought = " ".join(f"step{i:02d}" for i in range(40))
    models = demo(reasoning=thought, text="Done thinking.", tool_calls=[WEATHER_CALL], delay=0.04)
    last = ".message.assistant:last-of-type"
    async with (
        serve(models=models) as gateway,
        chat_page(browser, gateway) as page,
    ):
        await ask(page, "think hard")
        await page.wait_for_function(
            f"(document.querySelector('{last} .reasoning-text')?.textContent ?? '').length > 60",
            timeout=WAIT_MS,
        )
        [stream] = gateway.relay.streams.values()
        await page.reload()
        await page.wait_for_selector(f"{last}[aria-busy=true]", timeout=WAIT_MS)
        reattached = not stream.finished
        await wait_until_done(page)
        shown = await page.text_content(f"{last} .reasoning-text")
        name = await page.text_content(f"{last} .tool-call .tool-name")
        started = gateway.relay.started_total
        assert page.errors == []

    assert reattached and started == 1
    assert shown == thought
    assert name == "get_weather"
