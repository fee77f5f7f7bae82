#!/usr/bin/env bash
# Installs everything the project needs on a Debian/Ubuntu machine without Docker, idempotently:
#   Debian packages (PostgreSQL, Redis, a JDK 17+, Maven), the Python venv with the project, the
#   BigQuery emulator's venv, and the Kafka / Kafka Connect / Debezium jars from Maven Central. Each step is skipped when already done,
#   so a second run takes about a second. With --flink, also Beam's Flink job server jars (make flink-bootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LIB="$ROOT/.stack/lib"
VENV="$ROOT/.venv"

step() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# Runs a long step with its output in LOG. On a terminal its latest line stays in view, one line
# rewritten in place (pip's and Maven's own bars need a terminal of their own, which a log is not).
logged() {
  local log=$1; shift
  if [ -t 1 ]; then
    local width status
    width=$(( $(tput cols 2>/dev/null || echo 100) - 6 ))
    (( width >= 20 )) || width=20
    "$@" 2>&1 | tee "$log" | while IFS= read -r line; do printf '\r\033[K    %s' "${line:0:$width}"; done
    status=("${PIPESTATUS[@]}")
    printf '\r\033[K'
    return "${status[0]}"
  fi
  "$@" >"$log" 2>&1
}

# --- Debian packages --------------------------------------------------------------------------
packages=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || packages+=(postgresql)
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)
if ! command -v java >/dev/null 2>&1 || ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then
  packages+=(openjdk-17-jre-headless)
