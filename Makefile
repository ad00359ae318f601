# vsync-stream — the two commands of the README are `make demo` and `make test`.
# Everything they need (Python packages, Kafka, Pulsar, PostgreSQL) is set up by the targets here.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack
# A stack that comes up only in part is stopped again: nothing is left running on the machine.
STACK_UP := $(STACK) up || { $(STACK) down; exit 1; }
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
# KEEP=1 leaves the local stack running after `make demo` / `make test`.
KEEP ?= 0
PYTEST_ARGS ?=

.PHONY: system-deps install lock proto stack-up stack-down stack-status demo drill bench bench-diff bench-scale test chaos unit lint \
  typecheck clean

install: $(STAMP)

# Debian packages the tests use: Chromium (status page test) and promtool (alert rules check).
system-deps:
	@command -v chromium >/dev/null && command -v promtool >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium prometheus >/dev/null; }

# Every package at the version of constraints.txt (the environment the tests ran with); the
# libraries the seams reach into (bridges/*_seam.py) are pinned exactly in pyproject.toml too.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

# Refresh constraints.txt: resolve pyproject.toml afresh (newest versions its ranges allow) in a
# scratch venv and record every version. Run the tests before committing the new file.
LOCK_VENV := .local/lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_VENV)/bin/pip install -q -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; $(LOCK_VENV)/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf $(LOCK_VENV)
	@echo "constraints.txt refreshed: make install installs it; run make test before committing it"

# Regenerate the committed gRPC code from bridges/proto (a test checks it is up to date).
proto: install
	$(BIN)/python -m grpc_tools.protoc -I bridges/proto --python_out=bridges/generated \
	  --grpc_python_out=bridges/generated --pyi_out=bridges/generated bridges/proto/vsync_bridge.proto
	sed -i 's/^import vsync_bridge_pb2 as/from vsync_stream.bridges.generated import vsync_bridge_pb2 as/' \
	  bridges/generated/vsync_bridge_pb2_grpc.py

stack-up: install
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

demo: install
	$(STACK_UP)
	set -a; source "$${VSYNC_STACK_DIR:-.local}/stack.env"; set +a; \
	  rc=0; $(BIN)/vsync-stream demo $(DEMO_ARGS) || rc=$$?; \
	  if [ "$(KEEP)" != 1 ]; then $(STACK) down; fi; exit $$rc

# BACEN's homologation drill: 1,000,000 entries, 1,000 keys changed behind the pipeline's back.
drill: install
	$(STACK_UP)
	set -a; source "$${VSYNC_STACK_DIR:-.local}/stack.env"; set +a; \
	  rc=0; $(BIN)/vsync-stream drill $(DRILL_ARGS) || rc=$$?; \
	  if [ "$(KEEP)" != 1 ]; then $(STACK) down; fi; exit $$rc

# Streaming pipeline: fold throughput against a per-event Faust baseline, Pulsar→table latency,
# changelog restore rate and worker memory, in one run (200,000 events by default).
bench: install
	$(STACK_UP)
	set -a; source "$${VSYNC_STACK_DIR:-.local}/stack.env"; set +a; \
	  rc=0; $(BIN)/python benchmarks/bench_pipeline.py $(BENCH_ARGS) || rc=$$?; \
	  if [ "$(KEEP)" != 1 ]; then $(STACK) down; fi; exit $$rc

# One deployment at a large participant's scale (10,000,000 entries by default; BENCH_ARGS="--entries N"):
# bootstrap rate, worker RSS, restart/rebuild -> ready, disk per entry, a verification round and the
# full-path reconciliation diff of 10 M CIDs, each beside its target (BENCHMARKS.md).
bench-scale: install
	$(STACK_UP)
	set -a; source "$${VSYNC_STACK_DIR:-.local}/stack.env"; set +a; \
	  rc=0; $(BIN)/python benchmarks/bench_scale.py $(BENCH_ARGS) || rc=$$?; \
	  if [ "$(KEEP)" != 1 ]; then $(STACK) down; fi; exit $$rc

# The product's streaming CID diff against a plain Python-set baseline, side by side (10 M + 10 M).
bench-diff: install
	$(BIN)/python benchmarks/bench_diff.py $(BENCH_ARGS)

# Lint and the type check first (CI runs `make test`), then every test on the local stack.
test: install system-deps lint
	$(STACK_UP)
	set -a; source "$${VSYNC_STACK_DIR:-.local}/stack.env"; set +a; \
	  rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	  if [ "$(KEEP)" != 1 ]; then $(STACK) down; fi; exit $$rc

# The full fault-injection run (200,000 events, SIGKILLs, Kafka and Pulsar restarts), figures printed.
# The reduced run is part of `make test`. VSYNC_CHAOS_SEED=<n> picks another stream and fault moments.
# Then the SIGSTOP zombie case (tests/integration/test_chaos_zombie.py) with 30,000 events and 4 stops.
chaos: install
	$(STACK_UP)
	set -a; source "$${VSYNC_STACK_DIR:-.local}/stack.env"; set +a; \
	  rc=0; $(BIN)/pytest -s -m chaos_full tests/integration/test_chaos.py $(PYTEST_ARGS) || rc=$$?; \
	  VSYNC_CHAOS_ZOMBIE_EVENTS=$${VSYNC_CHAOS_ZOMBIE_EVENTS:-30000} VSYNC_CHAOS_ZOMBIE_STOPS=$${VSYNC_CHAOS_ZOMBIE_STOPS:-4} \
	    $(BIN)/pytest -s tests/integration/test_chaos_zombie.py $(PYTEST_ARGS) || rc=$$?; \
	  if [ "$(KEEP)" != 1 ]; then $(STACK) down; fi; exit $$rc

# Pure unit tests only: no broker needed.
unit: install system-deps
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install typecheck
	$(BIN)/ruff check .

# mypy on the package as it is installed: agents/, tables/ and bridges/ are vsync_stream.agents,
# .tables and .bridges (pyproject package-dir), which mypy cannot see through the editable
# install's import hook, so it checks a tree of symlinks with that layout (generated code excluded).
TYPECHECK_TREE := .local/typecheck
typecheck: install
	@rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)/vsync_stream
	@for f in vsync_stream/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK_TREE)/vsync_stream/; done
	@for d in agents tables bridges; do ln -s "$(CURDIR)/$$d" $(TYPECHECK_TREE)/vsync_stream/$$d; done
	cd $(TYPECHECK_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml vsync_stream

clean:
	rm -rf .local/demo .local/worker demo-report.json .pytest_cache
