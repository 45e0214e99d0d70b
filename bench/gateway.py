"""The gateway under test: its config, its database, its API key, and its process.

tokenrelay is benchmarked as deployed: auth on (an API key on every request) and per-user
limits set (high enough never to refuse), so their bookkeeping is in every figure. Should this
tokenrelay offer no way to get a key yet, the run says so and measures with auth off.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import Child, free_port, python
from bench.workload import GATEWAY_MODEL, UPSTREAM_MODEL

KEY = re.compile(rb"\btr_[A-Za-z0-9]{40}\b")
# Generous enough never to refuse a benchmark request, so the limiter runs but never bites.
QUOTAS = {
    "requests_per_minute": 10_000_000,
    "concurrent_streams": 1_000_000,
    "tokens_per_minute": 10_000_000_000,
    "tokens_per_day": 10_000_000_000_000,
}
# JWT bearer tokens are checked beside API keys: HS256 with this secret, issuer and audience.
JWT_SECRET = "bench-secret-for-hs256-that-is-long-enough"
JWT_ISSUER = "https://issuer.bench"
JWT_AUDIENCE = "tokenrelay-bench"
# The 10,000-stream run holds more connections than the default cap.
SERVER = {"max_connections": 100_000}


def write_config(path: Path, upstream_url: str, *, auth: bool, metrics: bool | None = None) -> Path:
    """``metrics`` None: this tokenrelay's default; True or False: said in the config."""
    from tokenrelay.config import Settings

    lines = [
        # Access logs would be the gateway's largest cost per request; operators turn them off.
        'log_level = "warning"',
        "",
        f"[models.{GATEWAY_MODEL}]",
        'provider = "openai"',
        f'base_url = "{upstream_url}"',
        f'upstream_model = "{UPSTREAM_MODEL}"',
    ]
    if "auth" in Settings.model_fields and not auth:
        lines += ["", "[auth]", "enabled = false"]
    elif "auth" in Settings.model_fields:
        lines += ["", "[auth]", f'jwt_secret = "{JWT_SECRET}"']
        lines += [f'jwt_issuer = "{JWT_ISSUER}"', f'jwt_audience = "{JWT_AUDIENCE}"']
    if "rate_limits" in Settings.model_fields:
        lines += ["", "[rate_limits]", *(f"{k} = {v}" for k, v in QUOTAS.items())]
    if "server" in Settings.model_fields:
        lines += ["", "[server]", *(f"{k} = {v}" for k, v in SERVER.items())]
    if metrics is not None and "observability" in Settings.model_fields:
        lines += ["", "[observability]", f"metrics = {str(metrics).lower()}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def prepare_database(config: Path) -> None:
    """A fresh database beside the config, at this tokenrelay's schema."""
    for old in config.parent.glob("tokenrelay.db*"):
        old.unlink()
    done = _cli("db", "upgrade", "--config", str(config))
    if done.returncode != 0 and "invalid choice" not in done.stderr:
        raise RuntimeError(f"tokenrelay db upgrade failed: {done.stderr.strip()}")


def create_key(config: Path) -> str | None:
    """A chat key from ``tokenrelay keys create``; None if this tokenrelay has no such command."""
    done = _cli("keys", "create", "--config", str(config), "--owner", "bench")
    found = KEY.search(done.stdout.encode())
    return found.group().decode() if done.returncode == 0 and found else None


def jwt_token(subject: str = "bench-jwt") -> str:
    """A bearer token the gateway's JWT settings above accept, good for a day."""
    import jwt

    claims = {
        "sub": subject,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "exp": int(time.time()) + 86_400,
    }
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def key_in_log(child: Child, timeout: float = 3.0) -> str | None:
    """The admin key a first run prints, if this tokenrelay prints one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = KEY.search(child.log_path.read_bytes())
        if found:
            return found.group().decode()
        time.sleep(0.1)
    return None


def start(
    config: Path, logs: Path, name: str = "tokenrelay", env: dict[str, str] | None = None
) -> Child:
    port = free_port()
    argv = tokenrelay("serve", "--port", str(port), "--config", str(config))
    return Child(name, argv, port, logs, env, role="server")


def tokenrelay(*args: str) -> list[str]:
    """The ``tokenrelay`` command installed beside this Python, as a user runs it."""
    script = Path(sys.executable).with_name("tokenrelay")
    return [str(script), *args] if script.exists() else python("-m", "tokenrelay.cli", *args)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tokenrelay(*args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
