# The two commands of the README:  make example  (build the bundled example)  and  make test.
PROFILE ?= profiles/dual-nano-itx.yaml
PY := .venv/bin/python

.PHONY: setup example test test-fast lint
setup:
	./scripts/install-deps

example: setup
	.venv/bin/clusterctl validate $(PROFILE)
	.venv/bin/clusterctl plan $(PROFILE)
	.venv/bin/clusterctl build $(PROFILE)

test: setup
	.venv/bin/ruff check .
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	.venv/bin/ruff check .
