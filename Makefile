# rigwatch developer entry points. `make demo` and `make test` are the README's two commands.
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := prometheus prometheus-alertmanager prometheus-node-exporter

.PHONY: demo test lint unit bench deps venv clean

# Debian packages for the real Prometheus/Alertmanager/node-exporter the demo and tests start.
deps:
	@missing=""; for b in prometheus promtool prometheus-alertmanager amtool prometheus-node-exporter; do \
	  command -v $$b >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: deps venv
	$(PY) -m scripts.demo

lint: venv
	$(VENV)/bin/ruff check .

unit: venv
	$(VENV)/bin/pytest -q -m "not integration"

test: deps venv lint
	$(VENV)/bin/pytest -q

bench: venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
