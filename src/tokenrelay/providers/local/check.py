"""``tokenrelay check-local``: can the local models generate on this machine?

Each configured local model is started in its worker and asked for a few tokens, exactly as
a request would be. A worker killed by a signal means the llama.cpp build cannot compute on
this CPU; that is said plainly, with the CPU, before anything else relies on it.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from pathlib import Path

from tokenrelay import errors
from tokenrelay.chat import ChatOptions, ChatRequest, Message
from tokenrelay.client import Client
from tokenrelay.config import Settings
from tokenrelay.events import TextDelta
from tokenrelay.providers.base import ProviderContext
from tokenrelay.providers.local.provider import LocalProvider

# The instruction-set extensions llama.cpp builds differ in, as /proc/cpuinfo names them.
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


@dataclass(frozen=True)
class Outcome:
    model: str
    text: str | None = None
    problem: str | None = None
    crashed: bool = False
    skipped: bool = False


def describe_cpu() -> str:
    """``Intel(R) Xeon(R) Processor (avx2 avx512f amx_tile …)``, or the platform's name."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    first_cpu = info.split("\n\n")[0].splitlines()
    fields = {
        key.strip(): value.strip()
        for key, value in (line.split(":", 1) for line in first_cpu if ":" in line)
    }
    name = fields.get("model name") or platform.machine()
    flags = set(fields.get("flags", "").split())
    return f"{name} ({' '.join(f for f in FEATURES if f in flags) or 'no AVX2'})"


async def check_local_models(settings: Settings) -> list[Outcome]:
    outcomes = []
    async with contextlib.aclosing(Client()) as http:
        context = ProviderContext(settings=settings, http=http)
        for name, config in settings.models.items():
            if config.provider == "local":
                outcomes.append(await _check(LocalProvider(name, config, context)))
    return outcomes


async def _check(provider: LocalProvider) -> Outcome:
    name = provider.model_name
    if provider.problem:
        return Outcome(name, problem=provider.problem, skipped=True)
    options = ChatOptions(max_tokens=4, temperature=0.0)
    request = ChatRequest(name, [Message("user", "Say hello.")], options)
    try:
        events = [event async for event in provider.stream(request)]
    except errors.TokenRelayError as exc:
        failure = provider.supervisor.last_failure or exc.message
        return Outcome(name, problem=failure, crashed="was killed by" in failure)
    finally:
        await provider.aclose()
    return Outcome(name, text="".join(e.text for e in events if isinstance(e, TextDelta)))
