#!/usr/bin/env bash
# Builds the API images from docker/api.Dockerfile and runs them for real, on a Debian machine
# without a Docker engine: buildah builds, podman runs. Every check prints one `ok:` or `FAIL:`
# line; the script exits non-zero when any check fails or when the machine cannot run it (the
# line says why: nothing is skipped). Usage, as root, from anywhere:
#   bash docker/smoke.sh            (or: make image-check)
#
# What it needs: root on Debian (it installs buildah, podman, runc, slirp4netns, catatonit and
# debootstrap with apt), the package index and Debian's archive as the host's own pip and apt
# settings reach them, PostgreSQL on 127.0.0.1:5432 with trust authentication, and the
# project's virtualenv (`poetry install --all-extras`), which runs the Ollama test double and
# the HTTP checks (docker/smoke_checks.py).
#
# No registry is needed: python:3.11-slim is stood in for by a Debian root filesystem made with
# debootstrap (minbase, plus python3.11, python3-venv, python3-pip) and imported under that name,
# and builds run with --pull=never. The build reaches pip's index with settings taken now from
# the host's own pip configuration (index URLs, trusted hosts) and its CA bundle, passed as the
# Dockerfile's documented build arguments and `pip-ca` secret: nothing is added to the images.
#
# The cpu image needs llama-cpp-python's wheel. Compiling llama.cpp on a small machine takes
# longer than this whole check may (8 to 11 min on 2 cores), so the smoke reuses the wheel that
# `poetry install` built for the test suite, found in Poetry's cache (SMOKE_LLAMA_WHEEL names
# another). It goes in through PIP_FIND_LINKS, and python:3.11 (the compiling stage's base) is
# stood in for by the slim stand-in plus OpenMP's runtime but no compiler, so a build that tried
# to compile would fail here, not go slow. That wheel was built for this machine's CPU; an
# ordinary build of the cpu target compiles a portable one. SMOKE_COMPILE_LLAMA=1 compiles in the
# build instead (the stand-in then gets Debian's build-essential; slow).
#
# Containers run rootful with runc and cgroupfs (crun refuses hybrid cgroup hierarchies),
# ulimits below the inherited hard limits, in pods on slirp4netns with allow_host_loopback (the
# host's 127.0.0.1, where PostgreSQL and the double listen, is 10.0.2.2 inside) that publish a
# free port on 127.0.0.1. Everything lives in a private storage directory under /var/tmp;
# containers, pods, images, volumes, that directory and the database are removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
readonly ROOT=$PWD

readonly API_TAG=localhost/llmserve-api:smoke
readonly CPU_TAG=localhost/llmserve-api:smoke-cpu
readonly BASE_TAG=docker.io/library/python:3.11-slim
readonly FULL_TAG=docker.io/library/python:3.11
readonly PACKAGES=(buildah podman runc slirp4netns catatonit debootstrap)
readonly MODEL=smoke-model # the double's model (docker/smoke_checks.py)
readonly HOST_FROM_CONTAINER=10.0.2.2

failures=0
timings=()
step_name=""
step_started=0
work=""
database=""
double_pid=""
cpu_build_pid=""
created_containers_dir=false
created_netns_dir=false
created_cni_lock=false

ok() { printf 'ok: %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*"
    failures=$((failures + 1))
}
# A check whose command succeeds or not: check NAME COMMAND...
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else fail "$name"; fi
}
# The machine cannot run the smoke (or a step it depends on failed): say why and stop.
die() {
    printf 'FAIL: %s\n' "$*"
    failures=$((failures + 1))
    exit 1
}

step() {
    step_end
    step_name=$1
    step_started=$SECONDS
    printf '\n== %s\n' "$step_name"
}
step_end() {
    if [[ -n $step_name ]]; then
        timings+=("$(printf '%-58s %4d s' "$step_name" $((SECONDS - step_started)))")
        step_name=""
    fi
}

