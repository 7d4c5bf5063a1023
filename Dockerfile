# syntax=docker/dockerfile:1
#
# FlashSale: one image, every role.
#
#   docker build -t flashsale:dev .
#   docker run --rm -p 8000:8000 -e REDIS_URL=... -e DATABASE_URL=... flashsale:dev   # the API
#   docker run --rm -e DATABASE_URL=... flashsale:dev migrate                         # any role
#
# The build stage installs the pinned wheels of requirements.lock (no compiler needed: every
# package ships a manylinux wheel) and the project's own wheel into a venv; the final stage
# copies that venv only. It runs as UID 10001 and writes nothing outside /tmp, so it runs with
# a read-only root filesystem (the Helm chart mounts emptyDirs on /tmp and
# /tmp/flashsale-metrics). No HEALTHCHECK: Kubernetes probes /healthz and /readyz.

# Both stages: the same base, pinned by tag (append @sha256:... for bit-for-bit rebuilds).
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# The project's build backend (pyproject: setuptools>=68), pinned, in the build stage only;
# and a venv without pip: the build stage's pip installs into it (`pip --python`).
RUN pip install --no-cache-dir setuptools==80.9.0 \
    && python -m venv --without-pip /opt/flashsale

# Dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip --python /opt/flashsale/bin/python install --no-cache-dir --no-deps \
        --only-binary=:all: -r requirements.lock

COPY pyproject.toml README.md ./
COPY flashsale/ flashsale/
COPY api/ api/
COPY waiting_room/ waiting_room/
COPY operator/ operator/
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
    && pip --python /opt/flashsale/bin/python install --no-cache-dir --no-deps /wheels/flashsale-*.whl \
    && /opt/flashsale/bin/flashsale --help > /dev/null


FROM python:3.11-slim-bookworm

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="flashsale" \
      org.opencontainers.image.description="FlashSale: a fair virtual waiting room, zero-oversell purchase and durable orders; one image for every role (flashsale api|admitter|persister|operator|migrate|prewarm|reconcile)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="FlashSale" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# PROMETHEUS_MULTIPROC_DIR: the uvicorn workers of `flashsale api` share their metrics there.
# prometheus_client switches to multi-process mode whenever the variable exists, for every
# role, so the folder must exist and be writable (the image has it; Kubernetes mounts one).
ENV PATH=/opt/flashsale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    FLASHSALE_HOST=0.0.0.0 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/flashsale-metrics

RUN groupadd --system --gid 10001 flashsale \
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
