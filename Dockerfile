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
# Every runtime dependency ships manylinux wheels, so the builder needs no compiler either.
# README* may be absent; pyproject.toml keeps the COPY from matching nothing.
COPY pyproject.toml README* ./
COPY relay ./relay
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /wheels/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mindvideo-relay" \
      org.opencontainers.image.description="Run MindVideo generation tasks from a Kafka topic" \
      org.opencontainers.image.licenses="Apache-2.0"
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