# podman and buildah on the private storage, quietly: their output goes to a log shown on failure.
pm() { podman "$@" 2>>"$work/podman.log"; }

log_lines() { podman logs "$1" 2>&1; } # a container's stdout and stderr

py() { "$ROOT/.venv/bin/python" "$@"; }
smoke_checks() { PYTHONPATH=$ROOT py "$ROOT/docker/smoke_checks.py" "$@"; }

free_port() {
    py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 5432 -U postgres "$@"; }

cleanup() {
    local status=$?
    set +e # clean up all that can be, whatever fails
    trap - ERR
    step_end
    printf '\n== cleanup\n'
    local started=$SECONDS
    if [[ -n $cpu_build_pid ]]; then
        kill "$cpu_build_pid" 2>/dev/null || true
        wait "$cpu_build_pid" 2>/dev/null || true
    fi
    if [[ -n $double_pid ]]; then
        kill "$double_pid" 2>/dev/null || true
        wait "$double_pid" 2>/dev/null || true
    fi
    if [[ -n $work && -d $work ]]; then
        if command -v podman >/dev/null; then
            # Images and volumes live in the storage folder, which goes whole below.
            pm pod rm --all --force --time 0 >/dev/null || true
            pm rm --all --force --time 0 >/dev/null || true
        fi
        if command -v buildah >/dev/null; then
            buildah rm --all >/dev/null 2>&1 || true
        fi
        # Whatever storage still has mounted (overlay layers) before the folder goes.
        grep -o " ${work}[^ ]*" /proc/mounts | sort -r | while read -r mount; do
            umount -l "$mount" 2>/dev/null || true
        done
        if ((failures > 0 || status != 0)) && [[ -s $work/podman.log ]]; then
            printf '(podman and buildah said, last lines:)\n'
            grep -v "systemd connection" "$work/podman.log" | tail -n 30 # (no systemd here)
        fi
        rm -rf "$work"
    fi
    if $created_containers_dir; then
        rm -rf /var/lib/containers # made by podman for its blob cache, not there before
    fi
    if $created_cni_lock; then
        rm -f /etc/cni/net.d/cni.lock # podman's lock file, beside its package's network file
    fi
    if $created_netns_dir && [[ -z $(ls -A /run/netns 2>/dev/null) ]]; then
        # Made (and bind-mounted on itself) by podman for the pods' namespaces, now gone.
        umount /run/netns 2>/dev/null
        rmdir /run/netns 2>/dev/null
    fi
    if [[ -n $database ]]; then
        psql_admin -d postgres -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" \
            || echo "could not drop the database $database" >&2
    fi
    timings+=("$(printf '%-58s %4d s' cleanup $((SECONDS - started)))")
    printf '\n== times\n'
    printf '%s\n' "${timings[@]}"
    printf '%-58s %4d s\n' total "$SECONDS"
    if ((failures > 0)); then
        printf '\nimage check FAILED: %d failing line(s) above\n' "$failures"
        exit 1
    fi
    if ((status != 0)); then
        printf '\nimage check FAILED (exit %d)\n' "$status"
        exit "$status"
    fi
    printf '\nimage check passed\n'
}
trap cleanup EXIT
trap 'fail "line $LINENO: $BASH_COMMAND (exit $?)"' ERR
trap 'exit 143' TERM # so that a timeout still cleans up
trap 'exit 130' INT

# ------------------------------------------------------------------------------------------------
step "what this machine must have"
[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and runs rootful podman)"
if [[ ! -f /etc/debian_version ]] || ! command -v apt-get >/dev/null; then
    die "needs a Debian machine with apt-get (it installs buildah and podman from Debian)"
fi
[[ -x $ROOT/.venv/bin/python ]] \
    || die "no project virtualenv in .venv: run 'poetry install --all-extras' first"
