"""The chat page's files: served from the package with their types, ETags and policies."""

from __future__ import annotations

import aiohttp

from tests.gateway import serve
from tokenrelay.web.page import TYPES


async def test_the_page_and_its_files_are_served_with_their_content_types(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        async with http.get(gateway.url + "/") as response:
            assert response.status == 200
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert response.headers["referrer-policy"] == "no-referrer"
            assert '<script type="module" src="static/app.js">' in await response.text()
        for name, content_type in TYPES.items():
            async with http.get(f"{gateway.url}/static/{name}") as response:
                assert response.status == 200, name
                assert response.headers["content-type"] == content_type
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-content-type-options"] == "nosniff"
                assert len(await response.read()) > 100


async def test_an_unchanged_file_is_revalidated_with_a_304(http: aiohttp.ClientSession) -> None:
    async with serve() as gateway:
        url = gateway.url + "/static/tokenrelay.js"
        async with http.get(url) as response:
            etag = response.headers["etag"]
        async with http.get(url, headers={"If-None-Match": etag}) as response:
            assert response.status == 304
            assert await response.read() == b""
        async with http.get(url, headers={"If-None-Match": '"other"'}) as response:
            assert response.status == 200


async def test_only_the_named_files_are_served(http: aiohttp.ClientSession) -> None:
    async with serve() as gateway:
        for path in ("/static/__init__.py", "/static/..%2Fpage.py", "/static/", "/static/x.js"):
            async with http.get(gateway.url + path) as response:
                assert response.status == 404, path
                assert (await response.json())["error"]["code"] == "not_found"