fi
command -v mvn >/dev/null 2>&1 || packages+=(maven)
command -v setpriv >/dev/null 2>&1 || packages+=(util-linux)
command -v patch >/dev/null 2>&1 || packages+=(patch)  # Prism's listen-host patch
# make flink-bootstrap compiles Beam's patched ServerFactory (infra/beam-java): a JDK, not only a JRE.
if [[ " $* " == *" --flink "* ]] && ! command -v javac >/dev/null 2>&1; then packages+=(openjdk-17-jdk-headless); fi
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
# The dashboard's browser test (Playwright drives the system browser; `playwright install` is never run).
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
if ((${#packages[@]})); then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo"; else
    die "missing Debian packages: ${packages[*]}. Install them with: sudo apt-get install -y ${packages[*]}"
  fi
  step "installing Debian packages: ${packages[*]} (about 30 s)"
  if [[ " ${packages[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    # We run our own cluster on our own port; don't let the package create and start 'main' on 5432.
    $SUDO mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# --- Python venv ------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' \
  || die "Python 3.11 or 3.12 is needed (Apache Beam 2.77); $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11"
if [ ! -x "$VENV/bin/python" ]; then
  step "creating the Python venv in .venv"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  step "installing Python dependencies into .venv (Apache Beam takes a few minutes the first time)"
  log="$ROOT/.stack/pip-install.log"
  mkdir -p "$ROOT/.stack"
  logged "$log" bash -c '"$1/bin/pip" install --upgrade pip && "$1/bin/pip" install --progress-bar off -e ".[dev]"' _ "$VENV" \
    || { tail -n 30 "$log" >&2; die "pip install failed (full log: ${log#$ROOT/})"; }
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# --- The BigQuery emulator's own venv ------------------------------------------------------------
# Its pins (DuckDB 1.5.4, FastAPI, grpcio) are not the pipeline's, so it gets a venv of its own.
BQEMU_VENV="$ROOT/.stack/bqemu-venv"
BQEMU_REQ=infra/bigquery_emulator/requirements.txt
stamp="$BQEMU_VENV/.installed-$(sha1sum "$BQEMU_REQ" | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  step "installing the BigQuery emulator (bqemulator 1.4.0, DuckDB 1.5.4) into ${BQEMU_VENV#$ROOT/} (about a minute the first time)"
  log="$ROOT/.stack/pip-install-bqemu.log"
  mkdir -p "$ROOT/.stack"
  [ -x "$BQEMU_VENV/bin/python" ] || "$PYTHON" -m venv "$BQEMU_VENV"
  logged "$log" bash -c '"$1/bin/pip" install --upgrade pip && "$1/bin/pip" install --progress-bar off -r "$2"' _ "$BQEMU_VENV" "$BQEMU_REQ" \
    || { tail -n 30 "$log" >&2; die "installing the BigQuery emulator failed (full log: ${log#$ROOT/})"; }
  rm -f "$BQEMU_VENV"/.installed-*
  touch "$stamp"
fi

# --- Kafka, Connect and Debezium jars ---------------------------------------------------------
fetch_jars() {  # name pom target extra-args...
  local name=$1 pom=$2 target=$3; shift 3
  local stamp="$target/.complete-$(sha1sum "$pom" | cut -c1-12)"
  [ -e "$stamp" ] && return 0
  step "resolving $name jars from Maven Central into ${target#$ROOT/} (about 30 s the first time)"
  rm -rf "$target"
  mkdir -p "$target"
  local log="$ROOT/.stack/mvn-$(basename "$(dirname "$pom")").log"
  logged "$log" mvn -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$target" "$@" \
    || { tail -n 30 "$log" >&2; die "Maven could not resolve $name (full log: ${log#$ROOT/})"; }
  touch "$stamp"
}
fetch_jars "Kafka 4.3.1 + Connect" infra/maven/kafka/pom.xml "$LIB/kafka"
fetch_jars "Debezium PostgreSQL connector" infra/maven/debezium/pom.xml "$LIB/connect-plugins/debezium-postgres" \
  -DexcludeGroupIds=org.apache.kafka,org.slf4j

# --- Beam's Prism runner ------------------------------------------------------------------------
# Beam would download Prism from GitHub at run time, which fails without general internet access:
# build it once from the Go module proxy, pinned to the Beam version in pyproject.toml, with our
# patches: it listens on loopback (-job_host; infra/prism/listen-host.patch) and asks bundles for
# progress less often (-progress_tick; infra/prism/progress-tick.patch); see build.sh.
BEAM_VERSION=$(sed -n 's/.*"apache-beam\[gcp\]==\([0-9.]*\)".*/\1/p' pyproject.toml)
PRISM="$ROOT/.stack/bin/prism"
PRISM_BUILD="$BEAM_VERSION+$(cat infra/prism/listen-host.patch infra/prism/progress-tick.patch infra/prism/build.sh | sha1sum | cut -c1-12)"
if [ ! -x "$PRISM" ] || [ "$(cat "$PRISM.version" 2>/dev/null)" != "$PRISM_BUILD" ]; then
  command -v go >/dev/null 2>&1 || die "Go 1.23 or newer is needed to build Beam's Prism runner; install it from go.dev or your distribution"
  step "building Beam's Prism runner v$BEAM_VERSION with infra/prism/*.patch (about 2-3 minutes the first time)"
  mkdir -p "$ROOT/.stack/bin"
  log="$ROOT/.stack/go-build-prism.log"
  logged "$log" infra/prism/build.sh "$BEAM_VERSION" "$PRISM" \
    || { tail -n 30 "$log" >&2; die "building Prism failed (full log: ${log#$ROOT/})"; }
  echo "$PRISM_BUILD" > "$PRISM.version"
fi

# --- compose-config: docker-compose.yml loaded by Docker Compose's own loader ---------------------
# No Docker engine runs here; make test loads the Compose file with compose-go, pinned in
# infra/compose_config/go.mod (tests/unit/infra/test_compose_file.py).
COMPOSE_CONFIG="$ROOT/.stack/bin/compose-config"
COMPOSE_BUILD=$(cat infra/compose_config/main.go infra/compose_config/go.mod infra/compose_config/go.sum | sha1sum | cut -c1-12)
# Only make test needs it: a failed build warns (the test then says what is missing), and make demo goes on.
if [ ! -x "$COMPOSE_CONFIG" ] || [ "$(cat "$COMPOSE_CONFIG.version" 2>/dev/null)" != "$COMPOSE_BUILD" ]; then
  step "building compose-config (Docker Compose's loader, compose-go) for the Compose file's test (about a minute the first time)"
  mkdir -p "$ROOT/.stack/bin"
  log="$ROOT/.stack/go-build-compose-config.log"
  if logged "$log" bash -c 'cd infra/compose_config && go build -o "$1" .' _ "$COMPOSE_CONFIG"; then
    echo "$COMPOSE_BUILD" > "$COMPOSE_CONFIG.version"
  else
    tail -n 10 "$log" >&2
    printf 'warning: compose-config was not built (full log: %s); make test will fail on the Compose file\n' "${log#$ROOT/}" >&2
  fi
fi

# --- Beam's Flink job server (only with --flink: make flink-bootstrap) ---------------------------
# Maven Central has no beam-runners-flink-*-job-server jar: the runner module and its dependencies
# stand in for it (infra/maven/flink/pom.xml, pipeline/flink_job_server.py). About 160 MB.
if [[ " $* " == *" --flink "* ]]; then
  fetch_jars "Beam's Flink 1.19 job server" infra/maven/flink/pom.xml "$LIB/flink"
  # Beam's gRPC servers on the runner side listen on every interface: its ServerFactory, patched to
  # bind the address it is given, goes ahead of the jars (infra/beam-java/server-factory.patch).
  patched="$LIB/flink-patch"
  stamp="$patched/.complete-$(cat infra/beam-java/server-factory.patch infra/beam-java/build.sh "$LIB"/flink/.complete-* | sha1sum | cut -c1-12)"
  if [ ! -e "$stamp" ]; then
    command -v javac >/dev/null 2>&1 || die "a JDK (javac) is needed to compile Beam's patched ServerFactory: apt-get install openjdk-17-jdk-headless"
    step "compiling Beam's ServerFactory with infra/beam-java/server-factory.patch into ${patched#$ROOT/}"
    log="$ROOT/.stack/javac-server-factory.log"
    infra/beam-java/build.sh "$LIB/flink" "$patched" >"$log" 2>&1 \
      || { tail -n 30 "$log" >&2; die "building Beam's patched ServerFactory failed (full log: ${log#$ROOT/})"; }
    touch "$stamp"
  fi
fi

step "bootstrap complete"
