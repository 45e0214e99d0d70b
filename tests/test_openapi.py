"""``/openapi.json`` describes the HTTP API from the request models, and schemathesis, sending
what the document allows, finds no 500 and no answer the document does not describe."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import hypothesis
import pytest
import schemathesis
from schemathesis import checks

from tests.gateway import free_socket, serve
from tests.probes import scripted_config
from tokenrelay.api.openapi import document
from tokenrelay.http.bodies import ChatFields

# Per operation; about two dozen operations, so a few hundred requests in all.
EXAMPLES = 12
# What the document promises. Schemathesis's acceptance checks are left out on purpose: limits
# the schema cannot say (a model that exists, max_tokens under the configured limit, messages
# not empty) refuse some schema-valid bodies with a documented 4xx.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


async def test_the_document_is_openapi_3_1_generated_from_the_request_models(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        async with http.get(f"{gateway.url}/openapi.json") as response:
            served = response.status, await response.json()

    assert served == (200, document())
    schemas = served[1]["components"]["schemas"]
    assert served[1]["openapi"] == "3.1.0"
    assert schemas["ChatFields"]["required"] == ["messages"]
    assert set(schemas["ChatFields"]["properties"]) == set(ChatFields.model_fields)
    assert served[1]["paths"]["/healthz"]["get"]["security"] == []


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[str]:
    """A ``tokenrelay serve`` of its own: schemathesis calls it synchronously."""
    config = scripted_config(
        tmp_path,
        "\n[rate_limits]\nrequests_per_minute = 0\nconcurrent_streams = 0\n"
        "tokens_per_minute = 0\ntokens_per_day = 0\n",
    )
    with free_socket() as sock:
        port = sock.getsockname()[1]
    env = {**os.environ, "TOKENRELAY_ALLOW_REQUEST_SCRIPTS": "false"}
    argv = [sys.executable, "-m", "tokenrelay.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*argv, "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "tokenrelay serve exited"
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "tokenrelay serve never answered"
                time.sleep(0.1)
        yield url
    finally:
        process.kill()
        process.wait()


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    gateway_process: str,
) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway_process}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=10)

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")

    assert not failures, "\n\n".join(failures)
