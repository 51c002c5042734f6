# platform-admin — every target installs what it needs into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.installed-browser
CHROMIUM ?= /usr/bin/chromium
PROTO_FILES := $(shell find protos -name '*.proto' | sort)

.DEFAULT_GOAL := help
.PHONY: help install run migrate test test-faults test-browser lint generate check-generated bench bench-watch bench-health bench-relay bench-client soak clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

PYPROJECTS := pyproject.toml generated/pyproject.toml domain/pyproject.toml clients/python/pyproject.toml

# Four distributions, all editable: the stubs, the domain rules, the client library, the service.
# The service and the client name the stubs and the rules by path, which pip will not match
# with an editable install in the same command: the second command makes those two editable.
$(STAMP): $(PYPROJECTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e './clients/python[openfeature]' -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps -e ./generated -e ./domain
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the service with its dev tools

run: $(STAMP) ## Serve on 127.0.0.1:50051 (embedded PostgreSQL unless DATABASE_URL is set)
	$(BIN)/platform-admin serve

migrate: $(STAMP) ## Apply pending migrations and exit
	$(BIN)/platform-admin migrate

test: $(STAMP) check-generated lint node-deps ## Run the whole test suite (embedded PostgreSQL unless DATABASE_URL is set)
	$(BIN)/python -m pytest -m "not faults and not browser" -q

test-faults: $(STAMP) ## Run the fault-injection suite (bounded in time)
	$(BIN)/python -m pytest -m faults -q

$(BROWSER_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,browser]'
	touch $(BROWSER_STAMP)

test-browser: $(BROWSER_STAMP) ## Console tests in headless chromium (installs Debian's chromium if missing)
	test -x $(CHROMIUM) || (apt-get update && apt-get install -y chromium)
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -m browser -q

lint: $(STAMP) ## buf lint + format, ruff, mypy
	cd protos && ../$(BIN)/buf lint && ../$(BIN)/buf format -d --exit-code
	$(BIN)/ruff check server storage domain tests bench clients/python/platform_admin_client
	$(BIN)/ruff format --check server storage domain tests bench clients/python/platform_admin_client
	$(BIN)/mypy

generate: $(STAMP) ## Regenerate generated/ from protos/
	rm -rf generated/platform_admin generated/flagd/evaluation generated/flagd/sync
	$(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=generated --pyi_out=generated \
		--grpc_python_out=generated --mypy_grpc_out=generated \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		$(PROTO_FILES)
	touch generated/platform_admin/__init__.py generated/platform_admin/v1/__init__.py generated/platform_admin/py.typed
	touch generated/flagd/evaluation/__init__.py generated/flagd/evaluation/v1/__init__.py \
		generated/flagd/evaluation/v2/__init__.py generated/flagd/sync/__init__.py \
		generated/flagd/sync/v1/__init__.py
	# flagd's messages live in a descriptor pool of their own (generated/flagd/_pool.py), so
	# a process may load these stubs and the flagd providers' own copies side by side.
	sed -i 's/^from google.protobuf import descriptor_pool as _descriptor_pool$$/from flagd import _pool as _descriptor_pool/' \
		$$(find generated/flagd -name '*_pb2.py' | sort)

check-generated: $(STAMP) ## Fail if generated/ is not what protos/ produce
	@tmp=$$(mktemp -d); cp -r generated "$$tmp/before"; \
	$(MAKE) --no-print-directory generate >/dev/null; \
	if ! diff -r "$$tmp/before" generated >/dev/null; then \
		diff -r "$$tmp/before" generated | head -20; rm -rf "$$tmp"; \
		echo "generated/ is stale: run 'make generate' and commit"; exit 1; fi; \
	rm -rf "$$tmp"

node-deps: ## Node packages for tests/test_openfeature_node.py (make test runs it; skipped without npm)
	@if ! command -v npm >/dev/null; then echo "npm not found: the Node OpenFeature test will be skipped"; \
	elif [ ! tests/node/node_modules/.package-lock.json -nt tests/node/package-lock.json ]; then \
		cd tests/node && npm ci --no-audit --no-fund; fi

bench: $(STAMP) ## Hot-path benchmark table (not part of make test; installs h2load if missing)
	command -v h2load >/dev/null || (apt-get update && apt-get install -y nghttp2-client)
	$(BIN)/python -m bench.hot_path
	$(BIN)/python -m bench.openfeature

bench-watch: $(STAMP) ## WatchFlags fan-out: 1,000 and 10,000 subscribers against an empty fan-out
	$(BIN)/python -m bench.watch

bench-health: $(STAMP) ## 5 million check results: ListCheckResults and GetPlatformHealth latency
	$(BIN)/python -m bench.health

bench-relay: $(STAMP) ## Outbox relay: publish rate vs a raw nats-py loop, commit-to-consumer latency at 200/s
	$(BIN)/python -m bench.relay

bench-client: $(STAMP) ## Client library: local answers vs RPC, commit-to-on_change at 1,000 clients, memory
	$(BIN)/python -m bench.client

soak: $(STAMP) ## Mixed-load soak, default 5 minutes (SOAK_SECONDS to change)
	$(BIN)/python -m bench.soak

clean: ## Remove .venv and .data (embedded PostgreSQL data)
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
