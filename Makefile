# grpc-mesh developer tasks. `make test` is what CI runs; `make demo` runs the example mesh.
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV := .venv
PY := $(VENV)/bin/python
# Rebuilt whenever pyproject.toml changes, so `make venv` is a no-op when nothing did.
VENV_STAMP := $(VENV)/.grpc-mesh-dev-installed
BUF := node_modules/.bin/buf

.PHONY: venv tools protos check-protos buf-lint lint test demo

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

tools:
	bash scripts/setup-tools.sh

protos: venv
	$(PY) scripts/gen_protos.py

check-protos: venv
	$(PY) scripts/gen_protos.py --check

buf-lint: tools
	$(BUF) lint

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: venv tools
	$(PY) scripts/gen_protos.py --check
	$(BUF) lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

demo: venv
	$(VENV)/bin/meshctl demo

# Side by side: small unary gRPC calls direct, through sidecars and through nginx (bench/README.md).
# Writes bench/results/latest.md. Not part of `make test`: it takes a few minutes and wants a quiet machine.
.PHONY: bench
bench: venv tools
	$(PY) -m bench.run

# Apply → all-ACK latency of the control plane with 100 simulated sidecars (bench/README.md).
# Writes bench/results/control_plane.md. Not part of `make test`.
.PHONY: bench-control-plane
bench-control-plane: venv
	$(PY) -m bench.control_plane

# CPU an inbound call spends in authorization (50 rules) and JWT validation (bench/README.md).
# Writes bench/results/authz.md. Not part of `make test`.
.PHONY: bench-authz
bench-authz: venv
	$(PY) -m bench.authz

# Chaos scenarios (an endpoint killed, slowed, failing) and retry amplification, each next to a
# no-fault baseline (bench/README.md). Writes bench/results/resilience.md. Not part of `make test`.
.PHONY: bench-resilience
bench-resilience: venv
	$(PY) -m bench.resilience
