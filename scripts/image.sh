#!/usr/bin/env bash
# The FlashSale image without Docker: built daemonless with Debian's buildah (vfs storage,
# chroot isolation) on a debian:bookworm-slim base made here with debootstrap, and run as a
# container would run it, with nothing but util-linux.
#
#   scripts/image.sh build             base (cached) + Dockerfile (skipped when nothing changed)
#   scripts/image.sh run [OPTIONS] [--] [ARGS...]
#                                      run the image (ARGS replace its CMD: `run -- migrate`)
#   scripts/image.sh size              the image's size in MB
#   scripts/image.sh clean             remove the images, containers and the base tarball
#
# Run options: -e/--env NAME=VALUE, -v/--volume SRC:DST[:ro], --tmpfs DST, -u/--user UID[:GID],
# --workdir DIR, --entrypoint PROG. Like the Helm chart's pods: UID 10001 (the image's USER),
# a read-only root, tmpfs on /tmp and /tmp/flashsale-metrics, no capabilities,
# no_new_privs, private mount and PID namespaces; the host's network (no network namespace), so
# it reaches the local Redis and PostgreSQL.
#
# Everything lives under .cache/ (git-ignored): the base tarball, keyed by suite, variant and
# the recipe below, and buildah's storage. Knobs: FLASHSALE_IMAGE (the tag, default
# localhost/flashsale:dev), FLASHSALE_IMAGE_CACHE (default .cache), DEBIAN_MIRROR and
# DEBIAN_SECURITY_MIRROR (default: the machine's apt sources).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE=${FLASHSALE_IMAGE:-localhost/flashsale:dev}
CACHE=${FLASHSALE_IMAGE_CACHE:-$PWD/.cache}
SUITE=bookworm
VARIANT=minbase
BASE_INCLUDE=() # packages beyond the variant: none, so the base is what debian:*-slim is
BASE=docker.io/library/debian:$SUITE-slim
STORE=$CACHE/containers
buildah=(buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver vfs)
export BUILDAH_ISOLATION=chroot

log() { printf 'image: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

ensure_tools() {
    local missing=()
    command -v buildah >/dev/null 2>&1 || missing+=(buildah)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] || scripts/ensure-packages.sh "${missing[@]}"
    [ "$(id -u)" -eq 0 ] || die "needs root (vfs storage, chroot isolation, mount namespaces)"
}

# ---------------------------------------------------------------------------- the base
# The machine's own Debian mirror (the first apt source serving $SUITE, or $SUITE-security),
# in either the one-line or the deb822 format.
apt_uri() {
    local suite=$1 file files=()
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources; do
        [ -r "$file" ] && files+=("$file")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v suite="$suite" '
        /^deb / { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) break;
                  if ($(i + 1) == suite) { print $i; exit } }
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri) { print uri; exit } }
        /^$/ { uri = "" }' "${files[@]}" | head -n 1
}

MIRROR=${DEBIAN_MIRROR:-$(apt_uri "$SUITE")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-$(apt_uri "$SUITE-security")}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}

# What debuerreotype does to the official debian:*-slim images: no docs (but the copyrights),
# man pages or translations; apt keeps no package cache, no translations, gzipped lists.
SLIM_DPKG='path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*'
SLIM_APT='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
APT::AutoRemove::SuggestsImportant "false";'

base_key() {
    # bump the number when the recipe in base_tarball changes in a way the text here misses
    printf '%s\n' 2 "$SUITE" "$VARIANT" "${BASE_INCLUDE[*]}" "$SLIM_DPKG" "$SLIM_APT" |
        sha256sum | cut -c1-16
}

