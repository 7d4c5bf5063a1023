# FlashSale — developer entry points.
#
#   make demo    set up everything (venv, Redis, PostgreSQL) and run the demo
#   make test    set up everything, run the static checks and pytest (then the Redis-backed
#                core tests a second time, against a local Redis Cluster)
#
# Existing Redis (127.0.0.1:6379) / PostgreSQL (127.0.0.1:5432) are reused, as
# are REDIS_URL / DATABASE_URL from the environment; see scripts/ensure-services.sh.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# apt/dpkg must never run twice at once (venv and services may both install).
.NOTPARALLEL:

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
SERVICES_ENV := .run/services.env
# a local 3-primary Redis Cluster (scripts/redis-cluster.sh) beside the plain Redis
CLUSTER_DIR := .run/redis-cluster
CLUSTER_ENV := $(CLUSTER_DIR)/cluster.env
# the tests `make test` runs a second time with REDIS_URL naming that cluster
CLUSTER_TESTS := tests/integration/test_room_join.py tests/integration/test_room_admission.py \
	tests/integration/test_room_prequeue.py tests/integration/test_purchase_smoke.py \
	tests/integration/test_purchase_stock.py tests/integration/test_sold_out_for_now.py \
	tests/integration/test_failure_modes.py tests/integration/test_persister.py \
	tests/integration/test_admitter_concurrency.py tests/system/test_demo.py
PYTEST_ARGS ?=
# checkov pins an old `packaging`, so it lives in a venv of its own
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_VERSION := 3.3.30

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: help venv lock checkov terraform-tools terraform-docs terraform-lock packages services redis-cluster envtest check test cluster-check demo chaos image clean

help: ## List targets
	@echo "FlashSale make targets:"
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-13s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo "Variables: PYTHON=$(PYTHON)  PYTEST_ARGS='...' (e.g. make test PYTEST_ARGS='-k tokens')"

venv: $(STAMP) ## Create .venv: the hashed locks (dev + loadtest extras), then the project

# Everything comes from the locks (`make lock` writes them): pip and setuptools pinned, every
# dependency pinned with its hashes, the project itself installed editable without deps.
LOCKS := requirements.lock requirements-dev.lock requirements-build.lock

$(STAMP): pyproject.toml $(LOCKS)
	@if ! command -v $(PYTHON) >/dev/null 2>&1; then \
	    echo "make: $(PYTHON) not found; installing python3 and python3-venv with apt" >&2; \
	    $(APT) update -qq && $(APT) install -y -qq --no-install-recommends python3 python3-venv; \
	fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	    echo "make: FlashSale needs Python >= 3.11 but $(PYTHON) is $$($(PYTHON) -V 2>&1);" \
	         "run e.g. 'make $(MAKECMDGOALS) PYTHON=python3.11'" >&2; \
	    exit 1; }
	@if ! $(VENV)/bin/python -m pip --version >/dev/null 2>&1; then \
	    rm -rf $(VENV); \
	    echo "make: creating $(VENV) with $(PYTHON)" >&2; \
	    if ! $(PYTHON) -m venv $(VENV); then \
	        echo "make: '$(PYTHON) -m venv' failed; installing python3-venv with apt and retrying" >&2; \
	        rm -rf $(VENV); \
	        $(APT) update -qq && $(APT) install -y -qq --no-install-recommends python3-venv; \
	        $(PYTHON) -m venv $(VENV); \
	    fi; \
	fi
	$(VENV)/bin/pip install -q --require-hashes -r requirements-build.lock
	$(VENV)/bin/pip install -q --require-hashes -r requirements-dev.lock
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	@touch $@

UPGRADE ?= 0

lock: $(STAMP) ## Rewrite the hashed locks from pyproject.toml, then update .venv (UPGRADE=1: newest versions)
	UPGRADE=$(UPGRADE) scripts/lock.sh
	@$(MAKE) --no-print-directory venv

checkov: $(CHECKOV_STAMP) ## Install checkov into its own venv (used by the chart and Terraform tests)

$(CHECKOV_STAMP): $(STAMP)
	@$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/pip install -q 'checkov==$(CHECKOV_VERSION)'
	@touch $@

# Terraform tooling (terraform/, tested by tests/deploy/test_terraform.py). tflint and terraform-docs
# are built from the Go module proxy at the versions scripts/terraform-tools/*/go.mod pin, into
# .cache/terraform-tools/ (reused while the version stays the same).
TERRAFORM_ROOTS := terraform/gke/cluster terraform/gke/app terraform/eks/cluster terraform/eks/app
TERRAFORM_DOCS_DIRS := $(TERRAFORM_ROOTS) terraform/modules/flashsale
TERRAFORM_LOCK_PLATFORMS := linux_amd64 linux_arm64 darwin_amd64 darwin_arm64

terraform-tools: ## Build tflint and terraform-docs (Go module proxy; cached in .cache/)
	@scripts/terraform-tools/build.sh tflint >/dev/null
	@scripts/terraform-tools/build.sh terraform-docs >/dev/null

