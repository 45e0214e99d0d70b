"""Providers are plugins: found through the tokenrelay.providers entry points, built-ins too."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenrelay.config import ModelConfig, load_settings
from tokenrelay.providers import base
from tokenrelay.providers.base import ProviderContext, build_provider, check_models, register

PLUGIN = """
from tokenrelay.events import Accepted, Finish, TextDelta
from tokenrelay.providers.base import Provider


class EchoProvider(Provider):
    name = "echo"

    async def stream(self, request):
        yield Accepted()
        yield TextDelta(request.last_user_text())
        yield Finish("stop")
"""


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Iterator[None]:
    """A third party's package, installed as pip would: a module and its dist-info."""
    (tmp_path / "echo_plugin.py").write_text(PLUGIN)
    info = tmp_path / "echo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[tokenrelay.providers]\necho = echo_plugin:EchoProvider\n"
    )
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("echo_plugin", None)


def context() -> ProviderContext:
    return ProviderContext(settings=load_settings(models={}), http=None)  # type: ignore[arg-type]


async def test_an_installed_plugin_is_built_by_its_entry_point_name(installed_plugin: None) -> None:
    from tokenrelay.chat import ChatRequest, Message

    provider = build_provider("mine", ModelConfig(provider="echo"), context())
    request = ChatRequest(model="mine", messages=[Message("user", "hello")])

    events = [event async for event in provider.stream(request)]

    assert type(provider).__name__ == "EchoProvider"
    assert "hello" in repr(events)
    assert {"echo", "openai", "anthropic", "local", "scripted"} <= set(base.provider_names())


def test_the_built_ins_stay_when_something_else_registers_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(base, "PROVIDERS", {})
    register("other", lambda name, config, ctx: build_provider(name, config, ctx))

    provider = build_provider("demo", ModelConfig(provider="scripted"), context())

    assert type(provider).__name__ == "ScriptedProvider"


def test_an_unknown_provider_is_named_with_what_is_installed() -> None:
    with pytest.raises(ValueError, match=r"models\.x\.provider: unknown provider 'opnai'") as e:
        check_models({"x": ModelConfig(provider="opnai")})

    assert "openai" in str(e.value) and "scripted" in str(e.value)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "scripted", "local"])
def test_a_misspelt_option_is_named_for_every_provider(provider: str) -> None:
    config = ModelConfig(provider=provider, options={"temprature": 1})

    with pytest.raises(ValueError, match=r"models\.m\.options\.temprature"):
        check_models({"m": config})
