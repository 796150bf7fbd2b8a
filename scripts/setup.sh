#!/usr/bin/env bash
# Install what the local stack and the tests need; every step is a no-op when its tool is already there.
#
#   scripts/setup.sh [venv|sam|ferretdb|rie|mariadb ...]     (no argument: all of them)
#
#   venv      .venv       the application's test toolchain from requirements-dev.txt
#   sam       .sam-venv   the AWS SAM CLI, kept apart because it pins its own boto3
#   ferretdb  $BTC_CACHE_DIR/bin/ferretdb        MongoDB wire protocol on SQLite (built with Go)
#   rie       $BTC_CACHE_DIR/bin/aws-lambda-rie  the Lambda runtime interface emulator (built with Go)
#   mariadb   mariadbd + client from Debian's apt (needs root)
#
# Missing pieces are installed in parallel (the FerretDB build is the long pole); each writes its own
# log under .local-data/logs/setup-<name>.log, shown when it fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../local/services/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../local/services/common.sh"

ALL_COMPONENTS=(venv sam ferretdb rie mariadb)
LOCK_DIR="$BTC_CACHE_DIR/locks"

# --- checks: fast, side-effect free ---------------------------------------------------------------

requirements_digest() {
  # The venv is rebuilt when a requirements file or the interpreter changes.
  {
    cat "$BTC_REPO_ROOT/requirements-dev.txt" "$BTC_REPO_ROOT/layers/shared/requirements.txt"
    "$BTC_PYTHON" -c 'import sys; print(sys.version)' 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}

check_venv() {
  [[ -x "$BTC_VENV/bin/python" ]] && "$BTC_VENV/bin/python" -c 'pass' 2>/dev/null \
    && [[ "$(cat "$BTC_VENV/.btc-requirements.sha256" 2>/dev/null)" == "$(requirements_digest)" ]]
}

check_sam() {
  [[ -x "$BTC_SAM_VENV/bin/sam" ]] \
    && [[ "$(cat "$BTC_SAM_VENV/.btc-sam-version" 2>/dev/null)" == "$BTC_SAM_CLI_VERSION" ]] \
    && "$BTC_SAM_VENV/bin/python" -c 'pass' 2>/dev/null
}

check_ferretdb() {
  # `--version` also proves the binary starts (a plain `go install` of v1.24.2 builds one that panics).
  # Output captured first: `| grep -q` would stop reading early and fail the pipeline (pipefail).
  local output
  [[ -x "$BTC_BIN_DIR/ferretdb" ]] && output="$("$BTC_BIN_DIR/ferretdb" --version 2>/dev/null)" \
    && grep -qx "version: $BTC_FERRETDB_VERSION" <<<"$output"
}

check_rie() {
  [[ -x "$BTC_BIN_DIR/aws-lambda-rie" ]] || return 1
  if command -v go >/dev/null 2>&1; then
    local output
    output="$(go version -m "$BTC_BIN_DIR/aws-lambda-rie" 2>/dev/null)" \
      && grep -qE "^[[:space:]]+mod[[:space:]]+${BTC_RIE_MODULE}[[:space:]]+${BTC_RIE_VERSION}([[:space:]]|$)" <<<"$output"
  fi
}

mariadb_sbin() {
  # Debian installs the server in /usr/sbin, which is not on a non-root PATH.
  command -v mariadbd 2>/dev/null || { [[ -x /usr/sbin/mariadbd ]] && printf '/usr/sbin/mariadbd'; }
}

check_mariadb() {
  mariadb_sbin >/dev/null && command -v mariadb-install-db >/dev/null 2>&1 \
    && command -v mariadb >/dev/null 2>&1 && command -v mariadb-admin >/dev/null 2>&1
}

# --- installers: run in the background, output to their log -------------------------------------

require_python() {
  command -v "$BTC_PYTHON" >/dev/null 2>&1 \
    || btc_die "$BTC_PYTHON not found: install Python 3.11 (or set BTC_PYTHON to a 3.11 interpreter)"
  "$BTC_PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || btc_die "$BTC_PYTHON is not Python 3.11 (the Lambda runtime); set BTC_PYTHON"
  "$BTC_PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || btc_die "$BTC_PYTHON lacks venv/ensurepip: apt-get install -y python3-venv"
}

make_venv() {
  local dir="$1"
  if [[ ! -x "$dir/bin/python" ]] || ! "$dir/bin/python" -c 'pass' 2>/dev/null; then
    rm -rf "$dir"
    "$BTC_PYTHON" -m venv "$dir"
  fi
  "$dir/bin/python" -m pip install --quiet --upgrade pip
}

install_venv() {
  require_python
  make_venv "$BTC_VENV"
  "$BTC_VENV/bin/pip" install -r "$BTC_REPO_ROOT/requirements-dev.txt"
  requirements_digest >"$BTC_VENV/.btc-requirements.sha256"
}

install_sam() {
  require_python
  make_venv "$BTC_SAM_VENV"
  "$BTC_SAM_VENV/bin/pip" install "aws-sam-cli==$BTC_SAM_CLI_VERSION"
  SAM_CLI_TELEMETRY=0 "$BTC_SAM_VENV/bin/sam" --version
  printf '%s\n' "$BTC_SAM_CLI_VERSION" >"$BTC_SAM_VENV/.btc-sam-version"
}

require_go() {
  command -v go >/dev/null 2>&1 || btc_die "Go is not installed (FerretDB and aws-lambda-rie are built with it)"
}

install_ferretdb() {
  require_go
  # FerretDB reads its version from build/version/version.txt, a file its release tooling generates and
  # the module zip lacks: build a copy of the module source with that file written.
  local module_dir src tmp
  module_dir="$(go mod download -json "github.com/FerretDB/FerretDB@$BTC_FERRETDB_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -d "$module_dir" ]] || btc_die "go mod download of FerretDB $BTC_FERRETDB_VERSION gave no source folder"
  src="$BTC_CACHE_DIR/src/ferretdb-$BTC_FERRETDB_VERSION"
  rm -rf "$src"
  mkdir -p "$(dirname "$src")" "$BTC_BIN_DIR"
  cp -R "$module_dir" "$src"
  chmod -R u+w "$src"
  printf '%s\n' "$BTC_FERRETDB_VERSION" >"$src/build/version/version.txt"
  tmp="$BTC_BIN_DIR/.ferretdb.$$"
  (cd "$src" && GOFLAGS=-buildvcs=false go build -o "$tmp" ./cmd/ferretdb)
  mv -f "$tmp" "$BTC_BIN_DIR/ferretdb"
  rm -rf "$src"
  "$BTC_BIN_DIR/ferretdb" --version
}

