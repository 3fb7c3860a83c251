# The two commands of the README: `make demo` and `make test`. Both create .venv when it is
# missing and reinstall when pyproject.toml changes (the stamp carries its hash).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPEC_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.installed-$(SPEC_HASH)
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=

.PHONY: install demo fedsgd test test-all lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/feddel-sim demo --out $(DEMO_OUT) $(DEMO_ARGS)

# The README's FedSGD comparison on the demo federation: 3 seeds at 5/20/100%, one shard per
# seed side by side (a simulated federation keeps about one core busy), then the whole table.
# About 1 h 45 min on 2 cores; rerunning resumes from the finished rounds and cells.
FEDSGD_OUT ?= runs/fedsgd3
FEDSGD_ARGS ?= --methods random,feddel --budgets 0.05,0.2,1.0 --fedadam --local-steps 1 \
	--local-lr 1 --batch-size 4 --centers-per-round 4 --center-weighting equal \
	--warmup-rounds 1600 --rounds 400
FEDSGD_COMPARE = $(BIN)/feddel-sim compare --data $(DEMO_OUT)/data --out $(FEDSGD_OUT) \
	--seeds 3 $(FEDSGD_ARGS)

fedsgd: $(STAMP)
	@test -f $(DEMO_OUT)/data/federation.json || $(BIN)/feddel-sim data --out $(DEMO_OUT)/data
	@mkdir -p $(FEDSGD_OUT); pids=""; \
	for k in 1 2 3; do \
		echo "shard $$k/3: log in $(FEDSGD_OUT)/shard-$$k.log"; \
		$(FEDSGD_COMPARE) --shard $$k/3 > $(FEDSGD_OUT)/shard-$$k.log 2>&1 & pids="$$pids $$!"; \
	done; \
	rc=0; for pid in $$pids; do wait $$pid || rc=$$?; done; \
	if [ $$rc -ne 0 ]; then echo "a shard failed (exit $$rc): see $(FEDSGD_OUT)/shard-*.log" >&2; exit $$rc; fi
	$(FEDSGD_COMPARE)

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

clean:
	rm -rf runs .pytest_cache .ruff_cache
