# Loopline serving image: the one BentoML service (serving/service.py) on the locked
# dependencies, serving the registry's champion of any task on port 3000 (/predict, /stream
# where the task streams, /explain where it explains, /metadata /livez /readyz /metrics).
# Build and run:
#   docker build -t loopline-serve .
#   docker build --build-arg RUNTIME=cuda -t loopline-serve:cuda .
#   docker run -p 3000:3000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 loopline-serve
# (GPU: docker run --gpus all ... loopline-serve:cuda). Settings: params.yaml's `serve:`
# section, overridden per container with LOOPLINE_SERVE_<KEY>, e.g. -e LOOPLINE_SERVE_ALIAS=
# challenger or -e LOOPLINE_SERVE_PREDICTION_LOG=postgresql+psycopg://... The task is the
# served model's (its registry lineage; -e LOOPLINE_SERVE_MODEL=reviews serves the review
# classifier), or -e LOOPLINE_TASK=<name or package.module:Class> to name it.
#
# Where no registry can be pulled from, build the cpu image on a local Debian base:
#   images/debian-base.sh loopline-base
#   docker build --build-arg CPU_BASE=loopline-base -t loopline-serve .
# (`make image` does both; `make test-image` also runs the image against an MLflow server.)
#
# The image installs requirements-serve.lock, the service's own dependency set: ONNX Runtime,
# BentoML, the MLflow client (mlflow-skinny), no torch, Prefect, DVC, Great Expectations or
# Optuna (tests/serving/test_serving_dependencies.py serves a champion with only that set).
#
# RUNTIME picks the base: cpu (python:3.11-slim, onnxruntime) or cuda (CUDA + cuDNN runtime,
# onnxruntime-gpu in place of onnxruntime). onnxruntime-gpu 1.31.1 on PyPI is built for
# CUDA 13 and cuDNN 9 (its capi/version_info.py says cuda_version = '13.0'), hence the CUDA 13
# base; the host needs an NVIDIA driver for CUDA 13 and the NVIDIA container toolkit.
ARG RUNTIME=cpu
ARG CPU_BASE=python:3.11-slim

# hadolint ignore=DL3006
FROM ${CPU_BASE} AS base-cpu
ENV ONNXRUNTIME=onnxruntime==1.32.0
RUN python3.11 -m venv /opt/venv

FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04 AS base-cuda
ARG DEBIAN_FRONTEND=noninteractive
# Versions are pinned by the base image's Ubuntu release (jammy's python3.11).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV ONNXRUNTIME=onnxruntime-gpu==1.31.1

# hadolint ignore=DL3006
FROM base-${RUNTIME}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements-serve.lock ./
# The serving set, with the runtime's onnxruntime build ($ONNXRUNTIME) in place of the locked
# CPU one. PIP_CERT: a build secret `ca` (a CA bundle) where a proxy re-signs the registry.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && grep -v '^onnxruntime==' requirements-serve.lock > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "$ONNXRUNTIME" \
    && rm /tmp/requirements.txt

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

# The state folder (default MLflow store, BentoML home) lives outside the read-only code.
ENV LOOPLINE_HOME=/var/lib/loopline \
    BENTOML_DO_NOT_TRACK=true
USER 10001:10001

EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=4)"]
# `loopline serve` execs `bentoml serve serving.service:Loopline` for the served model's task
# (LOOPLINE_TASK): signals reach the server.
CMD ["loopline", "serve", "--host", "0.0.0.0", "--port", "3000"]
