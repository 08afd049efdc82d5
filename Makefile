# Two set-up commands must work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config/example.yaml
# torch and torchvision must be installed as a matching pair (see docs/testing.md).
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
DEBIAN_TOOLS := dcmtk dicom3tools orthanc orthanc-dicomweb openssl chromium
TOOL_BINARIES := storescu echoscu storescp dcmconv dcmcjpls dcmp2pgm dsr2html dciodvfy Orthanc \
	openssl chromium /usr/share/orthanc/plugins/libOrthancDicomWeb.so
# The web viewer the node serves at /viewer/ (`make demo-viewer`, the browser tests): OHIF's
# prebuilt dist from npm, pinned (node/viewer.py names the same version).
OHIF_VERSION := 3.13.2
OHIF_DIST := var/ohif/$(OHIF_VERSION)/dist
# pytest-xdist workers, a test module to a worker (tests/conftest.py): most integration tests
# wait on processes and sockets, so a 2-core machine runs three at once; TEST_WORKERS=0 runs
# the suite in one process.
TEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadscope --durations=15
# Python writes bytecode caches for our own modules (__pycache__/, ignored by git) even where
# the environment says not to: without them every process the tests start (about 200: nodes,
# CLI commands, workers) compiles the project's sources again, 0.3-0.4 s of CPU each here.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test test-unit bench tools viewer-assets demo-viewer lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Debian's packages for the real DICOM peers the tests and benchmarks talk to.
tools:
	@missing=""; for b in $(TOOL_BINARIES); do command -v $$b >/dev/null 2>&1 || [ -e $$b ] || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing $(DEBIAN_TOOLS) (missing:$$missing)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEBIAN_TOOLS); \
	  else \
	    echo "missing:$$missing -- run: sudo apt-get install -y $(DEBIAN_TOOLS)"; exit 1; \
	  fi; \
	fi

$(OHIF_DIST)/index.html:
	rm -rf var/ohif/$(OHIF_VERSION) && mkdir -p var/ohif/$(OHIF_VERSION)
	cd var/ohif/$(OHIF_VERSION) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null \
	  && tar xzf ohif-app-$(OHIF_VERSION).tgz --strip-components=1 package/dist \
	  && rm ohif-app-$(OHIF_VERSION).tgz

viewer-assets: $(OHIF_DIST)/index.html

# The demo, then the node kept up with its own viewer (OHIF at /viewer/) until Ctrl-C.
demo-viewer: $(VENV)/.installed viewer-assets
	$(VENV)/bin/cxr-node demo --out var/demo --viewer

run: $(VENV)/.installed
	$(VENV)/bin/cxr-node --config $(CONFIG) serve

test: $(VENV)/.installed tools viewer-assets
	$(VENV)/bin/ruff check node model training storage config tests benchmarks
	$(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The quick tier: no peer process, no PostgreSQL, no training run (markers: tests/conftest.py).
test-unit: $(VENV)/.installed tools
	$(VENV)/bin/ruff check node model training storage config tests benchmarks
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not integration and not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed tools
	$(PY) benchmarks/ingest.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) var
