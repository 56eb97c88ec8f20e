# syntax=docker/dockerfile:1
# The llmserve API image. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t llmserve-api .
# Two stages: the builder creates a virtualenv with pip (no Poetry in the image); the runtime stage
# gets that virtualenv and the source, runs as a non-root user and has no build tools.

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /app

# Dependencies first, in their own layer: rebuilt only when pyproject.toml or poetry.lock change.
# pip installs [project].dependencies (no dev group, no extras) pinned to poetry.lock's versions.
COPY pyproject.toml poetry.lock ./
COPY docker/lock_constraints.py /tmp/lock_constraints.py
RUN python /tmp/lock_constraints.py . /tmp/pins \
    && pip install -r /tmp/pins/requirements.txt -c /tmp/pins/constraints.txt

# The project itself, installed editable: the package is imported from /app/llmserve, so
# migrations/ beside it is found (llmserve.db.migrate looks next to the package) and the dev
# compose override can mount the source over /app/llmserve.
COPY README.md alembic.ini ./
COPY llmserve/ ./llmserve/
COPY migrations/ ./migrations/
RUN pip install --no-deps --editable .


FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="llmserve-api" \
      org.opencontainers.image.description="llmserve: a private API server for local LLMs"

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json

RUN groupadd --system --gid 10001 llmserve \
    && useradd --system --uid 10001 --gid llmserve --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin llmserve

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
# Owned by root and read-only for the service user: the running server cannot change its code.
COPY --from=builder /app /app
COPY --chmod=0755 docker/entrypoint.sh /app/docker/entrypoint.sh

# Numeric, so that the runtime (and Kubernetes' runAsNonRoot) can tell it is not root.
USER 10001:10001
EXPOSE 8000

# The slim image has no curl: probe /health with the interpreter that is already there.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# The base image's CMD ["python3"] would become arguments of `serve`: reset it.
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD []
