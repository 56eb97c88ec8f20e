#!/bin/sh
# Entrypoint of the API image: wait for the database while applying the migrations, then become
# the server (exec, so that `docker stop` signals reach uvicorn directly).
#
# `llmserve migrate` exits 7 when the database is unavailable (llmserve's exit-code table);
# that is retried until DB_WAIT_TIMEOUT_S (default 60) have passed. Any other failure (a bad
# setting, a broken migration) stops the container at once. Arguments are passed to `serve`.
set -eu

timeout_s="${DB_WAIT_TIMEOUT_S:-60}"
deadline=$(($(date +%s) + timeout_s))
attempt=1

while :; do
    status=0
    llmserve migrate || status=$?
    if [ "$status" -eq 0 ]; then
        break
    fi
    if [ "$status" -ne 7 ]; then
        echo "entrypoint: llmserve migrate failed (exit $status); not starting the server" >&2
        exit "$status"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "entrypoint: the database is still unavailable after ${timeout_s}s" \
            "($attempt attempts); check DATABASE_URL and the db service" >&2
        exit 1
    fi
    echo "entrypoint: waiting for the database (attempt $attempt)..." >&2
    attempt=$((attempt + 1))
    sleep 2
done

exec llmserve serve --host 0.0.0.0 --port 8000 "$@"
