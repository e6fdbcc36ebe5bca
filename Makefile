# Two commands do all the set-up on a fresh machine:
#   make run    the collector with its dashboard on the embedded store (demo data if empty)
#   make test   the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean tools node-deps chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.server: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[server,mcp]'  # mcp: the demo drives real MCP servers
	touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.server
	$(BIN)/mcpmeter serve --demo

# promtool and prometheus (tests run them against /metrics and the Grafana dashboard) and a
# compose implementation (the deploy/ file is checked): installed from Debian's packages when missing.
tools:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null)
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null)

# Chromium for the dashboard tests (driven by Playwright; its own browser download is never used).
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation >/dev/null)

# The Node reference MCP server the proxy tests drive (npm, into .cache/node).
NODE_PREFIX := .cache/node
EVERYTHING_SERVER := @modelcontextprotocol/server-everything@2026.8.31
EVERYTHING := $(NODE_PREFIX)/node_modules/@modelcontextprotocol/server-everything/package.json

$(EVERYTHING):
	@command -v npm >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null)
	npm install --silent --no-audit --no-fund --save-exact --prefix $(NODE_PREFIX) $(EVERYTHING_SERVER)

node-deps: $(EVERYTHING)

test: $(VENV)/.test tools chromium $(EVERYTHING)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The gates .ci/run runs after the tests: ruff, and mypy (strict for sdk/, storage/, events, protocol; see pyproject.toml).
lint: $(VENV)/.test
	$(BIN)/ruff check src tests bench
	env -u MYPYPATH $(BIN)/mypy

bench: $(VENV)/.test
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
