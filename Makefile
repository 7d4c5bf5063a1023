# FlashSale — developer entry points.
#
#   make demo    set up everything (venv, Redis, PostgreSQL) and run the demo
#   make test    set up everything, run the static checks and pytest
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
PYTEST_ARGS ?=
# checkov pins an old `packaging`, so it lives in a venv of its own
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_VERSION := 3.3.30

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: help venv checkov terraform-tools terraform-docs terraform-lock packages services envtest check test cluster-check demo clean

help: ## List targets
	@echo "FlashSale make targets:"
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-9s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo "Variables: PYTHON=$(PYTHON)  PYTEST_ARGS='...' (e.g. make test PYTEST_ARGS='-k tokens')"

venv: $(STAMP) ## Create .venv and install the project with dev extras

$(STAMP): pyproject.toml
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
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,loadtest]'
	@touch $@

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

# Debian packages the tests drive for real: the browser tests and the spike harness
TEST_PACKAGES := chromium fonts-noto-cjk haproxy

packages: ## Install the Debian packages the tests need (Chromium, CJK fonts, HAProxy)
	@scripts/ensure-packages.sh $(TEST_PACKAGES)

services: ## Ensure Redis + PostgreSQL run; write .run/services.env
	@scripts/ensure-services.sh

envtest: ## Build kube-apiserver and etcd from source for the Kubernetes tests (cached in .cache/envtest/)
	@scripts/envtest/build.sh >/dev/null

test: check $(CHECKOV_STAMP) terraform-tools packages services envtest ## The static checks, then pytest (PYTEST_ARGS=... passed to pytest)
	. $(SERVICES_ENV) && $(VENV)/bin/pytest -q $(PYTEST_ARGS)

cluster-check: $(STAMP) services envtest ## Tests against a real kube-apiserver (-m kubernetes); ends with one JSON line of facts
	. $(SERVICES_ENV) && $(VENV)/bin/python scripts/cluster_check.py $(PYTEST_ARGS)

demo: $(STAMP) services ## Migrate the database and run the demo
	. $(SERVICES_ENV) && $(VENV)/bin/flashsale migrate && $(VENV)/bin/python -m loadtest.demo $(DEMO_ARGS)

check: $(STAMP) ## Static checks: ruff check, ruff format --check, mypy, the import layers
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean: ## Remove .venv, caches, egg-info and .run/services.env (stops no services)
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .ruff_cache *.egg-info src/*.egg-info $(SERVICES_ENV)

# -- load test and benchmarks (loadtest/; the `loadtest` extra: locust, py-spy, matplotlib) ----
LOADTEST_STAMP := $(VENV)/.installed-loadtest
LOADTEST_ARGS ?=
BENCH_ARGS ?=
.PHONY: loadtest bench

$(LOADTEST_STAMP): $(STAMP) pyproject.toml
	$(VENV)/bin/pip install -q -e '.[dev,loadtest]'
	@touch $@

loadtest: $(LOADTEST_STAMP) services ## Flash-sale spike via HAProxy + locust, invariants checked; report in reports/
	. $(SERVICES_ENV) && $(VENV)/bin/python -m loadtest.spike $(LOADTEST_ARGS)

bench: $(LOADTEST_STAMP) services ## Benchmarks (wrk) vs a bare endpoint and a row-lock purchase, with targets
	. $(SERVICES_ENV) && $(VENV)/bin/python -m loadtest.bench $(BENCH_ARGS)
