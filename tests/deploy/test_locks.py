"""The three locks (`make lock`) match pyproject.toml, pin everything with hashes, and are what
.venv holds.

The check is offline and exact: starting from what pyproject.toml declares, the dependency
metadata of the installed distributions is walked (extras and environment markers evaluated),
and the packages reached must be exactly the lock's, each at a version the declaration allows.
A dependency added to or removed from pyproject.toml without `make lock` fails here. The walk is
done for this interpreter and for the image's (Debian bookworm's Python 3.11.2, which needs
async-timeout where 3.11.3 and later do not).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RUNTIME = REPO / "requirements.lock"
DEV = REPO / "requirements-dev.lock"
BUILD = REPO / "requirements-build.lock"
# the image's interpreter: Debian bookworm's python3
DEBIAN_PYTHON = {"python_full_version": "3.11.2", "python_version": "3.11"}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    version: str
    marker: Marker | None
    hashes: int

    def applies(self, environment: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


def pins(lock: Path) -> dict[NormalizedName, Pin]:
    """The lock's pins, continuation lines joined; exactly one pin per name."""
    found: dict[NormalizedName, Pin] = {}
    for line in re.sub(r"\\\n", " ", lock.read_text()).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(HASH.sub("", line).strip())
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{lock.name}: not pinned exactly: {line}"
        name = canonicalize_name(requirement.name)
        assert name not in found, f"{lock.name}: {name} pinned twice"
        found[name] = Pin(specifier.version, requirement.marker, len(HASH.findall(line)))
    return found


def reached(roots: list[str], environment: dict[str, str]) -> dict[NormalizedName, set[str]]:
    """Every distribution `roots` need in `environment`, with the specifiers asked of it,
    from the metadata of what is installed."""
    asked: dict[NormalizedName, set[str]] = {}
    todo = [(Requirement(root), frozenset({""})) for root in roots]
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    while todo:
        requirement, wanted_by = todo.pop()
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({**environment, "extra": extra}) for extra in wanted_by
        ):
            continue
        name = canonicalize_name(requirement.name)
        asked.setdefault(name, set()).add(str(requirement.specifier))
        extras = frozenset({"", *requirement.extras})
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            # needed only by the other interpreter (async-timeout below 3.11.3), so not
            # installed here: its own requirements cannot be read, the pin itself is checked
            assert environment, f"{name} is needed but not installed: run `make venv`"
            continue
        for spec in distribution.requires or []:
            todo.append((Requirement(spec), extras))
    return asked


def check(lock: Path, roots: list[str]) -> None:
    locked = pins(lock)
    for name, pin in locked.items():
        assert pin.hashes >= 1, f"{lock.name}: {name} has no --hash"
    for environment in ({}, DEBIAN_PYTHON):
        applicable = {name for name, pin in locked.items() if pin.applies(environment)}
        needed = reached(roots, environment)
        missing, extra = set(needed) - applicable, applicable - set(needed)
        assert not missing, f"{lock.name} lacks {missing} ({environment}): run `make lock`"
        assert not extra, f"{lock.name} pins {extra}, which nothing needs: run `make lock`"
        for name, specifiers in needed.items():
            for specifier in specifiers:
                assert Requirement(f"{name}{specifier}").specifier.contains(
                    locked[name].version, prereleases=True
                ), (lock.name, name, specifier, locked[name].version)


def declared(*extras: str) -> list[str]:
    project = PROJECT["project"]
    return [
        *project["dependencies"],
        *(r for e in extras for r in project["optional-dependencies"][e]),
    ]


@pytest.mark.parametrize(
    ("lock", "extras"),
    [(RUNTIME, ()), (DEV, ("dev", "loadtest"))],
    ids=["runtime", "dev"],
)
def test_lock_is_exactly_what_pyproject_declares(lock: Path, extras: tuple[str, ...]) -> None:
    check(lock, declared(*extras))


def test_runtime_lock_is_the_image_s_closure() -> None:
    locked = pins(RUNTIME)
    # uvicorn[standard]'s extras are what make it fast (uvloop, httptools)
    assert {"uvloop", "httptools", "websockets", "watchfiles"} <= set(locked)
    dev = {canonicalize_name(Requirement(r).name) for r in declared("dev", "loadtest")}
    runtime = {canonicalize_name(Requirement(r).name) for r in declared()}
    assert not (dev - runtime) & set(locked), "dev-only packages in the image's lock"
    assert not {"pip", "setuptools", "wheel", "flashsale"} & set(locked)
    assert locked["async-timeout"].applies(DEBIAN_PYTHON) and not locked["async-timeout"].applies(
        {"python_full_version": "3.11.3"}
    )


def test_dev_lock_takes_the_runtime_pins() -> None:
    """`make test` runs against the very versions the image ships."""
    runtime, dev = pins(RUNTIME), pins(DEV)
    differ = {
        n: (p.version, dev[n].version) for n, p in runtime.items() if dev[n].version != p.version
    }
    assert not differ, differ


def test_build_lock_pins_pip_and_the_build_backend() -> None:
    locked = pins(BUILD)
    requires = [Requirement(r) for r in PROJECT["build-system"]["requires"]]
    assert set(locked) == {"pip"} | {canonicalize_name(r.name) for r in requires}
    for requirement in requires:
        assert requirement.specifier.contains(locked[canonicalize_name(requirement.name)].version)
    assert all(pin.hashes >= 1 and pin.marker is None for pin in locked.values())


def test_venv_holds_what_the_locks_pin() -> None:
    """.venv is installed from the locks (make venv): an edited lock reinstalls it."""
    wanted = {**pins(DEV), **pins(BUILD)}
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if canonicalize_name(d.metadata["Name"]) != "flashsale"
    }
    applicable = {n: p.version for n, p in wanted.items() if p.applies({})}
    differ = {
        n: (v, installed.get(n))
        for n, v in applicable.items()
        if installed.get(n) is None or Version(installed[n]) != Version(v)
    }
    assert not differ, f"(locked, installed): {differ}; run `make venv`"
    assert set(installed) <= set(applicable), set(installed) - set(applicable)


def test_locks_are_written_by_make_lock() -> None:
    for lock in (RUNTIME, DEV, BUILD):
        assert lock.read_text().startswith(
            "# This file was autogenerated by uv via the following command:\n#    make lock\n"
        ), lock.name