# debootstrap minbase from the configured mirror, brought up to date with bookworm-updates and
# bookworm-security, slimmed, written as a tarball once per key.
base_tarball() {
    local key tarball root
    key=$(base_key)
    tarball=$CACHE/image/debian-$SUITE-$VARIANT-$key.tar
    if [ -s "$tarball" ]; then
        echo "$tarball"
        return
    fi
    mkdir -p "$CACHE/image"
    root=$(mktemp -d "$CACHE/image/root.XXXXXX")
    local started=$SECONDS
    # shellcheck disable=SC2064
    trap "umount -R '$root/proc' 2>/dev/null || true; rm -rf '$root'" EXIT
    log "debootstrap --variant=$VARIANT $SUITE from $MIRROR (once per base key $key)"
    local include=()
    [ ${#BASE_INCLUDE[@]} -eq 0 ] || include=("--include=$(
        IFS=,
        echo "${BASE_INCLUDE[*]}"
    )")
    debootstrap --variant="$VARIANT" --components=main "${include[@]}" "$SUITE" "$root" \
        "$MIRROR" >"$CACHE/image/debootstrap.log" 2>&1 ||
        die "debootstrap failed, see $CACHE/image/debootstrap.log"
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    printf '%s\n' "$SLIM_DPKG" >"$root/etc/dpkg/dpkg.cfg.d/docker"
    printf '%s\n' "$SLIM_APT" >"$root/etc/apt/apt.conf.d/docker"
    mount -t proc proc "$root/proc"
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -qq && apt-get dist-upgrade -y -qq && apt-get clean' \
        >>"$CACHE/image/debootstrap.log" 2>&1 ||
        die "apt-get dist-upgrade in the base failed, see $CACHE/image/debootstrap.log"
    umount "$root/proc"
    # what dpkg installed before its excludes existed, and what only the build machine needs
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "${root:?}"/usr/share/{man,groff,info,lintian,linda,locale}/* \
        "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/*.bin \
        "${root:?}"/var/cache/ldconfig/* "${root:?}"/var/log/* "${root:?}"/dev/* \
        "${root:?}"/run/* "${root:?}"/tmp/* "${root:?}"/root/.bash_history
    # mount points a container runtime fills in
    : >"$root/etc/hostname"
    : >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
    : >"$root/etc/machine-id"
    tar --numeric-owner --xattrs --sort=name -C "$root" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    log "base tarball written in $((SECONDS - started)) s"
    rm -rf "$root"
    trap - EXIT
    echo "$tarball"
}

label() { # label IMAGE NAME: the value of one label, empty when absent
    "${buildah[@]}" inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" \
        2>/dev/null || true
}

# The base tarball imported as debian:bookworm-slim, under the very name the Dockerfile's FROM
# resolves to, so that `buildah build --pull=never` finds it and never looks for a registry.
import_base() {
    local tarball key container mount
    tarball=$(base_tarball)
    key=$(base_key)
    [ "$(label "$BASE" io.flashsale.base-key)" = "$key" ] && return
    log "importing $(basename "$tarball") as $BASE"
    container=$("${buildah[@]}" from scratch)
    mount=$("${buildah[@]}" mount "$container")
    tar --numeric-owner --xattrs -C "$mount" -xf "$tarball"
    "${buildah[@]}" umount "$container" >/dev/null
    "${buildah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd bash --label io.flashsale.base-key="$key" \
        --label org.opencontainers.image.description="Debian $SUITE, debootstrap --variant=$VARIANT from $MIRROR, slimmed like debian:$SUITE-slim; built by scripts/image.sh" \
        "$container"
    "${buildah[@]}" commit --quiet --rm "$container" "$BASE" >/dev/null
}

# -------------------------------------------------------------------------- the image
# A digest of everything the build reads: the context .dockerignore lets through (its `!`
# lines), the Dockerfile, this script (its build options), the base and the builder. Symbolic
# links count by their target.
inputs() {
    local allowed
    mapfile -t allowed < <(sed -n 's#^!\(.*\)#\1#p' .dockerignore | sed 's#/$##')
    {
        sha256sum Dockerfile .dockerignore scripts/image.sh
        find "${allowed[@]}" \( -name __pycache__ -o -name .pytest_cache -o -name .ruff_cache \) \
            -prune -o \( -type l -printf 'link %p %l\n' \) -o \
            \( -type f ! -name '*.py[cod]' -exec sha256sum {} + \) | LC_ALL=C sort
        "${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$BASE"
        buildah --version
    } | sha256sum | cut -c1-32
}

# The build's own downloads (pip, from PyPI) trust the CA certificates of the build machine,
# which may include a company's TLS-inspecting proxy: the Dockerfile's optional build secret
# `ca-certificates`, mounted only while pip runs in the build stage, never part of the image.
HOST_CA=${FLASHSALE_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

build() {
    ensure_tools
    local trust=()
    [ ! -r "$HOST_CA" ] || trust=(--secret "id=ca-certificates,src=$HOST_CA")
    import_base
    local digest
    digest=$(inputs)
    if [ "$(label "$IMAGE" io.flashsale.inputs)" = "$digest" ]; then
        log "$IMAGE is up to date ($(size) MB)"
        return
    fi
    local started=$SECONDS build_log=$CACHE/image/build.log
    log "building $IMAGE (buildah, vfs, chroot isolation; output in $build_log)"
    if ! "${buildah[@]}" build --pull=never --layers=false --force-rm --isolation chroot \
        "${trust[@]}" --label io.flashsale.inputs="$digest" --tag "$IMAGE" --file Dockerfile . \
        >"$build_log" 2>&1; then
        tail -n 40 "$build_log" >&2
        die "buildah build failed, see $build_log"
    fi
    # drop what the previous image left: its run containers and now untagged images
    local name
    for name in $("${buildah[@]}" containers --format '{{.ContainerName}}'); do
        case $name in flashsale-run-*) "${buildah[@]}" rm "$name" >/dev/null ;; esac
    done
    "${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
    log "built $IMAGE ($(size) MB) in $((SECONDS - started)) s"
}

size() { # the image's size as buildah's storage counts it (its layers, uncompressed), in MB
    local size
    size=$("${buildah[@]}" images --format '{{.Size}}' "$IMAGE") || die "no image $IMAGE"
    case $size in
    *" MB") echo "${size% MB}" ;;
    *" GB") awk -v gb="${size% GB}" 'BEGIN { print gb * 1000 }' ;;
    *) die "unexpected size $size" ;;
    esac
}

# ---------------------------------------------------------------------------- running
# One working container per image, its root mounted read-only by every run: nothing is ever
# written to it, so the runs can share it.
rootfs() {
    local id name
    id=$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$IMAGE") ||
        die "no image $IMAGE: run 'make image' first"
    name=flashsale-run-${id:0:12}
    # runs started together must not both create it
    exec 9>"$STORE/rootfs.lock"
    flock 9
    if ! "${buildah[@]}" inspect --type container "$name" >/dev/null 2>&1; then
        "${buildah[@]}" from --pull=never --name "$name" "$IMAGE" >/dev/null
    fi
    "${buildah[@]}" mount "$name"
    exec 9>&-
}

config() { # config FIELD: one field of the image's OCI config, one item a line
    "${buildah[@]}" inspect --type image --format \
        "{{with .OCIv1.Config.$1}}{{range .}}{{println .}}{{end}}{{end}}" "$IMAGE"
}

run() {
    local envs=() volumes=() tmpfs=(/tmp /tmp/flashsale-metrics) user="" workdir="" entry=()
    while [ $# -gt 0 ]; do
        case $1 in
        -e | --env) envs+=("$2") && shift 2 ;;
        -v | --volume) volumes+=("$2") && shift 2 ;;
        --tmpfs) tmpfs+=("$2") && shift 2 ;;
        -u | --user) user=$2 && shift 2 ;;
        --workdir) workdir=$2 && shift 2 ;;
        --entrypoint) entry=("$2") && shift 2 ;;
        --) shift && break ;;
        -*) die "run: unknown option $1" ;;
        *) break ;;
        esac
    done
    local root args=("$@") image_env
    root=$(rootfs)
    [ ${#entry[@]} -gt 0 ] || mapfile -t entry < <(config Entrypoint)
    [ ${#args[@]} -gt 0 ] || mapfile -t args < <(config Cmd)
    mapfile -t image_env < <(config Env)
    [ -n "$user" ] || user=$("${buildah[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
    [ -n "$workdir" ] || workdir=$("${buildah[@]}" inspect --type image --format '{{.OCIv1.Config.WorkingDir}}' "$IMAGE")
    local uid=${user%%:*} gid=${user#*:}
    [ "$gid" != "$user" ] || gid=$uid
    # volume mount points are made in the (scratch) working container, never in the image
    local volume src dst
    for volume in "${volumes[@]}"; do
        IFS=: read -r src dst _ <<<"$volume"
        [ -e "$src" ] || die "run: no $src to mount"
        case $dst in /tmp | /tmp/*) continue ;; esac # on a tmpfs of the run: made there
        [ -e "$root$dst" ] || { [ -d "$src" ] && mkdir -p "$root$dst"; } ||
            { mkdir -p "$(dirname "$root$dst")" && : >"$root$dst"; }
    done
    exec unshare --mount --pid --fork --kill-child=SIGTERM --propagation private -- \
        bash -c "$RUN_IN_NAMESPACE" run-image "$root" "$uid" "$gid" "${workdir:-/}" \
        "${#tmpfs[@]}" "${tmpfs[@]}" "${#volumes[@]}" "${volumes[@]}" \
        "$((${#image_env[@]} + ${#envs[@]}))" "${image_env[@]}" "${envs[@]}" \
        "${entry[@]}" "${args[@]}"
}

# Runs as PID 1 of the new PID namespace, in its own mount namespace: the mounts a container
# runtime makes, then the image's command as UID:GID, chrooted, with no capability left, with
# no_new_privs (allowPrivilegeEscalation: false) and only the image's and the given variables.
# shellcheck disable=SC2016
RUN_IN_NAMESPACE='
set -euo pipefail
root=$1 uid=$2 gid=$3 workdir=$4
shift 4
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys" 2>/dev/null || true
mount -t tmpfs -o nosuid,noexec,mode=0755,size=64k tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    : >"$root/dev/$node" && mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/shm" "$root/dev/pts"
mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=64m shm "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
for file in /etc/resolv.conf /etc/hosts; do
    mount --bind -o ro "$file" "$root$file"
done
# emptyDirs as the chart has them (mode 0777, group 10001 from fsGroup)
count=$1 && shift
for ((i = 0; i < count; i++)); do
    mkdir -p "$root$1"
    mount -t tmpfs -o nosuid,nodev,mode=2777,gid=10001,size=256m tmpfs "$root$1"
    shift
done
count=$1 && shift
for ((i = 0; i < count; i++)); do
    IFS=: read -r src dst mode <<<"$1"
    [ -e "$root$dst" ] || { [ -d "$src" ] && mkdir -p "$root$dst"; } ||
        { mkdir -p "$(dirname "$root$dst")" && : >"$root$dst"; }
    mount --bind "$src" "$root$dst"
    [ "$mode" != ro ] || mount -o remount,bind,ro "$root$dst"
    shift
done
count=$1 && shift
env=("${@:1:count}")
shift "$count"
exec /usr/bin/env -i "${env[@]}" \
    /usr/bin/setpriv --no-new-privs --bounding-set=-all,+sys_chroot,+setuid,+setgid -- \
    /usr/bin/unshare --root="$root" --wd="$workdir" --setgid="$gid" --setuid="$uid" -- "$@"
'

clean() {
    local name
    for name in $("${buildah[@]}" containers --format '{{.ContainerName}}' 2>/dev/null); do
        "${buildah[@]}" rm "$name" >/dev/null
    done
    "${buildah[@]}" rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$STORE" "$CACHE/image"
}

case ${1:-build} in
build) build ;;
run) shift && run "$@" ;;
size) size ;;
base) ensure_tools && import_base ;;
clean) clean ;;
*) die "usage: $0 build|run|size|base|clean (see the header)" ;;
esac