install_rie() {
  require_go
  local tmp="$BTC_CACHE_DIR/.gobin.$$"
  mkdir -p "$tmp" "$BTC_BIN_DIR"
  GOBIN="$tmp" GOFLAGS=-buildvcs=false go install "$BTC_RIE_MODULE/cmd/aws-lambda-rie@$BTC_RIE_VERSION"
  mv -f "$tmp/aws-lambda-rie" "$BTC_BIN_DIR/aws-lambda-rie"
  rmdir "$tmp"
}

install_mariadb() {
  if [[ "$(id -u)" != 0 ]]; then
    btc_die "mariadbd is missing and installing it needs root: sudo apt-get install -y mariadb-server"
  fi
  command -v apt-get >/dev/null 2>&1 || btc_die "mariadbd is missing and there is no apt-get to install it"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update
  apt-get -o DPkg::Lock::Timeout=300 install -y mariadb-server mariadb-client
}

# --- driver ----------------------------------------------------------------------------------------

# run_install NAME: install NAME under a lock (two clones or two make runs never build one tool at
# once), re-checking after the lock is taken because the other holder may have just finished it.
run_install() {
  local name="$1" lock
  case "$name" in
    ferretdb | rie | mariadb) lock="$LOCK_DIR/$name.lock" ;; # machine-wide tools
    *) lock="$LOCK_DIR/$name-$(printf '%s' "$BTC_REPO_ROOT" | sha256sum | cut -c1-12).lock" ;;
  esac
  mkdir -p "$LOCK_DIR"
  exec 9>"$lock"
  flock 9
  if "check_$name"; then
    echo "already installed (by a concurrent run)"
    return 0
  fi
  "install_$name"
  "check_$name" || btc_die "$name was installed but its check still fails"
}

main() {
  local components=("$@") name pending=() pids=() failed=0 started=$SECONDS
  ((${#components[@]})) || components=("${ALL_COMPONENTS[@]}")
  for name in "${components[@]}"; do
    case " ${ALL_COMPONENTS[*]} " in
      *" $name "*) ;;
      *) btc_die "unknown component '$name' (choose from: ${ALL_COMPONENTS[*]})" ;;
    esac
    if "check_$name"; then
      btc_ok "$name: present"
    else
      pending+=("$name")
    fi
  done
  ((${#pending[@]})) || return 0

  mkdir -p "$BTC_LOG_DIR"
  for name in "${pending[@]}"; do
    btc_say "installing $name (log: $BTC_LOG_DIR/setup-$name.log)"
    (
      t0=$SECONDS
      run_install "$name"
      echo "btc-setup-took: $((SECONDS - t0))s"
    ) >"$BTC_LOG_DIR/setup-$name.log" 2>&1 &
    pids+=("$!")
  done
  for i in "${!pending[@]}"; do
    name="${pending[$i]}"
    if wait "${pids[$i]}"; then
      btc_ok "$name: installed in $(sed -n 's/^btc-setup-took: //p' "$BTC_LOG_DIR/setup-$name.log")"
    else
      btc_err "$name: installation failed"
      btc_tail_log "$BTC_LOG_DIR/setup-$name.log" 40
      failed=1
    fi
  done
  ((failed)) || btc_ok "setup finished in $((SECONDS - started))s"
  return "$failed"
}

main "$@"
