# syntax=docker/dockerfile:1
#
# FlashSale: one image, every role.
#
#   make image                                        # daemonless: buildah, no Docker (docs/kubernetes.md)
#   docker build -t flashsale:dev .                   # or any Dockerfile builder
#   docker run --rm -p 8000:8000 -e REDIS_URL=... -e DATABASE_URL=... flashsale:dev   # the API
#   docker run --rm -e DATABASE_URL=... flashsale:dev migrate                         # any role
#
# The base is debian:bookworm-slim with Debian's own Python 3.11 (the python3 package, 3.11.2
# plus Debian's security fixes), not python:3.11-slim-bookworm (python.org's latest 3.11.x
# compiled into /usr/local on the same Debian): every file of the image then comes from a
# Debian package or a hashed wheel, and `make image` can build the base itself with debootstrap
# where no registry can be reached. The venv points at /usr/bin/python3 of the final stage,
# which is the same Debian package as the build stage's.
#
# The build stage installs the hashed wheels of requirements.lock (no compiler needed: every
# package ships a manylinux wheel) and the project's own wheel, built by the pinned backend of
# requirements-build.lock, into a venv; the final stage copies that venv only. It runs as UID
# 10001 and writes nothing outside /tmp, so it runs with a read-only root filesystem (the Helm
# chart mounts emptyDirs on /tmp and /tmp/flashsale-metrics). No HEALTHCHECK: Kubernetes probes
# /healthz and /readyz.
#
# apt packages are named without versions (hadolint DL3008 ignored on purpose): the suite
# (bookworm) fixes the Python minor version, and a Debian point release replaces a package's
# previous version on the mirror, so an exact pin would break the build at the next one.

# Both stages: the same base, pinned by tag (append @sha256:... for bit-for-bit rebuilds).
FROM debian:bookworm-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# pip and the project's build backend, pinned with hashes, in a venv of the build stage only;
# and the runtime venv without pip: the build tools' pip installs into it (`pip --python`).
# The optional secret `ca-certificates` replaces the CA bundle while pip downloads (a build
# behind a TLS-inspecting proxy: `--secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt`,
# which `make image` passes); it is never part of a layer, and without it Debian's bundle serves.
COPY requirements-build.lock ./
RUN --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r requirements-build.lock \
    && python3 -m venv --without-pip /opt/flashsale

# Dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    /opt/build/bin/pip --python /opt/flashsale/bin/python install --no-cache-dir --no-deps \
        --require-hashes --only-binary=:all: -r requirements.lock

COPY pyproject.toml README.md ./
COPY flashsale/ flashsale/
COPY api/ api/
COPY waiting_room/ waiting_room/
COPY operator/ operator/
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/build/bin/pip --python /opt/flashsale/bin/python install --no-cache-dir --no-deps \
        /wheels/flashsale-*.whl \
    && /opt/flashsale/bin/flashsale --help > /dev/null


FROM debian:bookworm-slim

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="flashsale" \
      org.opencontainers.image.description="FlashSale: a fair virtual waiting room, zero-oversell purchase and durable orders; one image for every role (flashsale api|admitter|persister|operator|migrate|prewarm|reconcile)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="FlashSale" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# PROMETHEUS_MULTIPROC_DIR: the uvicorn workers of `flashsale api` share their metrics there.
# prometheus_client switches to multi-process mode whenever the variable exists, for every
# role, so the folder must exist and be writable (the image has it; Kubernetes mounts one).
ENV PATH=/opt/flashsale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    FLASHSALE_HOST=0.0.0.0 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/flashsale-metrics

# The interpreter the venv points at, and what python:3.11-slim also carries: CA certificates
# (TLS to a managed Redis or PostgreSQL) and netbase (/etc/services, /etc/protocols).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates netbase \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 flashsale \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin flashsale \
    && install -d -o 10001 -g 10001 -m 0700 /tmp/flashsale-metrics

COPY --from=build /opt/flashsale /opt/flashsale

WORKDIR /opt/flashsale
USER 10001

# 8000: the API; 9100: /metrics of the admitter and persister; 8080: the operator's liveness
EXPOSE 8000 9100 8080

ENTRYPOINT ["flashsale"]
CMD ["api"]
