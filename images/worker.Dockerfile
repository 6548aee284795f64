# Loopline worker image: a Dask worker with the whole offline library (torch on the CPU,
# Optuna, MLflow, Prefect, DVC: requirements-worker.lock, the main lock without the test
# and lint tools), for the cluster that `tune.parallel.address` and
# `train.launch.address` name. The tuning trials and the data-parallel training ranks run
# in it; the flow stays where `loopline run` starts it. Build from the repository's root:
#   images/debian-base.sh loopline-base          # where no registry can be pulled from
#   make worker-image                            # = the build below, with the local torch wheel
#   docker build -f images/worker.Dockerfile --build-arg CPU_BASE=loopline-base \
#       -t loopline-worker .
# Run one per host, pointed at the scheduler (`dask scheduler` from the same lock):
#   docker run --network host -e PREFECT_API_URL=http://prefect:4200/api \
#       loopline-worker tcp://scheduler:8786 --nthreads 1
# Arguments after the image go to `dask worker`. The worker needs the services the run
# shares (the Prefect API, the MLflow server, the study's database), never a shared folder.
#
# torch: the CPU build. pip takes it from the wheels in images/wheels/ when one is there
# (`make worker-image` copies the local one), else from TORCH_INDEX (PyTorch's CPU index).
# PyPI's own torch is the CUDA build, several GB, which a CPU worker does not need.
ARG CPU_BASE=python:3.11-slim

# hadolint ignore=DL3006
FROM ${CPU_BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements-worker.lock ./
# torch first, on its own (as `make setup` does), without its dependencies (the lock has
# them): the lock pins torch==2.13.0, which the CPU build 2.13.0+cpu satisfies, so the
# second install keeps it.
RUN --mount=type=secret,id=ca --mount=type=bind,source=images/wheels,target=/wheels \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3.11 -m venv /opt/venv \
    && if ls /wheels/torch-*.whl >/dev/null 2>&1; \
        then pip install --no-deps --no-index --find-links /wheels "torch==$(sed -n 's/^torch==//p' requirements-worker.lock)"; \
        else pip install --no-deps --index-url "$TORCH_INDEX" "torch==$(sed -n 's/^torch==//p' requirements-worker.lock)"; fi \
    && pip install -r requirements-worker.lock

COPY pyproject.toml README.md params.yaml ./
COPY src ./src
COPY pipelines ./pipelines
COPY serving ./serving
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-deps -e . \
    && groupadd --system --gid 10001 loopline \
    && useradd --system --uid 10001 --gid loopline --no-create-home \
        --home-dir /var/lib/loopline --shell /usr/sbin/nologin loopline \
    && mkdir -p /var/lib/loopline \
    && chown loopline:loopline /var/lib/loopline

# Prefect's profile and the trials' scratch files live outside the read-only code.
ENV HOME=/var/lib/loopline \
    LOOPLINE_HOME=/var/lib/loopline \
    PREFECT_HOME=/var/lib/loopline/prefect \
    DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False
WORKDIR /var/lib/loopline
USER 10001:10001

# The worker's HTTP server (/health) on 8789; its other ports are chosen at start.
EXPOSE 8789
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8789/health', timeout=4)"]
ENTRYPOINT ["dask", "worker", "--dashboard-address", ":8789"]
