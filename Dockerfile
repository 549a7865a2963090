# syntax=docker/dockerfile:1
# mindvideo-relay image: `relay run` by default; `relay sim` runs the MindVideo simulator.
#
#   docker build -t mindvideo-relay .
#   docker run --rm -p 8080:8080 -e RELAY_KAFKA_BOOTSTRAP_SERVERS=... mindvideo-relay
#
# Both stages must use the same base: the venv's interpreter is a link to the base's Python.
# tests/deploy/test_image.py reproduces the builder's steps in a clean venv.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when a lock file changes, not
# when the code does. Every file is pinned by version and sha256 (deploy/lock_requirements.py
# writes the locks from pyproject.toml, with the otel extra: OTEL_* variables switch tracing on),
# so the image never resolves a version range. Every
# runtime dependency ships manylinux wheels, so the builder needs no compiler either.
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock \
 && python -m pip install --require-hashes --no-deps -r requirements-build.lock
# Then the relay: a wheel built with the locked backend (nothing fetched), installed without
# dependencies; pip check proves the locked versions satisfy pyproject.toml's ranges.
COPY pyproject.toml README.md LICENSE ./
COPY relay ./relay
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
# OCI annotations. VERSION follows pyproject.toml; pass the commit and the build time:
#   docker build --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t mindvideo-relay:0.1.0 .
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="mindvideo-relay" \
      org.opencontainers.image.description="Run MindVideo generation tasks from a Kafka topic" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/mindvideo-relay/mindvideo-relay" \
      org.opencontainers.image.documentation="https://github.com/mindvideo-relay/mindvideo-relay/blob/main/deploy/README.md"
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin relay
COPY --from=builder /opt/venv /opt/venv
# Bytecode is compiled at install time; the container may run on a read-only root filesystem.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RELAY_HTTP_HOST=0.0.0.0 \
    RELAY_HTTP_PORT=8080 \
    RELAY_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
# No curl in the slim image: the healthcheck is the image's own Python.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RELAY_HTTP_PORT', '8080') + '/healthz', timeout=3)"]
ENTRYPOINT ["relay"]
CMD ["run"]
