PY ?= .venv/bin/python

.PHONY: lint test bench schemas

lint:
	$(PY) -m ruff format --check events services schemas tests bench
	$(PY) -m ruff check events services schemas tests bench
	$(PY) -m mypy events services

test:
	$(PY) -m pytest

bench:
	$(PY) bench/command_path.py
	$(PY) bench/projections.py
	$(PY) bench/router.py
	$(PY) bench/audit.py

schemas:
	$(PY) -m schemas.generate
