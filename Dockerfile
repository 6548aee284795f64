# Loopline image: the offline flow (default) on the locked dependencies, CPU only.
# The serving image (BentoML service, CUDA build argument) completes this file later.
#   docker build -t loopline . && docker run --rm -v "$PWD/.loopline:/app/.loopline" loopline
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.lock ./
# The CPU build of torch from PyTorch's own index: PyPI's build pulls gigabytes of CUDA.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install -r requirements.lock

COPY . .
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 loopline \
    && chown -R loopline /app
USER loopline

CMD ["loopline", "run"]
