# Every target the README names. `make install` sets up .venv on a fresh machine (CPU only).
PY ?= .venv/bin/python

.PHONY: install test lint typecheck demo bench clean

install:
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# Exactly this pin: pip takes the CPU wheel; a looser one pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The ray extra too: the tests run nmrl compare on a real (network-isolated) Ray instance.
	$(PY) -m pip install -q -e ".[dev,ray]"

test: install
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint:
	$(PY) -m ruff check .

typecheck:
	$(PY) -m mypy

demo:
	bash scripts/demo.sh

bench:
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf .venv runs .pytest_cache .mypy_cache
