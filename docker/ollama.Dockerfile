# Ollama with one model baked in. Build from the repository root, or with
# `llmserve bake-image` / `make bake-image`:
#   docker build -f docker/ollama.Dockerfile --build-arg BUILT_IN_OLLAMA_MODEL=llama3.2:1b \
#       -t llmserve-ollama:llama3.2-1b .
# The build needs network access to Ollama's model registry but no GPU.
FROM ollama/ollama:0.12.0

ARG BUILT_IN_OLLAMA_MODEL

# One RUN, because `ollama pull` is only a client and a background server does not survive into
# the next RUN: start `ollama serve`, poll `ollama list` until it answers (bounded; a fixed sleep
# is racy), pull, then stop the server by PID (the base image has no pkill). The key pair the
# server generated is removed so that containers do not share one identity; Ollama makes a new
# one at start.
# DL3001 flags `kill`: here it stops the server this same RUN started, which is the point.
# hadolint ignore=DL3001
RUN if [ -z "${BUILT_IN_OLLAMA_MODEL:-}" ]; then \
        echo "error: the build arg BUILT_IN_OLLAMA_MODEL is required," \
            "e.g. --build-arg BUILT_IN_OLLAMA_MODEL=llama3.2:1b" >&2; \
        exit 1; \
    fi; \
    ollama serve >/tmp/ollama-serve.log 2>&1 & \
    pid=$!; \
    tries=0; \
    until ollama list >/dev/null 2>&1; do \
        tries=$((tries + 1)); \
        if [ "$tries" -ge 60 ]; then \
            echo "error: ollama serve did not answer within 60 s; its log:" >&2; \
            cat /tmp/ollama-serve.log >&2; \
            kill "$pid"; \
            exit 1; \
        fi; \
        sleep 1; \
    done; \
    status=0; \
    ollama pull "${BUILT_IN_OLLAMA_MODEL}" || status=$?; \
    kill "$pid"; \
    wait "$pid" || true; \
    if [ "$status" -ne 0 ]; then \
        echo "error: ollama pull ${BUILT_IN_OLLAMA_MODEL} failed (exit $status)" >&2; \
        exit "$status"; \
    fi; \
    rm -f /tmp/ollama-serve.log /root/.ollama/id_ed25519 /root/.ollama/id_ed25519.pub

ENV BUILT_IN_OLLAMA_MODEL=${BUILT_IN_OLLAMA_MODEL}
LABEL org.opencontainers.image.title="llmserve-ollama" \
      org.opencontainers.image.description="Ollama 0.12.0 with ${BUILT_IN_OLLAMA_MODEL} baked in" \
      org.opencontainers.image.base.name="ollama/ollama:0.12.0" \
      io.llmserve.built-in-model="${BUILT_IN_OLLAMA_MODEL}"

# The image has no curl: `ollama list` goes through the API (/api/tags), so it proves the server
# answers; `ollama --version` would only prove the binary exists.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "ollama list || exit 1"]

# ENTRYPOINT ["/bin/ollama"], CMD ["serve"], OLLAMA_HOST=0.0.0.0:11434 and EXPOSE 11434 are
# inherited from the base image.
