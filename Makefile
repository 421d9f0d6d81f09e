# The index of what can be run. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
REPO := models/repository
STAMP := $(VENV)/.installed

.PHONY: redis demo test test-unit test-inprocess test-system lint imports fmt bench profile nginx sysdeps bench-edge sim chaos fuzz loadtest loadtest-ui models venv clean

demo: $(STAMP) $(REPO)/manifest.json
	$(PY) -m gateway.cli demo --repository $(REPO)

test: $(STAMP) $(REPO)/manifest.json sysdeps
	$(PY) -m pytest -q

# The three layers alone: pure core (milliseconds), in-process (local ONNX Runtime), system (real hubs).
test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-inprocess: $(STAMP) $(REPO)/manifest.json
	$(PY) -m pytest -q tests/inprocess

test-system: $(STAMP) $(REPO)/manifest.json sysdeps
	$(PY) -m pytest -q tests/system

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy railcore gateway edge hub models devtools

# The import graph between packages, read from the source; fails if the product imports dev tooling,
# the core imports gateway or edge, or edge imports gateway.
imports: $(STAMP)
	$(PY) -m devtools.imports

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP) $(REPO)/manifest.json nginx redis
	$(PY) -m bench.run

# Where the gateway spends its CPU: py-spy flame graphs and top frames under load, per front and
# concurrency, in reports/profile/$(PROFILE_LABEL)/ (PROFILE_ARGS: --seconds, --only CASES).
PROFILE_LABEL ?= latest
profile: $(STAMP) $(REPO)/manifest.json
	$(PY) -m bench.profile --label $(PROFILE_LABEL) $(PROFILE_ARGS)

# The benchmark's anchor (nginx as a plain reverse proxy). A fresh machine has none: installed as root,
# otherwise said loudly; bench.run then prints a MISSING row (and fails under CI=true).
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing nginx-light (the bench anchor) ..."; \
	    apt-get update -qq -o DPkg::Lock::Timeout=180 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=180 nginx-light >/dev/null; \
	  else echo "MISSING nginx (install nginx-light): not root, cannot install it here"; fi; }

redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing redis-server (the fleet state bench) ..."; \
	    apt-get update -qq -o DPkg::Lock::Timeout=180 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=180 redis-server >/dev/null; \
	  else echo "MISSING redis-server (install redis-server): not root, cannot install it here"; fi; }

# System parts the system tests need; a fresh machine has none. Debian's redis-server (fleet state),
# chromium (the dashboard test), prometheus with promtool (the rules and scrape tests), nginx-light (the bench anchor),
# docker-compose (compose v1, to check deploy/compose.yaml offline: no engine runs it), and
# npm playwright-core (drives that chromium; it downloads no browser) under .venv/node. Installed as
# root with one apt-get update; otherwise each missing one is named, and its tests skip (and fail
# under CI=true). A second run does nothing.
SYSDEPS := redis-server:redis-server chromium:chromium promtool:prometheus prometheus:prometheus nginx:nginx-light docker-compose:docker-compose
PLAYWRIGHT := $(VENV)/node/node_modules/playwright-core/package.json

sysdeps: $(STAMP)
	@missing=""; for pair in $(SYSDEPS); do bin=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$bin >/dev/null || test -x /usr/sbin/$$bin || case " $$missing " in *" $$pkg "*) ;; *) missing="$$missing $$pkg";; esac; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (system test parts) ..."; \
	    apt-get update -qq -o DPkg::Lock::Timeout=180 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=180 $$missing >/dev/null; \
	  else echo "MISSING$$missing: not root, cannot install them here (apt-get install -y$$missing)"; fi; fi
	@test -f $(PLAYWRIGHT) || { command -v npm >/dev/null && npm install --prefix $(VENV)/node --no-save --no-audit --no-fund --loglevel=error playwright-core@1 >/dev/null; } \
	  || echo "MISSING npm playwright-core (needs node and npm): the dashboard test skips"

# Edge runtime: local-path overhead vs bare ONNX Runtime, firmware path over HTTP and a Unix socket.
bench-edge: $(STAMP) $(REPO)/manifest.json
	$(PY) -m bench.edge_bench

# Routing simulator: every policy, 1,000,000 requests each, virtual time (reports/sim/).
sim: $(STAMP)
	$(PY) -m bench.simulator $(SIM_ARGS)

# HTTP fuzzing, long run (schemathesis + hypothesis) against a real hub and gateway: ~5 min.
fuzz: $(STAMP) $(REPO)/manifest.json
	$(PY) -m pytest -q tests/system/fuzz_long.py

# Fault scenarios (overload, SIGTERM, hubs that hang, 500, answer garbage, cut replies), 30 s each.
chaos: $(STAMP) $(REPO)/manifest.json
	$(PY) -m bench.chaos $(CHAOS_ARGS)

# Locust against a local stack (two hubs behind links + gateway), or --host URL (reports/loadtest/).
loadtest: $(STAMP) $(REPO)/manifest.json
	$(PY) -m loadtests.run $(LOADTEST_ARGS)

loadtest-ui: $(STAMP) $(REPO)/manifest.json
	$(PY) -m loadtests.run --ui $(LOADTEST_ARGS)

models: $(REPO)/manifest.json

venv: $(STAMP)

# Re-installs only when the package list changes; a second run does nothing. uv (from PyPI, into the
# venv) installs the same packages as pip, in parallel: ~20 s instead of ~3 min on a fresh machine.
# Where uv cannot be installed or fails, pip does it all.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	{ $(PY) -m pip install -q uv && $(VENV)/bin/uv pip install -q --python $(PY) -e '.[dev,hub]'; } || { \
	  echo "uv failed: installing with pip (slower)"; \
	  $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e '.[dev,hub]'; }
	touch $@

$(REPO)/manifest.json: $(STAMP) $(wildcard models/*.py)
	$(PY) -m gateway.cli models build --repository $(REPO)

clean:
	rm -rf $(VENV) $(REPO) reports .pytest_cache .ruff_cache .mypy_cache
