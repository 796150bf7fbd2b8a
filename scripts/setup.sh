#!/usr/bin/env bash
# Install what the local stack and the tests need; every step is a no-op when its tool is already there.
#
#   scripts/setup.sh [python|venv|sam|ferretdb|rie|mariadb ...]     (no argument: all of them)
#
#   python    Python 3.13, the Lambda runtime's version (found on PATH or in pyenv; else pyenv/apt install)
#   venv      .venv       the application's test toolchain from the lock requirements/dev.txt (hashed),
#                         plus this project itself (editable: the `bytemark-cache` operator CLI)
#   sam       .sam-venv   the AWS SAM CLI from requirements/sam.txt, apart because it pins its own boto3
#   ferretdb  $BTC_CACHE_DIR/bin/ferretdb        MongoDB wire protocol on SQLite (built with Go)
#   rie       $BTC_CACHE_DIR/bin/aws-lambda-rie  the Lambda runtime interface emulator (built with Go)
#   mariadb   mariadbd + client from Debian's apt (needs root)
#
# Missing pieces are installed in parallel (the FerretDB build is the long pole); each writes its own
# log under .local-data/logs/setup-<name>.log, shown when it fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../local/services/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../local/services/common.sh"

ALL_COMPONENTS=(python venv sam ferretdb rie mariadb)
LOCK_DIR="$BTC_CACHE_DIR/locks"

# --- checks: fast, side-effect free ---------------------------------------------------------------

# lock_digest FILE...: a venv is rebuilt when its lock files, pyproject.toml or the interpreter change.
lock_digest() {
  {
    cat "$@" "$BTC_REPO_ROOT/pyproject.toml"
    "$(btc_find_python)" -c 'import sys; print(sys.version)' 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}

DEV_LOCKS=("$BTC_REPO_ROOT/requirements/dev.txt" "$BTC_REPO_ROOT/layers/shared/requirements.txt")
SAM_LOCKS=("$BTC_REPO_ROOT/requirements/sam.txt")

check_python() {
  btc_find_python >/dev/null
}

check_venv() {
  [[ -x "$BTC_VENV/bin/python" ]] && "$BTC_VENV/bin/python" -c 'pass' 2>/dev/null \
    && [[ "$(cat "$BTC_VENV/.btc-lock.sha256" 2>/dev/null)" == "$(lock_digest "${DEV_LOCKS[@]}")" ]]
}

check_sam() {
  [[ -x "$BTC_SAM_VENV/bin/sam" ]] && "$BTC_SAM_VENV/bin/python" -c 'pass' 2>/dev/null \
    && [[ "$(cat "$BTC_SAM_VENV/.btc-lock.sha256" 2>/dev/null)" == "$(lock_digest "${SAM_LOCKS[@]}")" ]]
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

install_python() {
  local latest
  if command -v pyenv >/dev/null 2>&1; then
    latest="$(pyenv install --list | sed -n "s/^[[:space:]]*\($BTC_PYTHON_VERSION\.[0-9][0-9]*\)$/\1/p" | tail -n 1)"
    [[ -n "$latest" ]] || btc_die "pyenv knows no Python $BTC_PYTHON_VERSION release (update pyenv)"
    pyenv install --skip-existing "$latest"
  elif command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] \
    && apt-cache show "python$BTC_PYTHON_VERSION-venv" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y "python$BTC_PYTHON_VERSION" "python$BTC_PYTHON_VERSION-venv"
  else
    btc_die "Python $BTC_PYTHON_VERSION not found and neither pyenv nor apt can install it here;" \
      "install it, or set BTC_PYTHON=/path/to/python$BTC_PYTHON_VERSION"
  fi
}

require_python() {
  btc_find_python >/dev/null \
    || btc_die "Python $BTC_PYTHON_VERSION (the Lambda runtime) not found: run scripts/setup.sh python," \
      "or set BTC_PYTHON=/path/to/python$BTC_PYTHON_VERSION"
}

# make_venv DIR: a fresh virtual environment on the runtime's Python (an existing one is replaced: a venv
# built by another interpreter or from another lock must not linger half-updated).
make_venv() {
  local dir="$1"
  rm -rf "$dir"
  "$(btc_find_python)" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --upgrade pip
}

install_venv() {
  require_python
  make_venv "$BTC_VENV"
  # --require-hashes: exactly the locked files, nothing resolved afresh. The project itself is installed
  # editable without dependencies (they all came from the lock), with the locked setuptools.
  "$BTC_VENV/bin/pip" install --require-hashes --no-deps -r "$BTC_REPO_ROOT/requirements/dev.txt"
  "$BTC_VENV/bin/pip" install --no-deps --no-build-isolation --editable "$BTC_REPO_ROOT"
  lock_digest "${DEV_LOCKS[@]}" >"$BTC_VENV/.btc-lock.sha256"
}

install_sam() {
  require_python
  make_venv "$BTC_SAM_VENV"
  "$BTC_SAM_VENV/bin/pip" install --require-hashes --no-deps -r "$BTC_REPO_ROOT/requirements/sam.txt"
  SAM_CLI_TELEMETRY=0 "$BTC_SAM_VENV/bin/sam" --version
  lock_digest "${SAM_LOCKS[@]}" >"$BTC_SAM_VENV/.btc-lock.sha256"
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
    python | ferretdb | rie | mariadb) lock="$LOCK_DIR/$name.lock" ;; # machine-wide tools
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
  # The virtual environments are made with the runtime's Python: find (or install) it first, alone.
  if [[ " ${components[*]} " =~ " "(venv|sam)" " && ! " ${components[*]} " == *" python "* ]]; then
    components=(python "${components[@]}")
  fi
  if [[ " ${components[*]} " == *" python "* ]] && ! check_python; then
    btc_say "installing python $BTC_PYTHON_VERSION (log: $BTC_LOG_DIR/setup-python.log)"
    mkdir -p "$BTC_LOG_DIR"
    run_install python >"$BTC_LOG_DIR/setup-python.log" 2>&1 \
      || { btc_err "python: installation failed"; btc_tail_log "$BTC_LOG_DIR/setup-python.log" 40; return 1; }
  fi
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