terraform-docs: terraform-tools ## Rewrite the generated part of each terraform/*/README.md
	@docs=$$(scripts/terraform-tools/build.sh terraform-docs); \
	for d in $(TERRAFORM_DOCS_DIRS); do "$$docs" --config terraform/.terraform-docs.yml "$$d"; done

# Needs the Terraform registry (terraform init downloads every provider): run it where the
# registry is reachable and commit the .terraform.lock.hcl files it writes.
terraform-lock: ## Write .terraform.lock.hcl of every Terraform root (needs registry access)
	for d in $(TERRAFORM_ROOTS); do \
	    terraform -chdir=$$d init -backend=false -input=false -upgrade && \
	    terraform -chdir=$$d providers lock $(addprefix -platform=,$(TERRAFORM_LOCK_PLATFORMS)); \
	done

# Debian packages the tests drive for real: the browser tests, the spike harness, the Redis
# Cluster (and the TLS Redis) the tests start, and the image's daemonless build (buildah;
# debootstrap makes its base)
TEST_PACKAGES := chromium fonts-noto-cjk haproxy redis-server buildah debootstrap

packages: ## Install the Debian packages the tests need (Chromium, CJK fonts, HAProxy, Redis, buildah)
	@scripts/ensure-packages.sh $(TEST_PACKAGES)

services: ## Ensure Redis + PostgreSQL run; write .run/services.env
	@scripts/ensure-services.sh

envtest: ## Build kube-apiserver and etcd from source for the Kubernetes tests (cached in .cache/envtest/)
	@scripts/envtest/build.sh >/dev/null

redis-cluster: ## Start (or reuse) a local 3-primary Redis Cluster on free ports; writes .run/redis-cluster/cluster.env
	@scripts/ensure-packages.sh redis-server
	@scripts/redis-cluster.sh start $(CLUSTER_DIR)

# The second pass (the same Redis-backed tests on the Redis Cluster) may select nothing
# (PYTEST_ARGS='-k tokens'): pytest's exit status 5.
test: check $(CHECKOV_STAMP) terraform-tools packages services redis-cluster envtest ## The static checks, then pytest on one Redis and on the Redis Cluster (PYTEST_ARGS=... passed to pytest)
	. $(SERVICES_ENV) && . $(CLUSTER_ENV) && $(VENV)/bin/pytest -q $(PYTEST_ARGS)
	. $(SERVICES_ENV) && . $(CLUSTER_ENV) && REDIS_URL=$$REDIS_CLUSTER_URL \
	    $(VENV)/bin/pytest -q $(PYTEST_ARGS) $(CLUSTER_TESTS) || [ $$? -eq 5 ]

# The image tests build the image themselves (scripts/image.sh, cached in .cache/) and install
# buildah and debootstrap when missing.
cluster-check: $(STAMP) services envtest ## Tests against a real kube-apiserver and of the built image (-m 'kubernetes or image'); ends with one JSON line of facts
	. $(SERVICES_ENV) && $(VENV)/bin/python scripts/cluster_check.py $(PYTEST_ARGS)

demo: $(STAMP) services ## Migrate the database and run the demo
	. $(SERVICES_ENV) && $(VENV)/bin/flashsale migrate && $(VENV)/bin/python -m loadtest.demo $(DEMO_ARGS)

image: ## Build the image without Docker (buildah + a debootstrapped base; cached) and print its size
	@scripts/image.sh build
	@echo "image: $${FLASHSALE_IMAGE:-localhost/flashsale:dev}, $$(scripts/image.sh size) MB"

check: $(STAMP) ## Static checks: ruff check, ruff format --check, mypy, the import layers
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean: ## Remove .venv, caches, egg-info, .run/services.env and the image's .cache (stops no services)
	@if [ -d .cache/containers ]; then scripts/image.sh clean; fi
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .ruff_cache *.egg-info src/*.egg-info $(SERVICES_ENV)

# -- load test and benchmarks (loadtest/; the `loadtest` extra: locust, py-spy, matplotlib) ----
# (requirements-dev.lock holds the loadtest extra too: `make venv` installed it)
LOADTEST_ARGS ?=
BENCH_ARGS ?=
.PHONY: loadtest bench chaos

loadtest: $(STAMP) services ## Flash-sale spike via HAProxy + locust, invariants checked; report in reports/
	. $(SERVICES_ENV) && $(VENV)/bin/python -m loadtest.spike $(LOADTEST_ARGS)

bench: $(STAMP) services ## Benchmarks (wrk) vs a bare endpoint and a row-lock purchase, with targets
	. $(SERVICES_ENV) && $(VENV)/bin/python -m loadtest.bench $(BENCH_ARGS)

CHAOS_ARGS ?=

# its own Redis and PostgreSQL: `services` only makes sure their Debian packages are there
chaos: $(STAMP) packages services ## Faults during sales (kill -9, outages, stalls, a partition), invariants checked; report in reports/
	$(VENV)/bin/python -m loadtest.chaos $(CHAOS_ARGS)
