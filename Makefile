# Every target installs what it needs: a fresh clone only needs python3 (>= 3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ARGS ?=
QUICK ?=
ONLY ?=

.PHONY: help install lint test test-unit test-integration test-reliability demo bench clean

help:
	@echo "make demo    run the whole pipeline locally on embedded defaults"
	@echo "make test    lint + unit + integration tests (real embedded broker)"
	@echo "make lint    ruff + mypy --strict"
	@echo "make bench   benchmarks against ceilings measured in the same run (QUICK=1 for a smoke run,"
	@echo "             ONLY=reconcile for one benchmark, keeping the others' last rows)"

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "dcnios needs Python >= 3.11 (set PYTHON=...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev,local,nifi]' --config-settings editable_mode=strict
	# OSCAR's FaaS supervisor for the sandbox and the contract tests. Its wheel's metadata is
	# malformed (webdavclient3==3.14.6requests): pip >= 24.1 refuses it, so a pip 24.0 kept beside
	# the venv installs it, without dependencies (pyproject's `local` extra carries those).
	$(BIN)/python -m pip install --quiet --target $(VENV)/pip-legacy 'pip==24.0'
	PYTHONPATH=$(VENV)/pip-legacy $(BIN)/python -m pip install --quiet --no-deps faas-supervisor==1.5.8
	touch $(STAMP)

# The strict editable install is a link tree (package-dir maps producers/ onto dcnios.producers);
# refreshing it picks up files added since the last install.
install: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=strict

lint: install
	$(BIN)/ruff check dcnios producers consumers schemas nifi_recipes deploy tests bench
	$(BIN)/ruff format --check dcnios producers consumers deploy tests bench
	cd $(VENV) && bin/mypy --config-file ../pyproject.toml -p dcnios  # outside the repo root, so ./dcnios does not shadow the install

# Three workers on two cores: the tests mostly wait on the broker and the emulators (user CPU is a
# quarter of the wall time), and every test names its own topics and groups.
test: lint
	$(BIN)/pytest -q -m "not reliability" -n 3 tests

test-unit: install
	$(BIN)/pytest -q tests/unit

test-integration: install
	$(BIN)/pytest -q tests/integration

test-reliability: install
	$(BIN)/pytest -q -m reliability tests

# The whole pipeline on embedded defaults: broker, sandbox dCache over demo/inbox, sandbox OSCAR
# writing checksum reports to demo/outbox. DEMO_ARGS=--once processes the sample batch and exits.
demo: install
	mkdir -p demo/inbox demo/outbox
	$(BIN)/dcnios up -c examples/demo.yaml --seed 24 $(DEMO_ARGS)

bench: install
	$(BIN)/python bench/run.py $(if $(QUICK),--quick,) $(foreach b,$(ONLY),--only $(b))

clean:
	rm -rf demo $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
