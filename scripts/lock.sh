#!/usr/bin/env bash
# Write the three hashed locks from pyproject.toml (`make lock`; `make lock UPGRADE=1` moves
# every pin to the newest allowed version, otherwise the pins already written are kept and only
# what pyproject.toml changed is resolved anew):
#
#   requirements.lock        the runtime dependencies: what the image installs
#   requirements-dev.lock    runtime + the dev and loadtest extras, the runtime pins taken from
#                            requirements.lock: what `make venv` (so `make test` and CI) installs
#   requirements-build.lock  pip and the build backend of [build-system]: what builds the
#                            project's own wheel, in the image and in .venv
#
# Every pin carries the hashes of all of its files (`pip install --require-hashes`). The
# resolution is universal (environment markers kept, e.g. async-timeout only below Python
# 3.11.3, which Debian bookworm's 3.11.2 needs) for Python 3.11, so one lock serves the image,
# a developer's machine and CI alike.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

uv=${UV:-.venv/bin/uv}
if ! [ -x "$uv" ]; then
    echo "lock: $uv is missing: it is a dev dependency, 'make venv' installs it" >&2
    exit 1
fi
python=$(dirname "$uv")/python
[ -x "$python" ] || python=python3
common=(--universal --python-version 3.11 --generate-hashes --quiet
    --custom-compile-command "make lock")
[ "${UPGRADE:-0}" = 1 ] && common+=(--upgrade)

"$uv" pip compile "${common[@]}" pyproject.toml -o requirements.lock
"$uv" pip compile "${common[@]}" pyproject.toml --extra dev --extra loadtest \
    --constraint requirements.lock -o requirements-dev.lock

build_in=$(mktemp --suffix=.in)
trap 'rm -f "$build_in"' EXIT
{
    echo pip
    "$python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
} >"$build_in"
"$uv" pip compile "${common[@]}" "$build_in" -o requirements-build.lock
# the input is a temporary file: name what it was made of instead
sed -i "s|# via -r $build_in|# via pyproject.toml [build-system] (and pip itself)|" requirements-build.lock
