# One venv in .venv; every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install deps clean image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

RUNTIME := $(VENV)/.runtime

# The whole project with every extra (Kafka, Kubernetes, GeoIP) and the test tools.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,test]'
	touch $(STAMP) $(RUNTIME)

# The runtime only (what `pip install ban-auditor` gets): enough for replay and the demo.
$(RUNTIME): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $(RUNTIME)

install: $(STAMP)

## Replay the bundled sample: a k3s cluster whose servicelb masks clients, and a CrowdSec ban on the hop.
demo: $(RUNTIME)
	$(BIN)/auditor replay examples/demo/access.log --decisions examples/demo/decisions.json \
		--format table --fail-on never

## Debian packages the tests start for real (installed when root, else the command is printed).
deps:
	@bash .ci/deps

## Build the container image (podman, else docker) and print its reference last. Options go to
## deploy/build_image.py, e.g. IMAGE_FLAGS="--base docker.io/library/python:3.11-slim" or
## IMAGE_FLAGS=--debootstrap-base (no registry needed; root).
image: $(STAMP)
	$(BIN)/python deploy/build_image.py $(IMAGE_FLAGS)

## The whole suite (real CrowdSec, Tansu broker, Prometheus/promtool, kubectl, the image via podman).
test: deps $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check pipeline parsers sinks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.lapi_volume

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/out
