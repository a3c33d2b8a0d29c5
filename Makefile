# Set-up and entry points. Everything installs into a local virtual environment (.venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# Constraints = a lock of a stack verified on these machines (torch from local disk, no backtracking).
	$(PY) -m pip install -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/lazyslide demo

test: install
	$(VENV)/bin/ruff check lazyslide server tests bench
	$(VENV)/bin/pytest -q

bench: install
	$(PY) bench/cold_tile.py

clean:
	rm -rf $(VENV)
