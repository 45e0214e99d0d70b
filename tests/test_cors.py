"""A page on another origin calls the gateway from headless Chromium: CORS, stream and resume.

The page is served by a server of the test's own on another loopback origin
(``http://localhost:<port>`` against the gateway's ``http://127.0.0.1:<port>``), so Chromium
enforces CORS as it would for a front end on its own dev server or CDN.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.browsers import CHROMIUM, launched
from tests.credentials import secured
from tests.gateway import free_socket, serve
from tokenrelay.auth.keys import issue_key

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")

# Runs in the page: a streamed reply read as it comes, then a resume after its second event.
SCRIPT = """
async ([base, key]) => {
  const auth = {Authorization: `Bearer ${key}`};
  const started = await fetch(`${base}/v1/streams`, {
    method: "POST",
    headers: {...auth, "Content-Type": "application/json", "X-Request-Id": "page-1"},
    body: JSON.stringify({
      messages: [{role: "user", content: "hi"}],
      script: {text: "one two three", delay: 0.05},
    }),
  });
  const reader = started.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    text += decoder.decode(value, {stream: true});
  }
  const streamId = started.headers.get("X-Stream-Id");
  const resumed = await fetch(`${base}/v1/streams/${streamId}`, {
    headers: {...auth, "Last-Event-ID": "2"},
  });
  return {
    status: started.status,
    streamId,
    requestId: started.headers.get("X-Request-Id"),
    remaining: started.headers.get("x-ratelimit-remaining-requests"),
    text,
    resumedStatus: resumed.status,
    resumed: await resumed.text(),
  };
}
"""


@contextlib.asynccontextmanager
async def page_origin() -> AsyncIterator[str]:
    """An empty page on ``http://localhost:<port>``: the other origin."""
    app = web.Application()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>app</title>", content_type="text/html")

    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    with free_socket() as sock:
        port = sock.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://localhost:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    async with launched() as browser:
        yield browser


async def test_a_page_on_an_allowed_origin_streams_a_reply_and_resumes_it(chromium: Any) -> None:
    async with page_origin() as origin:
        overrides = {
            **secured(),
            "cors": {"allowed_origins": [origin]},
            "rate_limits": {"requests_per_minute": 100},
        }
        async with serve(**overrides) as gateway:
            _, key = await issue_key(gateway.services.accounts, "page-user", ("chat",))
            context = await chromium.new_context()
            try:
                page = await context.new_page()
                await page.goto(origin + "/")
                got = await page.evaluate(SCRIPT, [gateway.url, key])
            finally:
                await context.close()

    assert got["status"] == 200 and got["streamId"].startswith("str_")
    assert got["requestId"] == "page-1"
    assert got["remaining"] is not None
    assert "event: done" in got["text"] and "three" in got["text"]
    assert got["resumedStatus"] == 200
    assert "id: 1\n" not in got["resumed"] and "id: 2\n" not in got["resumed"]
    assert "event: done" in got["resumed"]


async def test_a_page_on_another_origin_is_refused_by_default(chromium: Any) -> None:
    async with page_origin() as origin, serve() as gateway:
        context = await chromium.new_context()
        try:
            page = await context.new_page()
            await page.goto(origin + "/")
            outcome = await page.evaluate(
                """async (base) => {
                    try {
                      await fetch(`${base}/v1/streams`, {method: "POST",
                        headers: {"Content-Type": "application/json"}, body: "{}"});
                      return "answered";
                    } catch (error) { return "blocked"; }
                }""",
                gateway.url,
            )
        finally:
            await context.close()

    assert outcome == "blocked"


async def test_preflight_names_what_a_page_may_send_and_read(http: aiohttp.ClientSession) -> None:
    origin = "https://app.example"
    async with serve(cors={"allowed_origins": [origin]}) as gateway:
        headers = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with http.options(f"{gateway.url}/v1/chat/completions", headers=headers) as pre:
            preflight = pre.status, pre.headers
        async with http.options(
            f"{gateway.url}/v1/chat/completions",
            headers={**headers, "Origin": "https://evil.example"},
        ) as refused:
            refused_status = refused.status
        async with http.get(f"{gateway.url}/v1/models", headers={"Origin": origin}) as models:
            exposed = models.headers["Access-Control-Expose-Headers"]

    status, pre_headers = preflight
    assert status == 200
    assert pre_headers["Access-Control-Allow-Origin"] == origin
    assert pre_headers["Access-Control-Allow-Credentials"] == "true"
    assert "authorization" in pre_headers["Access-Control-Allow-Headers"].lower()
    assert refused_status == 400
    for name in ("X-Stream-Id", "X-Message-Id", "Retry-After", "x-ratelimit-remaining-tokens"):
        assert name in exposed
