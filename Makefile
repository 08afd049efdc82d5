# Two set-up commands must work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config/example.yaml
# torch and torchvision must be installed as a matching pair (see README).
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
DEBIAN_TOOLS := dcmtk dicom3tools orthanc openssl
TOOL_BINARIES := storescu echoscu storescp dcmconv dcmcjpls dciodvfy Orthanc openssl

.PHONY: run test test-unit bench tools lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Debian's packages for the real DICOM peers the tests and benchmarks talk to.
tools:
	@missing=""; for b in $(TOOL_BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing $(DEBIAN_TOOLS) (missing:$$missing)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEBIAN_TOOLS); \
	  else \
	    echo "missing:$$missing -- run: sudo apt-get install -y $(DEBIAN_TOOLS)"; exit 1; \
	  fi; \
	fi

run: $(VENV)/.installed
	$(VENV)/bin/cxr-node --config $(CONFIG) serve

test: $(VENV)/.installed tools
	$(VENV)/bin/ruff check node model training storage config tests benchmarks
	$(PY) -m pytest $(PYTEST_ARGS)

# The quick tier: no peer process, no PostgreSQL, no training run (markers: tests/conftest.py).
test-unit: $(VENV)/.installed tools
	$(VENV)/bin/ruff check node model training storage config tests benchmarks
	$(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed tools
	$(PY) benchmarks/ingest.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) var
