# shellcheck shell=bash
# Shared helpers of local/services.sh and scripts/*.sh: paths, configuration, logging, pid files, ports.
#
# Sourced, never executed. Callers set `set -euo pipefail` themselves.
# shellcheck disable=SC2034  # the variables defined here are used by the scripts that source this file

# Where things live. The repository is found from this file, so the scripts work from any directory and
# in any clone; machine-wide caches (Go binaries) sit outside the repository so every clone reuses them.
BTC_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
BTC_CACHE_DIR="${BTC_CACHE_DIR:-$HOME/.cache/btc}"
BTC_BIN_DIR="$BTC_CACHE_DIR/bin"
BTC_DATA_DIR="${BTC_DATA_DIR:-$BTC_REPO_ROOT/.local-data}"
BTC_LOG_DIR="$BTC_DATA_DIR/logs"
BTC_RUN_DIR="$BTC_DATA_DIR/run"
BTC_DEFAULTS_FILE="$BTC_REPO_ROOT/local/defaults.env"
BTC_VENV="$BTC_REPO_ROOT/.venv"
BTC_SAM_VENV="$BTC_REPO_ROOT/.sam-venv"
export BTC_CACHE_DIR

# Pinned tool versions: a change here makes `setup` rebuild the tool.
BTC_FERRETDB_VERSION="v1.24.2"
BTC_RIE_MODULE="github.com/aws/aws-lambda-runtime-interface-emulator"
BTC_RIE_VERSION="v0.0.0-20261030222936-bef5c4ba774d"

# The Lambda runtime's Python: the virtual environments, `sam build` and the emulator all use it.
BTC_PYTHON_VERSION="3.13"
# An explicit interpreter (BTC_PYTHON=/path/to/python3.13) wins; otherwise btc_find_python looks for one.
BTC_PYTHON="${BTC_PYTHON:-}"

