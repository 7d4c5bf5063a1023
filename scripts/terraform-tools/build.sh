#!/usr/bin/env bash
# Build tflint or terraform-docs from the Go module proxy, at the version pinned in
# scripts/terraform-tools/<tool>/go.mod (with go.sum), into
# .cache/terraform-tools/<tool>-<version>/<tool>, and print that path. A binary already built
# for that version is reused; .cache/ ignores itself (.cache/.gitignore).
#
#   scripts/terraform-tools/build.sh tflint
#   scripts/terraform-tools/build.sh terraform-docs
set -euo pipefail

tool=${1:?usage: build.sh tflint|terraform-docs}
case "$tool" in
    tflint) module=github.com/terraform-linters/tflint ;;
    terraform-docs) module=github.com/terraform-docs/terraform-docs ;;
    *) echo "build.sh: unknown tool '$tool' (tflint or terraform-docs)" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
moddir="$here/$tool"

version=$(awk -v m="$module" '$1 == m { print $2; exit }' "$moddir/go.mod")
if [[ -z "$version" ]]; then
    echo "build.sh: $moddir/go.mod does not require $module" >&2
    exit 1
fi

out="$repo/.cache/terraform-tools/$tool-$version"
if [[ -x "$out/$tool" ]]; then
    echo "$out/$tool"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: the go command is needed to build $tool $version (Go $(awk '$1 == "go" { print $2 }' "$moddir/go.mod") or later)" >&2
    exit 1
fi

mkdir -p "$out"
[[ -f "$repo/.cache/.gitignore" ]] || printf '# built tools and other caches; never committed\n*\n' > "$repo/.cache/.gitignore"
echo "build.sh: building $tool $version from the Go module proxy (a few minutes the first time)" >&2
(cd "$moddir" && go build -trimpath -o "$out/$tool.partial" "$module")
mv "$out/$tool.partial" "$out/$tool"
echo "$out/$tool"
