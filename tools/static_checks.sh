#!/usr/bin/env bash
# Static checks of the container and operations files; no Docker engine needed.
#   Hadolint         docker/*.Dockerfile
#   ShellCheck       docker/entrypoint.sh, docker/pip.sh, docker/smoke.sh and this script
#   check-jsonschema the compose files (Compose specification) and .github/workflows/*.yml
#                    (GitHub workflow schema), with the schemas vendored in check-jsonschema
#   make -n          every Makefile target, with undefined variables treated as errors
#   docker compose   `config --quiet` of both stacks, only where the Compose plugin is installed
# The tools come from the project's dev dependencies (.venv, else `poetry run`).
# Usage: bash tools/static_checks.sh   (from anywhere; it runs from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

failed=()

tool() {
    local name=$1
    shift
    if [[ -x ".venv/bin/$name" ]]; then
        ".venv/bin/$name" "$@"
    else
        poetry run "$name" "$@"
    fi
}

check() {
    local name=$1
    shift
    printf '\n-- %s\n' "$name"
    if "$@"; then
        printf 'ok: %s\n' "$name"
    else
        printf 'FAILED: %s\n' "$name" >&2
        failed+=("$name")
    fi
}

make_dry_runs() {
    local target output
    for target in help setup up up-prod up-cpu down logs shell migrate format format-check \
        lint lint-fix typecheck test image-check bake-image; do
        if ! output=$(make --no-print-directory --warn-undefined-variables -n "$target" 2>&1); then
            printf '%s\nmake -n %s failed\n' "$output" "$target" >&2
            return 1
        fi
        if grep -q 'warning: undefined variable' <<<"$output"; then
            printf '%s\nmake -n %s uses an undefined variable\n' "$output" "$target" >&2
            return 1
        fi
        printf 'make -n %s: ok\n' "$target"
    done
}

compose_config() {
    if ! docker compose version >/dev/null 2>&1; then
        echo "skipped: the docker compose plugin is not installed here (the schema check stands)"
        return 0
    fi
    # Compose wants the .env that `make up` links; use a scratch copy with the example's values.
    local scratch status=0
    scratch=$(mktemp -d)
    cp docker-compose.yml docker-compose.dev.yml "$scratch/"
    cp .env.example "$scratch/.env"
    (
        # Chained with &&: errexit does not apply inside check's `if`.
        cd "$scratch" \
            && docker compose -f docker-compose.yml config --quiet \
            && docker compose -f docker-compose.yml -f docker-compose.dev.yml config --quiet
    ) || status=$?
    rm -rf "$scratch"
    return "$status"
}

shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
shopt -u nullglob

check "hadolint: Dockerfiles" tool hadolint docker/api.Dockerfile docker/ollama.Dockerfile
check "shellcheck: the container scripts and this script" \
    tool shellcheck docker/entrypoint.sh docker/pip.sh docker/smoke.sh tools/static_checks.sh
check "check-jsonschema: compose files against the Compose specification" \
    tool check-jsonschema --builtin-schema vendor.compose-spec \
    docker-compose.yml docker-compose.dev.yml tests/docker-compose.test.yml
if ((${#workflows[@]})); then
    check "check-jsonschema: GitHub workflows" \
        tool check-jsonschema --builtin-schema vendor.github-workflows "${workflows[@]}"
else
    check "check-jsonschema: GitHub workflows" false
fi
check "make -n: every Makefile target" make_dry_runs
check "docker compose config (where the plugin exists)" compose_config

if ((${#failed[@]})); then
    printf '\nstatic checks FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\nall static checks passed\n'
