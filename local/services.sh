#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Start, stop and inspect the real local servers the stack and the integration tests use.
#
#   local/services.sh up     [ferretdb|mariadb|moto ...]   start (missing tools are installed first)
#   local/services.sh down   [ferretdb|mariadb|moto ...]   stop what this checkout started (pid files)
#   local/services.sh status [ferretdb|mariadb|moto ...]
#   local/services.sh restart [...]
#
# No name means all three. Endpoints come from local/defaults.env, each overridable by the environment:
# FerretDB at MONGODB_URI, MariaDB at MYSQL_HOST:MYSQL_PORT (database MYSQL_DATABASE, user MYSQL_USER),
# moto at AWS_ENDPOINT_URL (queue UPDATE_QUEUE_NAME → UPDATE_DLQ_NAME, secrets MYSQL_SECRET_NAME and
# MONGODB_SECRET_NAME). Data, logs and pid files live in .local-data/ (BTC_DATA_DIR).
#
# `up` is idempotent: a running service is checked and kept. A port that answers as the expected kind
# of server (another checkout's, say) is reused; a port held by anything else is an error naming it.
set -euo pipefail
SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/services"
# shellcheck source=services/common.sh
source "$SERVICES_DIR/common.sh"
# shellcheck source=services/ferretdb.sh
source "$SERVICES_DIR/ferretdb.sh"
# shellcheck source=services/mariadb.sh
source "$SERVICES_DIR/mariadb.sh"
# shellcheck source=services/moto.sh
source "$SERVICES_DIR/moto.sh"

ALL_SERVICES=(ferretdb mariadb moto)

# service_wait NAME PROBE PID TIMEOUT LOG: wait until the server answers its protocol probe; on failure
# show its log and stop the script with the reason (died, or not ready in time).
service_wait() {
  local name="$1" probe="$2" pid="$3" timeout="$4" log="$5" rc=0
  "$(btc_venv_python)" "$BTC_REPO_ROOT/local/services/probe.py" wait "$probe" \
    --timeout "$timeout" --pid "$pid" || rc=$?
  case "$rc" in
    0) return 0 ;;
    2)
      btc_tail_log "$log"
      btc_die "$name (pid $pid) exited while starting — its log is above ($log)"
      ;;
    3) btc_die "$name (pid $pid) is up but refuses the configured client (reason above)" ;;
    *)
      btc_tail_log "$log"
      btc_die "$name (pid $pid) did not answer within ${timeout}s — its log is above ($log)"
      ;;
  esac
}

# service_port_taken NAME PROBE HOST PORT SETTING: false when the port is free. When something else
# listens there: reuse it if it answers like the expected server, else stop with who holds the port.
service_port_taken() {
  local name="$1" probe="$2" host="$3" port="$4" setting="$5" owner
  btc_port_in_use "$host" "$port" || return 1
  owner="$(btc_port_owner "$port")"
  local reason
  if reason="$("$(btc_venv_python)" "$BTC_REPO_ROOT/local/services/probe.py" wait "$probe" --timeout 3 2>&1)"; then
    btc_warn "$name: $host:$port is already served by $owner, not started by this checkout; reusing it"
    return 0
  fi
  btc_die "$name: port $host:$port is taken by $owner, which is not a usable $name" \
    "(${reason#probe: }). Stop that process, or choose another port by exporting $setting."
}

# service_status NAME PATTERN HOST PORT DETAIL: one line per service.
service_status() {
  local name="$1" pattern="$2" host="$3" port="$4" detail="$5" pid
  if pid="$(btc_running_pid "$name" "$pattern")"; then
    printf '%-9s running  pid %-7s %s:%s  %s\n' "$name" "$pid" "$host" "$port" "$detail"
  elif btc_port_in_use "$host" "$port"; then
    printf '%-9s foreign  %s:%s served by %s\n' "$name" "$host" "$port" "$(btc_port_owner "$port")"
  else
    printf '%-9s stopped  %s:%s\n' "$name" "$host" "$port"
  fi
}

usage() {
  # The header comment (after the shellcheck directive) is the help text.
  awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "${BASH_SOURCE[0]}" >&2
  exit 2
}

main() {
  (($#)) || usage
  local command="$1" name
  shift
  local services=("$@")
  ((${#services[@]})) || services=("${ALL_SERVICES[@]}")
  for name in "${services[@]}"; do
    case " ${ALL_SERVICES[*]} " in
      *" $name "*) ;;
      *) btc_die "unknown service '$name' (choose from: ${ALL_SERVICES[*]})" ;;
    esac
  done
  btc_load_env
  mkdir -p "$BTC_LOG_DIR" "$BTC_RUN_DIR"
  case "$command" in
    up)
      # The probes need the venv; installing is a quick no-op when everything is present.
      local tools=(venv)
      for name in "${services[@]}"; do
        [[ "$name" == ferretdb || "$name" == mariadb ]] && tools+=("$name")
      done
      bash "$BTC_REPO_ROOT/scripts/setup.sh" "${tools[@]}"
      for name in "${services[@]}"; do "${name}_up"; done
      ;;
    down)
      for name in "${services[@]}"; do "${name}_down"; done
      ;;
    restart)
      for name in "${services[@]}"; do "${name}_down"; done
      main up "${services[@]}"
      ;;
    status)
      for name in "${services[@]}"; do "${name}_status"; done
      ;;
    -h | --help | help) usage ;;
    *)
      btc_err "unknown command '$command'"
      usage
      ;;
  esac
}

main "$@"
