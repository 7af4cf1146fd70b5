# rigwatch developer entry points. `make demo` and `make test` are the README's two commands.
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := prometheus prometheus-alertmanager prometheus-node-exporter victoria-metrics

.PHONY: demo test lint unit bench deps venv constraints secrets clean
# The versions the suite runs with; the Dockerfiles and CI install with them too.
CONSTRAINTS := constraints.txt
# The suite waits more than it computes (servers starting, rules evaluating, scrapes): two workers
# halve its wall time on CI's two cores. A test file stays on one worker (--dist loadfile), so its
# module fixtures start their servers once; every server takes a free port of its own.
TEST_WORKERS ?= 2

# Debian packages for the real Prometheus/Alertmanager/node-exporter the demo and tests start, and
# VictoriaMetrics (single node, vmagent, vmalert, vmauth: the fleet's central store and its tests).
deps:
	@missing=""; for b in prometheus promtool prometheus-alertmanager amtool prometheus-node-exporter victoria-metrics vmagent vmalert vmauth; do \
	  command -v $$b >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

# After changing dependencies in pyproject.toml (a new package, a raised bound): resolve them afresh
# in a scratch venv, with no old pin in the way, and write what got installed. Then `make test`
# (the venv is rebuilt from the new file) and commit both files.
constraints:
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	python3 -m venv "$$scratch" && \
	"$$scratch/bin/pip" install -q --upgrade pip && \
	"$$scratch/bin/pip" install -q -e '.[dev]' && \
	{ echo "# pip constraints: the versions the test suite runs with (Python 3.11). Regenerate with"; \
	  echo "# \`make constraints\` after changing dependencies in pyproject.toml; never edit by hand."; \
	  "$$scratch/bin/pip" freeze --exclude-editable | grep -v '^rigwatch[ =@]'; } > $(CONSTRAINTS).new && \
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && echo "wrote $(CONSTRAINTS)"

# The compose stack's secret files (./secrets/, never committed); existing files are kept.
secrets:
	sh scripts/init-secrets.sh secrets

venv: $(VENV)/.installed

demo: deps venv
	$(PY) -m scripts.demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/actionlint .github/workflows/*.yml
	$(VENV)/bin/hadolint docker/*.Dockerfile

unit: venv
	$(VENV)/bin/pytest -q -m "not integration"

test: deps venv lint
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
