#!/bin/sh
# Entrypoint of the API images: wait for the database while applying the migrations, then become
# the server (exec, so that `docker stop` signals reach uvicorn directly).
#
# `llmserve migrate` exits 7 when the database is unavailable: that is retried until
# DB_WAIT_TIMEOUT_S (default 60) have passed. Exit 2 is a bad setting, which no retry can fix,
# and any other failure (a broken migration) is final too: both stop the container at once
# (after a bad setting, migrate's line naming it is the only one). `serve` checks its own
# settings the same way before it starts. Arguments are passed to `serve`. With LOG_FORMAT=json
# (the images' default) this script's own lines are JSON objects too, like all the others.
set -eu

timeout_s="${DB_WAIT_TIMEOUT_S:-60}"
deadline=$(($(date +%s) + timeout_s))
attempt=1

# say LEVEL MESSAGE: one line on stderr (the message never holds a quote or a backslash).
say() {
    if [ "${LOG_FORMAT:-text}" = json ]; then
        printf '{"time": "%s", "level": "%s", "logger": "entrypoint", "message": "%s"}\n' \
            "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" "$1" "$2" >&2
    else
        printf 'entrypoint: %s\n' "$2" >&2
    fi
}

while :; do
    status=0
    llmserve migrate || status=$?
    if [ "$status" -eq 0 ]; then
        break
    fi
    if [ "$status" -eq 2 ]; then
        exit 2  # migrate's one line named the setting; a second line would add nothing
    fi
    if [ "$status" -ne 7 ]; then
        say ERROR "llmserve migrate failed (exit $status); not starting the server"
        exit "$status"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        say ERROR "the database is still unavailable after ${timeout_s}s ($attempt attempts); check DATABASE_URL and the db service"
        exit 1
    fi
    say WARNING "waiting for the database (attempt $attempt)..."
    attempt=$((attempt + 1))
    sleep 2
done

exec llmserve serve --host 0.0.0.0 --port 8000 "$@"