command -v psql >/dev/null || die "psql is missing (PostgreSQL's client, to make a database)"
command -v curl >/dev/null || die "curl is missing (it waits for the containers' /health)"
pg_isready -q -h 127.0.0.1 -p 5432 || die "no PostgreSQL answers on 127.0.0.1:5432"
free_kb=$(df --output=avail -k /var/tmp | tail -n 1)
((free_kb > 6 * 1024 * 1024)) || die "less than 6 GB free in /var/tmp ($((free_kb / 1024)) MB)"
ok "root on Debian $(cat /etc/debian_version), PostgreSQL on 127.0.0.1:5432, the project's venv"

llama_version=$(py -c '
import tomllib
lock = tomllib.load(open("poetry.lock", "rb"))
print(next(p["version"] for p in lock["package"] if p["name"] == "llama-cpp-python"))')
llama_wheel=""
if [[ ${SMOKE_COMPILE_LLAMA:-0} != 1 ]]; then
    if [[ -n ${SMOKE_LLAMA_WHEEL:-} ]]; then
        llama_wheel=$SMOKE_LLAMA_WHEEL
    else
        poetry_cache=$(poetry config cache-dir 2>/dev/null || echo "$HOME/.cache/pypoetry")
        llama_wheel=$(find "$poetry_cache/artifacts" -name \
            "llama_cpp_python-$llama_version-*linux_$(uname -m).whl" 2>/dev/null | head -n 1)
    fi
    [[ -f $llama_wheel ]] || die "no llama-cpp-python $llama_version wheel to reuse for the cpu" \
        "image (looked in Poetry's cache; run 'poetry install --all-extras' first, name one" \
        "with SMOKE_LLAMA_WHEEL, or compile in the build with SMOKE_COMPILE_LLAMA=1)"
    ok "llama-cpp-python $llama_version: reusing the wheel the project's install built"
fi

# ------------------------------------------------------------------------------------------------
step "packages: ${PACKAGES[*]}"
# Noted before podman first runs, so that the cleanup removes only what this run made.
[[ -e /var/lib/containers ]] || created_containers_dir=true
[[ -e /run/netns ]] || created_netns_dir=true
[[ -e /etc/cni/net.d/cni.lock ]] || created_cni_lock=true
work=$(mktemp -d /var/tmp/llmserve-smoke.XXXXXX)
mkdir -p "$work/tmp" "$work/conf"
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$package")
done
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >>"$work/apt.log" 2>&1
}
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}" || { apt-get update -q >>"$work/apt.log" 2>&1 \
        && apt_install "${missing[@]}"; } \
        || { tail -n 20 "$work/apt.log"; die "apt-get install ${missing[*]} failed"; }
fi
runc_version=$(runc --version | sed -n '1s/.* //p')
ok "$(buildah --version | cut -d' ' -f1-3), $(podman --version), runc $runc_version"

# The private storage and configuration: nothing of the host's container setup is used or changed.
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[[ $nofile == unlimited ]] && nofile=1048576
[[ $nproc == unlimited ]] && nproc=1048576
nofile=$((nofile < 65536 ? nofile : 65536))
nproc=$((nproc < 16384 ? nproc : 16384))
cat >"$work/conf/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$work/storage"
runroot = "$work/run"
EOF
cat >"$work/conf/containers.conf" <<EOF
[containers]
# podman's defaults ask for more than the inherited hard limits, which only CAP_SYS_RESOURCE may.
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$work/events.log"
tmp_dir = "$work/libpod"
image_copy_tmp_dir = "$work/tmp"
EOF
# No registry to search or pull from: every image comes from this machine.
printf 'unqualified-search-registries = []\n' >"$work/conf/registries.conf"
export CONTAINERS_STORAGE_CONF=$work/conf/storage.conf
export CONTAINERS_CONF=$work/conf/containers.conf
export CONTAINERS_REGISTRIES_CONF=$work/conf/registries.conf
export TMPDIR=$work/tmp

