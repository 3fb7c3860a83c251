# The two commands of the README: `make demo` and `make test`. Both create .venv when it is
# missing and reinstall when pyproject.toml changes (the stamp carries its hash).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPEC_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.installed-$(SPEC_HASH)
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=

.PHONY: install demo test test-all lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/feddel-sim demo --out $(DEMO_OUT) $(DEMO_ARGS)

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
