#!/usr/bin/env bash
# Build the control plane the Kubernetes tests run against (tests/support/kubernetes.py):
# kube-apiserver from k8s.io/kubernetes and etcd from go.etcd.io/etcd/server/v3, at the
# versions go.mod pins (pin.sh writes it). The binaries are cached in
# .cache/envtest/k8s-VERSION_etcd-VERSION/, so only the first build costs minutes.
#   scripts/envtest/build.sh            build if missing; print the folder
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

version_of() {  # the version go.mod requires of module $1
    sed -n "s|^[[:space:]]*$1 \(v[^ ]*\)\$|\1|p" "$here/go.mod" | head -n 1
}
kube=$(version_of k8s.io/kubernetes)
etcd=$(version_of go.etcd.io/etcd/server/v3)
[[ $kube =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || { echo "build.sh: no k8s.io/kubernetes release in go.mod" >&2; exit 1; }
minor=${BASH_REMATCH[1]}
[ -n "$etcd" ] || { echo "build.sh: no go.etcd.io/etcd/server/v3 version in go.mod" >&2; exit 1; }
out="$repo/.cache/envtest/k8s-${kube}_etcd-${etcd}"

if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ]; then
    echo "$out"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: Go is not installed (or not on PATH). The Kubernetes tests build kube-apiserver" \
         "$kube and etcd $etcd from source with Go >= $(sed -n 's/^go //p' "$here/go.mod"):" \
         "install it from https://go.dev/dl/ and run 'make envtest' again." >&2
    exit 1
fi

echo "build.sh: building kube-apiserver $kube and etcd $etcd into $out (first time: several minutes)" >&2
started=$SECONDS
tmp="$out.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
# What Kubernetes' own build (hack/lib/version.sh) stamps into its binaries, so that /version
# and Helm's kubeVersion checks see this release rather than v0.0.0-master.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kube -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
    ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(
    cd "$here"
    export CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local
    go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver go.etcd.io/etcd/server/v3
)
mv "$tmp/server" "$tmp/etcd"  # go names the binary of .../server/v3 "server"
# read each version whole first: `grep -q` stops reading at its match, and under pipefail the
# writer's SIGPIPE would fail the check at random
said=$("$tmp/kube-apiserver" --version)
grep -qx "Kubernetes $kube" <<<"$said" || {
    echo "build.sh: kube-apiserver says '$said', not Kubernetes $kube" >&2
    exit 1
}
said=$("$tmp/etcd" --version)
grep -q "^etcd Version: ${etcd#v}\$" <<<"$said" || {
    echo "build.sh: etcd says '$(head -n 1 <<<"$said")', not $etcd" >&2
    exit 1
}
rm -rf "$out"
mv "$tmp" "$out"
echo "build.sh: built in $((SECONDS - started)) s" >&2
echo "$out"
