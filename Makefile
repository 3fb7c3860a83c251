# The two commands of the README: `make demo` and `make test`. Both create .venv when it is
# missing and reinstall when pyproject.toml changes (the stamp carries its hash).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPEC_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.installed-$(SPEC_HASH)
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=

.PHONY: install demo science test test-all lint bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# Controls and FedDEL vs random at 5%, 2 seeds side by side (feddel-sim demo --parallel 2)
demo: $(STAMP)
	$(BIN)/feddel-sim demo --out $(DEMO_OUT) $(DEMO_ARGS)

# Does curation pay? (docs/does-curation-pay.md) The controls at 5% first, then the methods at
# 5% and 20% and the full pool, SCIENCE_SEEDS seeds, every cell from its seed's random init by
# the fast exact FedSGD path, the seeds as side-by-side shards (--parallel). Rerunning resumes
# from the finished cells. The table, CSV and plots are copied to docs/science/.
SCIENCE_OUT ?= runs/science
SCIENCE_DATA ?= $(DEMO_OUT)/data
SCIENCE_SEEDS ?= 5
SCIENCE_PARALLEL ?= 2
SCIENCE_ARGS ?= --fast --fedadam --local-steps 1 --local-lr 1 --batch-size 4 \
	--centers-per-round 4 --center-weighting equal --rounds 2000 --warmup-rounds 1600 \
	--curation-encoder warmup
SCIENCE_COMPARE = $(BIN)/feddel-sim compare --data $(SCIENCE_DATA) --out $(SCIENCE_OUT) \
	--seeds $(SCIENCE_SEEDS) --parallel $(SCIENCE_PARALLEL) $(SCIENCE_ARGS)

science: $(STAMP)
	@test -f $(SCIENCE_DATA)/federation.json || $(BIN)/feddel-sim data --out $(SCIENCE_DATA)
	$(SCIENCE_COMPARE) --methods oracle,disruptive-only,whole-videos,one-mode-only --budgets 0.05
	$(SCIENCE_COMPARE) --methods random,meddel,feddel,optidel,full --budgets 0.05,0.2
	@mkdir -p docs/science
	cp $(SCIENCE_OUT)/results.csv $(SCIENCE_OUT)/results.md $(SCIENCE_OUT)/results.png \
		$(SCIENCE_OUT)/paired.png $(SCIENCE_OUT)/settings.json docs/science/

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
test: $(STAMP)
	$(BIN)/ruff check .
	@$(BIN)/python -m pytest -m "not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; exit 1; fi; \
	exit $$rc

test-all: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/feddel-sim bench --out runs/bench

# CUDA and autocast figures (benchmark 1 and one demo cell) when a GPU is present; says why not
gpu-check: $(STAMP)
	$(BIN)/feddel-sim bench --gpu --out runs/gpu-check

clean:
	rm -rf runs .pytest_cache .ruff_cache
