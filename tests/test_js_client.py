"""The browser client library (``web/tokenrelay.js``) under Node's own test runner.

One real ``tokenrelay serve`` process on a free loopback port; ``node --test tests/js/`` runs
against it (``TOKENRELAY_URL``). The Node files say what they prove; this runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.gateway import free_socket

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[models.demo]
provider = "scripted"

[streams]
ping_interval = 0.5
resume_grace = 10
"""
NODE_TIMEOUT = 90


def _tokenrelay() -> list[str]:
    script = Path(sys.executable).with_name("tokenrelay")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tokenrelay.cli"]


def _wait_healthy(url: str, process: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"tokenrelay serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("tokenrelay serve did not answer /healthz in time")


def test_js_client_library_passes_its_node_tests_against_a_live_gateway(
    tmp_path: Path,
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    config = tmp_path / "tokenrelay.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "TOKENRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'js.db'}"}
    subprocess.run(
        [*_tokenrelay(), "db", "upgrade", "--config", str(config)],
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    with free_socket() as sock:
        port = sock.getsockname()[1]
    log = tmp_path / "serve.log"
    with log.open("wb") as errors:
        server = subprocess.Popen(
            [*_tokenrelay(), "serve", "--config", str(config), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, within=20)
        result = subprocess.run(
            [node, "--experimental-websocket", "--no-warnings", "--test", "tests/js/"],
            cwd=ROOT,
            env={**env, "TOKENRELAY_URL": url},
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    summary = [line for line in result.stdout.splitlines() if line.startswith("# ")]
    assert result.returncode == 0, (
        result.stdout[-6000:] + result.stderr[-2000:] + log.read_text()[-2000:]
    )
    assert "# fail 0" in summary, summary
    assert not any(line.startswith("# skipped") and line != "# skipped 0" for line in summary)