# btc_find_python: print the path of a Python $BTC_PYTHON_VERSION interpreter (BTC_PYTHON, python3.13 on
# PATH, then pyenv's versions), or fail quietly. Fast and side-effect free.
btc_find_python() {
  local candidate root
  local candidates=()
  [[ -n "$BTC_PYTHON" ]] && candidates+=("$BTC_PYTHON")
  candidates+=("$(command -v "python$BTC_PYTHON_VERSION" 2>/dev/null || true)")
  root="${PYENV_ROOT:-$HOME/.pyenv}"
  if command -v pyenv >/dev/null 2>&1; then
    root="$(pyenv root 2>/dev/null || printf '%s' "$root")"
  fi
  for candidate in "$root"/versions/"$BTC_PYTHON_VERSION".*/bin/python"$BTC_PYTHON_VERSION"; do
    candidates+=("$candidate")
  done
  for candidate in "${candidates[@]}"; do
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    if "$candidate" -c "import sys, ensurepip, venv; sys.exit(sys.version_info[:2] != tuple(map(int, '$BTC_PYTHON_VERSION'.split('.'))))" 2>/dev/null; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

if [[ -t 2 && -z "${NO_COLOR:-}" ]]; then
  _btc_red=$'\e[31m' _btc_green=$'\e[32m' _btc_yellow=$'\e[33m' _btc_bold=$'\e[1m' _btc_reset=$'\e[0m'
else
  _btc_red="" _btc_green="" _btc_yellow="" _btc_bold="" _btc_reset=""
fi

btc_say() { printf '%s==>%s %s\n' "$_btc_bold" "$_btc_reset" "$*" >&2; }
btc_ok() { printf '%s ok%s  %s\n' "$_btc_green" "$_btc_reset" "$*" >&2; }
btc_warn() { printf '%swarn%s %s\n' "$_btc_yellow" "$_btc_reset" "$*" >&2; }
btc_err() { printf '%sFAIL%s %s\n' "$_btc_red" "$_btc_reset" "$*" >&2; }
btc_die() {
  btc_err "$*"
  exit 1
}

# btc_tail_log FILE [LINES]: show the end of a log after a failure, so the cause is on screen.
btc_tail_log() {
  local file="$1" lines="${2:-30}"
  if [[ -s "$file" ]]; then
    printf -- '----- last %s lines of %s -----\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" >&2
    printf -- '----- end of %s -----\n' "$file" >&2
  else
    printf '(no log output in %s)\n' "$file" >&2
  fi
}

# btc_load_env: export every KEY=VALUE of local/defaults.env that the environment does not already set.
# Parsed line by line (never `source`d) so a value is data, not shell code.
btc_load_env() {
  local line key value
  [[ -r "$BTC_DEFAULTS_FILE" ]] || btc_die "missing $BTC_DEFAULTS_FILE"
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line#"${line%%[![:space:]]*}"}"
    [[ -z "$line" || "$line" == \#* || "$line" != *=* ]] && continue
    key="${line%%=*}"
    value="${line#*=}"
    [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || btc_die "bad line in $BTC_DEFAULTS_FILE: $line"
    if [[ -z "${!key+set}" ]]; then
      export "$key=$value"
    fi
  done <"$BTC_DEFAULTS_FILE"
  # Names of the local secrets (not in defaults.env; overridable like everything else).
  export MYSQL_SECRET_NAME="${MYSQL_SECRET_NAME:-bytemark-cache/local/mysql}"
  export MONGODB_SECRET_NAME="${MONGODB_SECRET_NAME:-bytemark-cache/local/mongodb}"
}

# btc_split_host_port URL VAR_HOST VAR_PORT DEFAULT_PORT: host and port of a URL like
# scheme://[user:pass@]host[:port][/...] (one host only).
btc_split_host_port() {
  local url="$1" rest hostport
  local -n _host="$2" _port="$3"
  rest="${url#*://}"
  hostport="${rest%%/*}"
  hostport="${hostport##*@}"
  hostport="${hostport%%\?*}"
  [[ "$hostport" == *,* ]] && btc_die "$url names several hosts; the local services need exactly one"
  if [[ "$hostport" == *:* ]]; then
    _host="${hostport%%:*}"
    _port="${hostport##*:}"
  else
    _host="$hostport"
    _port="$4"
  fi
  [[ "$_port" =~ ^[0-9]+$ ]] || btc_die "cannot read a port from $url"
}

# btc_is_local_host HOST: true for addresses this machine serves itself.
btc_is_local_host() {
  [[ "$1" == "127.0.0.1" || "$1" == "localhost" ]]
}

# btc_port_in_use HOST PORT: true when something accepts TCP connections there.
btc_port_in_use() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# btc_port_owner PORT: "pid N (command line)" of the listener, or a hint when it cannot be told.
btc_port_owner() {
  local port="$1" pid
  if command -v ss >/dev/null 2>&1; then
    pid="$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true)"
    if [[ -n "$pid" ]]; then
      printf 'pid %s (%s)' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-160 | sed 's/ *$//')"
      return
    fi
  fi
  printf 'an unknown process (see: ss -ltnp | grep %s)' "$port"
}

# btc_pid_alive PID: the process exists and is not a zombie (an exited child its parent has not reaped
# yet, which `kill -0` still reports as present).
btc_pid_alive() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

# btc_pid_file NAME → path of the pid file of a service this project started.
btc_pid_file() { printf '%s/%s.pid' "$BTC_RUN_DIR" "$1"; }

# btc_running_pid NAME PATTERN: print the pid from NAME's pid file when that process is alive and its
# command line still contains PATTERN (a recycled pid is not ours); remove a stale pid file.
btc_running_pid() {
  local name="$1" pattern="$2" file pid cmdline
  file="$(btc_pid_file "$name")"
  [[ -f "$file" ]] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  if [[ -n "$pid" ]] && btc_pid_alive "$pid"; then
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    if [[ "$cmdline" == *"$pattern"* ]]; then
      printf '%s' "$pid"
      return 0
    fi
  fi
  rm -f "$file"
  return 1
}

# btc_stop_pid NAME PID TIMEOUT: SIGTERM, wait up to TIMEOUT seconds for a clean exit, then SIGKILL.
btc_stop_pid() {
  local name="$1" pid="$2" timeout="$3" deadline
  kill -TERM "$pid" 2>/dev/null || return 0
  deadline=$((SECONDS + timeout))
  while btc_pid_alive "$pid"; do
    if ((SECONDS >= deadline)); then
      btc_warn "$name (pid $pid) ignored SIGTERM for ${timeout}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$(btc_pid_file "$name")"
}

# btc_spawn NAME LOG CMD...: start CMD detached (own session, no stdin), log to LOG, record its pid.
btc_spawn() {
  local name="$1" log="$2"
  shift 2
  mkdir -p "$BTC_RUN_DIR" "$(dirname "$log")"
  printf '\n===== %s starting %s =====\n' "$(date -u +%FT%TZ)" "$name" >>"$log"
  # The child writes its own pid and then becomes the service (exec), so the pid file names the
  # service even when setsid has to fork.
  rm -f "$(btc_pid_file "$name")"
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  setsid bash -c 'printf "%s\n" "$$" >"$0"; exec "$@"' "$(btc_pid_file "$name")" "$@" \
    </dev/null >>"$log" 2>&1 &
  local waited=0
  while [[ ! -s "$(btc_pid_file "$name")" ]] && ((waited < 50)); do
    sleep 0.1
    waited=$((waited + 1))
  done
}

# btc_venv_python: the app venv's interpreter (the probes need pymongo, pymysql and boto3).
btc_venv_python() {
  [[ -x "$BTC_VENV/bin/python" ]] || btc_die "no $BTC_VENV: run \`make setup\` (or scripts/setup.sh venv)"
  printf '%s' "$BTC_VENV/bin/python"
}

# btc_poll TIMEOUT PID CMD...: run CMD until it succeeds (0), PID dies (2) or TIMEOUT seconds pass (1).
# BTC_POLL_OUTPUT keeps the last attempt's output for the failure message.
BTC_POLL_OUTPUT=""
btc_poll() {
  local timeout="$1" pid="$2" deadline
  shift 2
  deadline=$((SECONDS + timeout))
  while true; do
    BTC_POLL_OUTPUT="$("$@" 2>&1)" && return 0
    if [[ -n "$pid" ]] && ! btc_pid_alive "$pid"; then
      return 2
    fi
    ((SECONDS >= deadline)) && return 1
    sleep 0.2
  done
}