# ------------------------------------------------------------------------------------------------
step "base image: python:3.11-slim stand-in (debootstrap)"
suite=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)
mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | awk '/^URIs:/ || /^deb / { print $2 }' | grep -v security | sed -n 1p || true)
[[ -n $suite && -n $mirror ]] || die "cannot tell Debian's release or archive from /etc/apt"
debootstrap --variant=minbase --include=python3.11,python3-venv,python3-pip,python-is-python3 \
    "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log"; die "debootstrap $suite failed"; }
rm -rf "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/var/cache/apt/archives/"*.deb \
    "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" -c . \
    | pm import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_TAG" >/dev/null \
    || die "podman import of the stand-in base failed"
rm -rf "$work/rootfs"
ok "python:3.11-slim stand-in: Debian $suite minbase, $(pm run --rm --network none "$BASE_TAG" \
    python --version)"

# ------------------------------------------------------------------------------------------------
# pip's settings for the build, from the host's own pip configuration, as build arguments.
pip_args=()
while IFS= read -r argument; do
    pip_args+=("$argument")
done < <(python3 - <<'EOF'
import os
import subprocess
import sys

listed = subprocess.run(
    [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
).stdout
config = {}
for line in listed.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.partition(".")
    value = value.strip().strip("'\"")
    # Environment variables win over files, and [global] over [install] only as a fallback.
    rank = {":env:": 0, "global": 1, "install": 2}.get(section)
    if rank is not None and (name not in config or rank < config[name][0]):
        config[name] = (rank, value)
value = {name: item[1] for name, item in config.items()}
remote = lambda urls: " ".join(u for u in urls.split() if u.startswith(("http://", "https://")))
for variable, name in (("PIP_INDEX_URL", "index-url"), ("PIP_EXTRA_INDEX_URL", "extra-index-url")):
    urls = remote(value.get(name, ""))  # file:// indexes on this host are not in the build
    if urls:
        print(f"--build-arg={variable}={urls}")
if value.get("trusted-host"):
    print(f"--build-arg=PIP_TRUSTED_HOST={value['trusted-host']}")
ca = value.get("cert") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
if os.path.isfile(ca):
    print(f"--secret=id=pip-ca,src={ca}")
EOF
)
# --network host for the builds' RUN steps only (pip reaches the index as this host does); the
# containers that are checked never share the host's network.
bud=(buildah bud --pull=never --format docker --layers --runtime runc --network host
    --ignorefile docker/api.Dockerfile.dockerignore -f docker/api.Dockerfile "${pip_args[@]}")
image_size() { pm image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }

step "build: the default image (buildah bud --format docker)"
wheels=$work/wheels
mkdir -p "$wheels"
[[ -n $llama_wheel ]] && cp "$llama_wheel" "$wheels/"
# The same build arguments for both images, so that the cpu build reuses the builder's layers.
wheel_args=(--volume "$wheels:/local-wheels:ro" --build-arg PIP_FIND_LINKS=/local-wheels)
"${bud[@]}" "${wheel_args[@]}" -t "$API_TAG" . >"$work/build-api.log" 2>&1 \
    || { tail -n 30 "$work/build-api.log"; die "the default image did not build"; }
ok "the default image builds: $API_TAG, $(image_size "$API_TAG")" \
    "(the base stand-in: $(image_size "$BASE_TAG"))"
no_directive() { ! grep -qiE '^# *(syntax|escape|check) *=' docker/*.Dockerfile; }
check "defect 4: no parser directive (no frontend image to pull); built with --pull=never" \
    no_directive

step "build: the cpu image (--target cpu), in the background"
# python:3.11 is python:3.11-slim plus a C/C++ toolchain (and with it OpenMP's runtime, which the
# llama-wheel stage hands on to the image). Its stand-in is made the same way; when the wheel is
# reused it gets OpenMP's runtime alone, so that a build that tried to compile would fail fast.
if [[ ${SMOKE_COMPILE_LLAMA:-0} == 1 ]]; then
    toolchain=build-essential
    cpu_args=(--build-arg "CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)")
else
    toolchain=libgomp1
    cpu_args=()
fi
holder=$(pm run -d --network host "$BASE_TAG" sleep infinity)
pm exec "$holder" sh -c "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install \
    -y -q --no-install-recommends $toolchain && rm -rf /var/lib/apt/lists/*" \
    >"$work/full.log" 2>&1 || die "installing $toolchain into the python:3.11 stand-in failed"
pm commit -q "$holder" "$FULL_TAG" >/dev/null
pm rm --force --time 0 "$holder" >/dev/null
ok "python:3.11 stand-in: the slim one plus $toolchain"
# It builds while the default image is checked (those checks mostly wait), to keep within budget.
cpu_started=$(date +%s)
"${bud[@]}" "${wheel_args[@]}" ${cpu_args[@]+"${cpu_args[@]}"} --target cpu -t "$CPU_TAG" . \
    >"$work/build-cpu.log" 2>&1 &
cpu_build_pid=$! # buildah itself, so that the cleanup's kill reaches it

# ------------------------------------------------------------------------------------------------
step "run: the default image with PostgreSQL and the Ollama double"
database=llmserve_smoke_$$
psql_admin -d postgres -c "CREATE DATABASE \"$database\"" || die "cannot create a database"
PYTHONPATH=$ROOT "$ROOT/.venv/bin/python" docker/smoke_checks.py double "$work/double.port" &
double_pid=$! # the interpreter itself, so that the cleanup's kill reaches it
for _ in $(seq 100); do [[ -s $work/double.port ]] && break; sleep 0.1; done
[[ -s $work/double.port ]] || die "the Ollama double did not start"
double_url=http://$HOST_FROM_CONTAINER:$(cat "$work/double.port")

api_port=$(free_port)
pm pod create --name smoke-api --network slirp4netns:allow_host_loopback=true \
    --publish "127.0.0.1:$api_port:8000" >/dev/null
# --health-interval=disable: no systemd timer here; `podman healthcheck run` runs the image's.
pm run -d --pod smoke-api --name smoke-api-server --read-only --read-only-tmpfs=false \
    --health-interval=disable \
    -e "DATABASE_URL=postgresql://postgres@$HOST_FROM_CONTAINER:5432/$database" \
    -e "OLLAMA_BASE_URL=$double_url" -e "BUILT_IN_OLLAMA_MODEL=$MODEL" \
    "$API_TAG" >/dev/null
api_url=http://127.0.0.1:$api_port
wait_for_health() { # URL CONTAINER: wait until /health answers, or the container has stopped
    for _ in $(seq 120); do
        curl -fsS -m 2 "$1/health" >/dev/null 2>&1 && return 0
        [[ $(pm inspect --format '{{.State.Running}}' "$2") == true ]] || return 1
        sleep 0.5
    done
    return 1
}
wait_for_health "$api_url" smoke-api-server \
    || { log_lines smoke-api-server | tail -n 20; die "the default image did not come up"; }

migrations_first() {
    local logs head
    logs=$(log_lines smoke-api-server)
    head=$(py -c 'from llmserve.db.migrate import head_revision; print(head_revision())')
    [[ $(psql_admin -d "$database" -tA -c 'SELECT version_num FROM alembic_version') == "$head" ]] \
        && py -c '
import json, sys
messages = [json.loads(line)["message"] for line in sys.stdin if line.strip()]
migrated = next(i for i, m in enumerate(messages) if m.startswith("Database is at revision"))
started = next(i for i, m in enumerate(messages) if m.startswith("Started server process"))
sys.exit(0 if migrated < started else 1)' <<<"$logs"
}
check "migrations ran before serving (the schema is at head; migrate logged before uvicorn)" \
    migrations_first
pid1_is_the_server() {
    local seen
    seen=$(pm exec "$1" sh -c 'grep "^Uid:" /proc/1/status; tr "\0" " " </proc/1/cmdline')
    [[ $seen == *"Uid:"*10001*10001*"llmserve serve"* ]] || { echo "   $seen"; return 1; }
}
check "PID 1 is llmserve serve, as uid 10001 (the entrypoint exec'd it)" \
    pid1_is_the_server smoke-api-server
read_only_root() {
    [[ $(pm inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$1") == true ]] \
        && ! pm exec "$1" touch /x
}
check "--read-only root filesystem: the server runs with it (writing / fails)" \
    read_only_root smoke-api-server
smoke_checks api "$api_url" || failures=$((failures + $?))
check "the image's HEALTHCHECK passes (podman healthcheck run)" \
    pm healthcheck run smoke-api-server
all_json() { log_lines "$1" | py -c '
import json, sys
lines = [line for line in sys.stdin if line.strip()]
for line in lines:
    json.loads(line)
sys.exit(0 if lines else 1)'; }
check "defect 5: with LOG_FORMAT=json every log line is JSON (migrate's and the entrypoint's too)" \
    all_json smoke-api-server
smoke_checks drain "$api_url" -- podman kill --signal TERM smoke-api-server \
    || failures=$((failures + $?))
exited() { # CONTAINER CODE: the container stops within 40 s with CODE
    local code
    code=$(timeout 40 podman wait "$1" 2>/dev/null) && [[ $code == "$2" ]]
}
check "SIGTERM: the server exits 0 once the stream is done" exited smoke-api-server 0
pm pod rm --force smoke-api >/dev/null

# ------------------------------------------------------------------------------------------------
step "run: the defects stay fixed"
# Defect 1 and 3: no DATABASE_URL, a --port of its own, a writable root filesystem (so that the
# permission checks test the permissions, not a read-only mount).
pm run -d --name smoke-sqlite --network none --health-interval=disable \
    -e "BUILT_IN_OLLAMA_MODEL=$MODEL" "$API_TAG" --port 9000 >/dev/null
in_container_health() { # CONTAINER PORT
    for _ in $(seq 60); do
        pm exec "$1" python -c \
            "import urllib.request as u; u.urlopen('http://127.0.0.1:$2/health')" \
            >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}
serves_with_sqlite() {
    in_container_health "$1" 9000 && pm exec "$1" test -s /data/llmserve.db
}
check "defect 1: without DATABASE_URL the image serves, with SQLite in /data" \
    serves_with_sqlite smoke-sqlite
check "/app and /opt/venv are not writable by the server's user; /data is" \
    pm exec smoke-sqlite sh -c '! touch /app/x 2>/dev/null && ! touch /opt/venv/x 2>/dev/null \
        && ! touch /app/llmserve/x 2>/dev/null && touch /data/x && rm /data/x'
healthcheck_follows_port() {
    pm healthcheck run "$1" && ! pm exec "$1" python -c \
        "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=2)"
}
check "defect 3: the HEALTHCHECK follows --port (serving on 9000, nothing on 8000)" \
    healthcheck_follows_port smoke-sqlite
pm rm --force --volumes smoke-sqlite >/dev/null

# A bad setting: one line naming it, exit 2 at once (no retry: that would last DB_WAIT_TIMEOUT_S,
# 60 s), no traceback. When the bad setting is the backend's, migrate has run first and logged its
# own progress.
one_line_exit() { # NAME VARIABLE RUN-ARGUMENTS...: the container stops with 2 and one error line
    local name=$1 variable=$2 code logs errors seconds
    shift 2
    pm run -d --name "$name" --network none --health-interval=disable "$@" >/dev/null
    code=$(timeout 60 podman wait "$name" 2>/dev/null) || code=timeout
    seconds=$(pm inspect --format '{{.State.StartedAt.Unix}} {{.State.FinishedAt.Unix}}' "$name" \
        | awk '{ print $2 - $1 }')
    logs=$(log_lines "$name")
    pm rm --force --volumes "$name" >/dev/null
    errors=$(grep -F '"level": "ERROR"' <<<"$logs" || true)
    if [[ $code == 2 && $(grep -c . <<<"$errors") == 1 && $errors == *"setting $variable"* \
        && $logs != *Traceback* ]] && ((seconds < 45)); then
        printf '   exit 2 after %s s: %s\n' "$seconds" "$(py -c 'import json, sys
print(json.loads(sys.stdin.read())["message"])' <<<"$errors")"
        return 0
    fi
    printf '   exit %s after %s s, log:\n%s\n' "$code" "$seconds" "$logs"
    return 1
}
check "defect 1: SQLite in a folder it cannot write: one line naming DATABASE_URL, exit 2" \
    one_line_exit smoke-bad-db DATABASE_URL --read-only -e "BUILT_IN_OLLAMA_MODEL=$MODEL" \
    "$API_TAG"
check "defect 2: LLM_BACKEND=embedded in the default image: one line naming it, exit 2" \
    one_line_exit smoke-bad-backend LLM_BACKEND -e LLM_BACKEND=embedded "$API_TAG"
check "defect 2: BUILT_IN_OLLAMA_MODEL missing: one line naming it, exit 2" \
    one_line_exit smoke-bad-model BUILT_IN_OLLAMA_MODEL "$API_TAG"
check "a malformed value (PORT=eighty): one line naming it, exit 2" \
    one_line_exit smoke-bad-port PORT -e PORT=eighty -e "BUILT_IN_OLLAMA_MODEL=$MODEL" "$API_TAG"

# ------------------------------------------------------------------------------------------------
step "build: the cpu image (waiting for the background build)"
cpu_status=0
wait "$cpu_build_pid" || cpu_status=$?
cpu_build_pid=""
cpu_seconds=$(($(stat -c %Y "$work/build-cpu.log") - cpu_started)) # its last line's time
((cpu_status == 0)) || { tail -n 30 "$work/build-cpu.log"; die "the cpu image did not build"; }
if grep -q "Building wheel for llama-cpp-python" "$work/build-cpu.log"; then
    how="llama.cpp compiled in the build"
else
    how="llama-cpp-python from the reused wheel, nothing compiled"
fi
ok "the cpu image builds: $CPU_TAG, $(image_size "$CPU_TAG") ($how; the build took $cpu_seconds s)"
check "the cpu image has no compiler" \
    pm run --rm --network none --entrypoint sh "$CPU_TAG" -c '! command -v gcc && ! command -v cc'

# ------------------------------------------------------------------------------------------------
step "run: the cpu image alone (embedded engine, built-in model)"
cpu_port=$(free_port)
pm volume create smoke-cpu-data >/dev/null
pm pod create --name smoke-cpu --network slirp4netns --publish "127.0.0.1:$cpu_port:8000" \
    >/dev/null
pm run -d --pod smoke-cpu --name smoke-cpu-server --read-only --read-only-tmpfs=false \
    --health-interval=disable -v smoke-cpu-data:/data "$CPU_TAG" >/dev/null
cpu_url=http://127.0.0.1:$cpu_port
wait_for_health "$cpu_url" smoke-cpu-server \
    || { log_lines smoke-cpu-server | tail -n 20; die "the cpu image did not come up"; }
smoke_checks cpu "$cpu_url" || failures=$((failures + $?))
check "cpu image: its state is SQLite in the /data volume, under a read-only root" \
    pm exec smoke-cpu-server test -s /data/llmserve.db
check "cpu image: the HEALTHCHECK passes" pm healthcheck run smoke-cpu-server
pm pod rm --force smoke-cpu >/dev/null
step_end
