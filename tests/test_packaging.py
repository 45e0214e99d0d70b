"""pyproject.toml's bounds and the constraints file ``make`` installs with agree."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = [
        *project["dependencies"],
        *(r for extra in ("dev", "postgres", "redis") for r in extras[extra]),
    ]
    return [Requirement(name) for name in names]


def pins() -> dict[str, Version]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[name.lower().replace("_", "-")] = Version(version)
    return found


def test_uvicorns_lower_bound_has_the_websocket_protocol_the_server_uses() -> None:
    [uvicorn] = [r for r in requirements() if r.name == "uvicorn"]
    # websockets-sansio arrived in uvicorn 0.35; an older one fails at the first socket.
    assert not uvicorn.specifier.contains("0.34.9")
    assert uvicorn.specifier.contains("0.35.0")


def test_every_pin_in_the_constraints_file_meets_pyprojects_bounds() -> None:
    pinned = pins()
    for requirement in requirements():
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name]), (name, pinned[name])


def test_make_installs_with_the_constraints_file() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
