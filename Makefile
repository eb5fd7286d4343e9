# Everyday tasks. Each target creates/updates the virtual environment from pyproject.toml first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST := 127.0.0.1
export PYTHONPATH := $(CURDIR)

.PHONY: venv sysdeps serve translate test test-all test-deploy chart-files lint typecheck train evaluate bench bench-step bench-http gpu-check loadtest clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

# System packages some tests use (Prometheus server, headless Chromium); installed when root.
sysdeps:
	@scripts/sysdeps.sh

## Start the service on the embedded model at http://$(HOST):8000
serve: venv
	$(BIN)/python -m service.run

## Translate from the command line: make translate TEXT="A dog runs on the beach."
translate: venv
	$(BIN)/python -m model.translate $(if $(TEXT),"$(TEXT)",)

## The whole test suite (long soak/overload checks excluded: make test-all)
test: venv sysdeps
	$(BIN)/python -m pytest -m "not slow and not cuda"

test-all: venv sysdeps
	$(BIN)/python -m pytest

## Docker image, Helm chart, alerts and dashboard, offline (no Docker, no cluster)
test-deploy: venv sysdeps
	$(BIN)/python -m pytest -q tests/deploy

## Copy the canonical alerts and dashboard (deploy/) into the chart, which cannot read outside helm/
chart-files:
	cp deploy/prometheus/rules.yaml helm/files/prometheus-rules.yaml
	cp deploy/grafana/mt-serve.json helm/files/grafana-mt-serve.json

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

## Reproduce the embedded model end to end (hours on 2 CPU cores; see models/embedded-en-de/MODEL_CARD.md)
train: venv
	test -f /usr/share/trans/de-en || (echo "needs Debian's trans-de-en: apt-get install -y trans-de-en" && exit 1)
	$(BIN)/python -m model.train --multi30k $(or $(MULTI30K),../shared/data/multi30k) --work runs/embedded --out models/embedded-en-de

evaluate: venv
	$(BIN)/python -m model.evaluate --multi30k $(or $(MULTI30K),../shared/data/multi30k)

bench: venv
	$(BIN)/python -m loadtests.bench_engine

bench-step: venv
	$(BIN)/python -m loadtests.bench_step

bench-http: venv
	$(BIN)/python -m loadtests.bench_http

## On a machine with a GPU: CUDA tests plus the GPU benchmark, in one go (under 8 minutes)
gpu-check: venv
	$(BIN)/python -m pytest -m cuda -q
	$(BIN)/python -m loadtests.bench_engine --device cuda --quick

## Load test (Locust) against the service on the embedded model: make loadtest SHAPE=step|steady|spike
## [LOADTEST_ARGS="--duration 60 --model DIR --slo-scale 2"]; the report goes to reports/<shape>-<timestamp>/
loadtest: venv
	$(BIN)/python -m loadtests.run --shape $(or $(SHAPE),step) $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
