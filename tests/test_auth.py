"""Who may call: API keys, JWT bearer tokens, scopes, and refusals that say nothing useful.

Every refusal is compared with every other: an attacker must not tell a revoked key from a
typo, an expired token from a forged one, or learn anything of the database behind them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select, text

from tests.credentials import (
    AUDIENCE,
    ISSUER,
    SECRET,
    bearer,
    claims,
    hs256,
    key_for,
    secured,
    with_jwt,
)
from tests.gateway import Gateway, serve
from tests.processes import serve_process, upgraded
from tokenrelay import cli
from tokenrelay.auth.bootstrap import RefuseToServe, first_run_key
from tokenrelay.config import load_settings
from tokenrelay.store.accounts import api_keys, users
from tokenrelay.store.engine import create_engine

ASK = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
REFUSAL = {
    "error": {
        "message": "a valid API key or bearer token is required",
        "type": "authentication_error",
        "code": "unauthorized",
    }
}
# (method, path, JSON body): every route that is not open.
GUARDED = [
    ("POST", "/v1/chat/completions", ASK),
    ("GET", "/v1/models", None),
    ("POST", "/v1/streams", ASK),
    ("GET", "/v1/streams/str_x", None),
    ("DELETE", "/v1/streams/str_x", None),
    ("POST", "/chat/stream", ASK),
    ("POST", "/api/v1/chat/stream", ASK),
    ("POST", "/v1/conversations", {}),
    ("GET", "/v1/conversations", None),
    ("GET", "/v1/conversations/conv_x", None),
    ("PATCH", "/v1/conversations/conv_x", {"title": "t"}),
    ("DELETE", "/v1/conversations/conv_x", None),
    ("GET", "/v1/conversations/conv_x/messages", None),
    ("POST", "/v1/conversations/conv_x/messages", {"content": "hi"}),
    ("GET", "/metrics", None),
    ("GET", "/v1/admin/keys", None),
    ("POST", "/v1/admin/keys", {"owner": "mallory", "scopes": ["admin"]}),
    ("DELETE", "/v1/admin/keys/key_x", None),
    ("GET", "/v1/admin/usage", None),
    ("GET", "/no/such/route", None),
]


async def call(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    method: str,
    path: str,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    async with http.request(
        method, gateway.url + path, json=json_body, headers=headers or {}
    ) as response:
        return response.status, dict(response.headers), await response.read()


async def test_every_route_but_health_and_the_page_needs_a_key(
    http: aiohttp.ClientSession,
) -> None:
    async with serve(**secured()) as gateway:
        guarded = [await call(http, gateway, *route) for route in GUARDED]
        opened = [
            (await call(http, gateway, "GET", path))[0]
            for path in ("/healthz", "/readyz", "/", "/static/app.js")
        ]

    for (_, path, _), (status, headers, raw) in zip(GUARDED, guarded, strict=True):
        assert status == 401, path
        assert orjson.loads(raw) == REFUSAL, path
        assert headers["WWW-Authenticate"] == 'Bearer realm="tokenrelay"'
    assert opened == [200, 200, 200, 200]


BAD = {
    "missing": None,
    "empty bearer": "Bearer ",
    "another scheme": "Basic dXNlcjpwYXNz",
    "sql injection": "Bearer ' OR '1'='1",
    "sql injection in a key": "Bearer tr_' OR '1'='1' --",
    "well-formed unknown key": "Bearer tr_" + "A" * 40,
    "key one character short": "Bearer tr_" + "A" * 39,
    "huge token": "Bearer " + "x" * 10_000,
    "jwt-shaped garbage": "Bearer aaa.bbb.ccc",
    "non-ascii": "Bearer tr_é" + "A" * 39,
}


async def test_bad_credentials_all_get_the_same_fast_401_and_no_500(
    http: aiohttp.ClientSession,
) -> None:
    async with serve(**with_jwt()) as gateway:
        answers = {}
        for name, authorization in BAD.items():
            headers = {} if authorization is None else {"Authorization": authorization}
            started = time.monotonic()
            status, _, raw = await call(http, gateway, "POST", "/v1/chat/completions", ASK, headers)
            answers[name] = (status, orjson.loads(raw), time.monotonic() - started)

    for name, (status, body, took) in answers.items():
        assert (status, body) == (401, REFUSAL), name
        assert took < 1, name


async def test_a_key_works_and_is_stored_only_as_its_hash(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url = await _fresh_database(tmp_path)
    async with serve(database_url=url, **secured()) as gateway:
        admin = await key_for(gateway, "root", ("admin",))
        status, _, raw = await call(
            http, gateway, "POST", "/v1/admin/keys", {"owner": "alice"}, bearer(admin)
        )
        created = orjson.loads(raw)
        models = (await call(http, gateway, "GET", "/v1/models", None, bearer(created["key"])))[0]
        listed = orjson.loads(
            (await call(http, gateway, "GET", "/v1/admin/keys", None, bearer(admin)))[2]
        )
        stored = await _rows(url, select(api_keys.c.key_hash).where(api_keys.c.id == created["id"]))
    database = b"".join(path.read_bytes() for path in tmp_path.glob("auth.db*"))

    assert status == 201
    assert created["key"].startswith("tr_") and len(created["key"]) == 43
    assert created["key"].startswith(created["prefix"])
    assert models == 200
    assert stored == [(hashlib.sha256(created["key"].encode()).hexdigest(),)]
    assert created["key"].encode() not in database
    assert all("key" not in entry for entry in listed["data"])
    assert {entry["owner"] for entry in listed["data"]} == {"root", "alice"}


async def test_a_revoked_key_is_refused_at_once(http: aiohttp.ClientSession) -> None:
    async with serve(**secured()) as gateway:
        admin = await key_for(gateway, "root", ("admin",))
        _, _, raw = await call(
            http, gateway, "POST", "/v1/admin/keys", {"owner": "bob"}, bearer(admin)
        )
        key = orjson.loads(raw)
        before = (await call(http, gateway, "GET", "/v1/models", None, bearer(key["key"])))[0]
        revoked = await call(
            http, gateway, "DELETE", f"/v1/admin/keys/{key['id']}", None, bearer(admin)
        )
        after = await call(http, gateway, "GET", "/v1/models", None, bearer(key["key"]))
        missing = await call(http, gateway, "DELETE", "/v1/admin/keys/key_x", None, bearer(admin))

    assert before == 200
    assert revoked[0] == 200 and orjson.loads(revoked[2])["revoked_at"] is not None
    assert (after[0], orjson.loads(after[2])) == (401, REFUSAL)
    assert missing[0] == 404


async def test_an_expired_key_is_refused_even_while_cached(http: aiohttp.ClientSession) -> None:
    async with serve(**secured(key_cache_ttl=60)) as gateway:
        admin = await key_for(gateway, "root", ("admin",))
        _, _, raw = await call(
            http,
            gateway,
            "POST",
            "/v1/admin/keys",
            {"owner": "bob", "expires_in": 0.5},
            bearer(admin),
        )
        key = orjson.loads(raw)["key"]
        before = (await call(http, gateway, "GET", "/v1/models", None, bearer(key)))[0]
        await asyncio.sleep(0.7)
        after = await call(http, gateway, "GET", "/v1/models", None, bearer(key))

    assert before == 200
    assert (after[0], orjson.loads(after[2])) == (401, REFUSAL)


async def test_a_lifetime_past_any_date_is_a_400_not_a_500(http: aiohttp.ClientSession) -> None:
    async with serve(**secured()) as gateway:
        admin = bearer(await key_for(gateway, "root", ("admin",)))
        status, _, raw = await call(
            http, gateway, "POST", "/v1/admin/keys", {"owner": "bob", "expires_in": 1e12}, admin
        )

    assert status == 400
    assert orjson.loads(raw)["error"]["code"] == "invalid_request"


async def test_a_chat_key_is_forbidden_the_admin_routes(http: aiohttp.ClientSession) -> None:
    async with serve(**secured()) as gateway:
        chat = bearer(await key_for(gateway, "alice"))
        admin = bearer(await key_for(gateway, "root", ("admin",)))
        as_chat = [
            (await call(http, gateway, method, path, body, chat))[0]
            for method, path, body in GUARDED
            if path.startswith("/v1/admin") or path == "/metrics"
        ]
        as_admin = [
            (await call(http, gateway, "GET", path, None, admin))[0]
            for path in ("/v1/admin/keys", "/v1/admin/usage", "/metrics", "/v1/models")
        ]

    assert set(as_chat) == {403}
    assert as_admin == [200, 200, 200, 200]


async def test_x_api_key_is_accepted_on_the_anthropic_wire_only(
    http: aiohttp.ClientSession,
) -> None:
    message = {"model": "demo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with serve(**secured()) as gateway:
        key = await key_for(gateway, "alice")
        anthropic = await call(http, gateway, "POST", "/v1/messages", message, {"x-api-key": key})
        wrong = await call(http, gateway, "POST", "/v1/messages", message, {"x-api-key": "nope"})
        openai = await call(http, gateway, "POST", "/v1/chat/completions", ASK, {"x-api-key": key})

    assert anthropic[0] == 200
    # Refused in Anthropic's own error shape, so its SDK raises AuthenticationError.
    assert wrong[0] == 401
    assert orjson.loads(wrong[2]) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": REFUSAL["error"]["message"]},
    }
    assert openai[0] == 401


async def test_a_key_carries_its_own_limits_over_the_users(http: aiohttp.ClientSession) -> None:
    hang = ASK | {"stream": True, "script": {"hang_after": 0}}
    async with serve(rate_limits={"concurrent_streams": 5}, **secured()) as gateway:
        tight = bearer(await key_for(gateway, "alice", limits={"concurrent_streams": 1}))
        roomy = bearer(await key_for(gateway, "alice"))
        url = f"{gateway.url}/v1/chat/completions"
        first = await http.post(url, json=hang, headers=tight)
        second = await http.post(url, json=hang, headers=tight)
        # The user's own limit still counts the stream the tight key holds.
        third = await http.post(url, json=hang, headers=roomy)
        statuses = [r.status for r in (first, second, third)]
        for response in (first, second, third):
            response.close()

    assert statuses == [200, 429, 200]


def _keypair(kind: str) -> tuple[Any, bytes]:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture(scope="module")
def rsa_key() -> tuple[Any, bytes]:
    return _keypair("rsa")


@pytest.fixture(scope="module")
def ec_key() -> tuple[Any, bytes]:
    return _keypair("ec")


def _unsigned(payload: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


async def test_jwt_hs256_is_checked_for_signature_time_issuer_and_audience(
    http: aiohttp.ClientSession, rsa_key: tuple[Any, bytes]
) -> None:
    now = int(time.time())
    tokens = {
        "valid": hs256(),
        "expired": hs256(exp=now - 120),
        "not yet valid": hs256(nbf=now + 120),
        "wrong audience": hs256(aud="someone-else"),
        "wrong issuer": hs256(iss="https://evil.test"),
        "no expiry": jwt.encode(
            {k: v for k, v in claims().items() if k != "exp"}, SECRET, algorithm="HS256"
        ),
        "no subject": jwt.encode(
            {k: v for k, v in claims().items() if k != "sub"}, SECRET, algorithm="HS256"
        ),
        "forged": jwt.encode(claims(), "another-secret-of-some-thirty-two-bytes!!", "HS256"),
        "alg none": _unsigned(claims()),
        "signed HS256 with the public RSA key": _confused(rsa_key[1]),
        "tampered payload": _tampered(hs256()),
    }
    async with serve(**with_jwt()) as gateway:
        answers = {
            name: await call(http, gateway, "GET", "/v1/models", None, bearer(token))
            for name, token in tokens.items()
        }

    assert answers.pop("valid")[0] == 200
    for name, (status, _, raw) in answers.items():
        assert (status, orjson.loads(raw)) == (401, REFUSAL), name


def _confused(public_pem: bytes) -> str:
    # The classic algorithm confusion: the public key, which anyone has, used as an HMAC secret.
    import hmac

    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    signing_input = header + b"." + payload
    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def _tampered(token: str) -> str:
    header, _, signature = token.split(".")
    payload = base64.urlsafe_b64encode(json.dumps(claims(sub="admin")).encode()).rstrip(b"=")
    return f"{header}.{payload.decode()}.{signature}"


async def test_jwt_rs256_with_a_public_key_file_refuses_hs256_signed_with_that_key(
    http: aiohttp.ClientSession, tmp_path: Path, rsa_key: tuple[Any, bytes]
) -> None:
    private, public = rsa_key
    pem = tmp_path / "public.pem"
    pem.write_bytes(public)
    auth = {"jwt_public_key_file": str(pem), "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
    async with serve(**secured(**auth)) as gateway:
        good = await call(
            http, gateway, "GET", "/v1/models", None, bearer(jwt.encode(claims(), private, "RS256"))
        )
        confused = await call(http, gateway, "GET", "/v1/models", None, bearer(_confused(public)))
        hs = await call(http, gateway, "GET", "/v1/models", None, bearer(hs256()))

    assert good[0] == 200
    assert confused[0] == 401
    assert hs[0] == 401


async def test_jwt_es256_from_a_jwks_file_picks_the_key_by_kid(
    http: aiohttp.ClientSession, tmp_path: Path, ec_key: tuple[Any, bytes]
) -> None:
    private, _ = ec_key
    other, _ = _keypair("ec")
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk | {"kid": "k1", "use": "sig"}]}))
    auth = {"jwt_jwks_file": str(jwks), "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
    signed = {
        "right kid": jwt.encode(claims(), private, "ES256", headers={"kid": "k1"}),
        "wrong kid": jwt.encode(claims(), private, "ES256", headers={"kid": "k2"}),
        "another key": jwt.encode(claims(), other, "ES256", headers={"kid": "k1"}),
    }
    async with serve(**secured(**auth)) as gateway:
        statuses = {
            name: (await call(http, gateway, "GET", "/v1/models", None, bearer(token)))[0]
            for name, token in signed.items()
        }

    assert statuses == {"right kid": 200, "wrong kid": 401, "another key": 401}


async def test_a_jwt_subject_is_the_user_and_appears_on_first_use(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url = await _fresh_database(tmp_path)
    async with serve(database_url=url, **with_jwt()) as gateway:
        carol = bearer(hs256(sub="carol@example.com"))
        dave = bearer(hs256(sub="dave"))
        _, _, raw = await call(http, gateway, "POST", "/v1/conversations", {}, carol)
        conversation = orjson.loads(raw)["id"]
        as_carol = (
            await call(http, gateway, "GET", f"/v1/conversations/{conversation}", None, carol)
        )[0]
        as_dave = (
            await call(http, gateway, "GET", f"/v1/conversations/{conversation}", None, dave)
        )[0]
        admin = await call(
            http, gateway, "GET", "/v1/admin/keys", None, bearer(hs256(scope="chat admin"))
        )
        chat_only = (await call(http, gateway, "GET", "/v1/admin/keys", None, carol))[0]
        known = await _rows(url, select(users.c.id).order_by(users.c.id))

    assert (as_carol, as_dave) == (200, 404)
    assert admin[0] == 200 and chat_only == 403
    assert known == [("jwt:carol@example.com",), ("jwt:dave",), ("jwt:jwt-user",)]


async def test_a_jwt_whose_subject_is_a_key_owner_is_another_user(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url = await _fresh_database(tmp_path)
    async with serve(database_url=url, **with_jwt()) as gateway:
        admin_key = bearer(await key_for(gateway, "admin", ("admin",)))
        _, _, raw = await call(http, gateway, "POST", "/v1/conversations", {}, admin_key)
        conversation = orjson.loads(raw)["id"]
        posing = bearer(hs256(sub="admin"))
        read = await call(http, gateway, "GET", f"/v1/conversations/{conversation}", None, posing)
        listed = await call(http, gateway, "GET", "/v1/conversations", None, posing)
        new_key = await call(
            http, gateway, "POST", "/v1/admin/keys", {"owner": "jwt:admin"}, admin_key
        )

    assert read[0] == 404
    assert orjson.loads(listed[2])["data"] == []
    # Nor can a key be issued into the JWT users' namespace.
    assert new_key[0] == 400


async def test_a_broken_database_answers_503_and_never_its_error_text(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url = await _fresh_database(tmp_path)
    async with serve(database_url=url, **secured(key_cache_ttl=0)) as gateway:
        key = await key_for(gateway, "alice")
        before = (await call(http, gateway, "GET", "/v1/models", None, bearer(key)))[0]
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("DROP TABLE api_keys"))
        finally:
            await engine.dispose()
        status, _, raw = await call(http, gateway, "GET", "/v1/models", None, bearer(key))

    assert before == 200
    assert status == 503
    body = orjson.loads(raw)
    assert body["error"]["message"] == (
        "the gateway cannot check credentials right now; try again shortly"
    )
    for leak in (b"api_keys", b"sqlite", b"table", b"SELECT", b"Error"):
        assert leak not in raw


async def test_the_first_loopback_start_makes_one_admin_key_and_prints_its_link(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url = await _fresh_database(tmp_path)
    env = {"TOKENRELAY_DATABASE_URL": url, "TOKENRELAY_AUTH__ENABLED": "true"}
    config = tmp_path / "tokenrelay.toml"
    config.write_text('[models.demo]\nprovider = "scripted"\n')
    async with serve_process(
        config, env=env, stdout=asyncio.subprocess.PIPE, graceful=True
    ) as served:
        process, port = served.process, served.port
        assert process.stdout is not None
        link = ""
        async with asyncio.timeout(30):
            while "#key=" not in link:
                link = (await process.stdout.readline()).decode().strip()
                assert link or process.returncode is None, "tokenrelay serve exited"
        key = link.rsplit("#key=", 1)[1]
        await served.until_listening(http)
        async with http.get(f"{served.url}/v1/admin/keys", headers=bearer(key)) as r:
            keys = (await r.json())["data"]
        async with http.get(f"{served.url}/v1/models") as response:
            anonymous = response.status
    second_start = await first_run_key(
        load_settings(database_url=url, auth={"enabled": True}, host="127.0.0.1")
    )

    # In the fragment, which browsers never send: a query string would be in the access log.
    assert link == f"http://127.0.0.1:{port}/#key={key}"
    assert [(k["owner"], k["scopes"]) for k in keys] == [("admin", ["admin"])]
    lifetime = datetime.fromisoformat(keys[0]["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=6) < lifetime <= timedelta(days=7)
    assert anonymous == 401
    # The key exists now: later starts make none.
    assert second_start is None


async def test_a_public_bind_with_no_key_refuses_to_start_and_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await _fresh_database(tmp_path)
    settings = load_settings(database_url=url, auth={"enabled": True}, host="0.0.0.0")
    with pytest.raises(RefuseToServe) as refused:
        await first_run_key(settings)
    monkeypatch.setenv("TOKENRELAY_DATABASE_URL", url)
    monkeypatch.setenv("TOKENRELAY_AUTH__ENABLED", "true")
    code = await asyncio.to_thread(cli.main, ["serve", "--host", "0.0.0.0", "--port", "1"])
    printed = capsys.readouterr().err

    assert code == 2
    assert "refusing to listen on 0.0.0.0" in str(refused.value)
    assert "tokenrelay keys create --owner you --scope admin" in printed


async def test_keys_made_listed_and_revoked_on_the_command_line(
    http: aiohttp.ClientSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = await _fresh_database(tmp_path)
    monkeypatch.setenv("TOKENRELAY_DATABASE_URL", url)

    async def run(*argv: str) -> tuple[int, str]:
        code = await asyncio.to_thread(cli.main, list(argv))
        return code, capsys.readouterr().out

    created = await run(
        "keys", "create", "--owner", "erin", "--name", "laptop", "--expires-in", "1d"
    )
    key = created[1].strip()
    async with serve(database_url=url, **secured(key_cache_ttl=0)) as gateway:
        works = (await call(http, gateway, "GET", "/v1/models", None, bearer(key)))[0]
        listed = await run("keys", "list")
        revoked = await run("keys", "revoke", key[:11])
        after = (await call(http, gateway, "GET", "/v1/models", None, bearer(key)))[0]
    listed_all = await run("keys", "list", "--all")

    assert created[0] == 0 and key.startswith("tr_")
    assert works == 200
    assert key[:11] in listed[1] and "erin" in listed[1] and "laptop" in listed[1]
    assert key not in listed[1]
    assert revoked[0] == 0 and "revoked" in revoked[1]
    assert after == 401
    assert "revoked" in listed_all[1]


async def _fresh_database(folder: Path) -> str:
    return await upgraded(f"sqlite:///{folder / 'auth.db'}")


async def _rows(url: str, query: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in (await connection.execute(query)).all()]
    finally:
        await engine.dispose()
