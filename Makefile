# Loopline: `make run` sets up and runs the offline flow; `make test` sets up and tests.
.DEFAULT_GOAL := help
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help setup browser run test test-fast test-image image worker-image test-worker-image lint format bench lock clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, on its own: on these machines pip resolves torch==2.13.0 to the local CPU
	# wheel; the lock pins it without a +cpu suffix so the same file works elsewhere.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) ## Create .venv with the locked dependencies

# The operator page's browser tests drive Debian's Chromium through Playwright (Playwright's
# own browser download is not used): installed here when missing, as root or with sudo.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium \
		|| { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

browser: $(CHROMIUM) ## Install Debian's Chromium for the browser tests

run: setup ## Run the offline flow on the default task (params.yaml)
	$(BIN)/loopline run

# Tests run on this many pytest-xdist workers. CI has two cores, and three workers: a test
# spends much of its time waiting on the processes it starts (a server booting, a flow run
# through the API), which a third worker fills (2026-12-07, this machine: 783 and 904 s
# against 912 s with two). A module's tests stay on one worker (--dist loadscope), so its
# module-scoped fixtures run once; modules start heaviest first (tests/conftest.py), not in
# xdist's order of most tests first. The slowest tests are listed at the end, so a suite
# that grows shows where its time went.
TEST_WORKERS ?= 3

test: setup $(CHROMIUM) ## Run the test suite (in parallel; TEST_WORKERS=0: in this process)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=25

test-fast: setup ## Tests without the end-to-end ones
	$(BIN)/pytest -m "not e2e"

# The serving image on a local Debian base (no registry to pull python:3.11-slim from here);
# needs root, a Docker engine (Debian's docker.io: BuildKit built in) and debootstrap.
DOCKER ?= /usr/bin/docker
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
image: ## Build the serving image (loopline-serve) on a local Debian base
	images/debian-base.sh loopline-base
	DOCKER_BUILDKIT=1 $(DOCKER) build --network host --build-arg CPU_BASE=loopline-base \
		--secret id=ca,src=$(CA_BUNDLE) -t loopline-serve .

test-image: setup ## Build the serving image and run it against an MLflow server (minutes)
	LOOPLINE_TEST_IMAGE=1 $(BIN)/pytest tests/serving/test_image.py

# The worker image installs the CPU build of torch from images/wheels/ when a wheel is there:
# this copies one from TORCH_WHEELS (a folder of wheels) where it has one, else the build
# takes it from PyTorch's CPU index.
TORCH_WHEELS ?= /opt/wheels
worker-image: ## Build the cluster's worker image (loopline-worker) on a local Debian base
	images/debian-base.sh loopline-base
	for wheel in $(wildcard $(TORCH_WHEELS)/torch-*+cpu-*.whl); do cp -u "$$wheel" images/wheels/; done
	DOCKER_BUILDKIT=1 $(DOCKER) build --network host -f images/worker.Dockerfile \
		--build-arg CPU_BASE=loopline-base --secret id=ca,src=$(CA_BUNDLE) -t loopline-worker .

test-worker-image: setup ## Build the worker image and tune and train on two of its containers
	LOOPLINE_TEST_IMAGE=1 $(BIN)/pytest tests/e2e/test_worker_image.py

lint: setup ## Lint and check formatting (ruff)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Format and fix what ruff can
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup ## Run the benchmarks (prints side-by-side ratios)
	$(BIN)/python benchmarks/pipeline_overhead.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/tuning_scaleout.py

lock: ## Re-resolve requirements.lock from requirements.in (uv)
	$(BIN)/pip install --quiet uv
	# Resolve against the CPU torch wheel: the registry's torch pulls gigabytes of CUDA wheels.
	echo "torch==2.13.0+cpu" > $(VENV)/torch-cpu.txt
	$(BIN)/uv pip compile requirements.in --python-version 3.11 --find-links /opt/wheels \
		--override $(VENV)/torch-cpu.txt -o requirements.lock
	sed -i 's/^torch==\(.*\)+cpu/torch==\1/' requirements.lock
	$(BIN)/uv pip compile requirements-serve.in --python-version 3.11 -o requirements-serve.lock
	$(BIN)/uv pip compile requirements-worker.in --python-version 3.11 --find-links /opt/wheels \
		--override $(VENV)/torch-cpu.txt -o requirements-worker.lock
	sed -i 's/^torch==\(.*\)+cpu/torch==\1/' requirements-worker.lock

clean: ## Remove the state folder (MLflow store, Prefect home, DVC remote) and data
	rm -rf .loopline data
