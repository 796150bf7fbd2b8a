# shellcheck shell=bash
# FerretDB: the MongoDB wire protocol on SQLite files under .local-data/ferretdb. Sourced by services.sh.

FERRETDB_DIR="$BTC_DATA_DIR/ferretdb"
FERRETDB_LOG="$BTC_LOG_DIR/ferretdb.log"

ferretdb_endpoint() {
  btc_split_host_port "$MONGODB_URI" FERRETDB_HOST FERRETDB_PORT 27017
  btc_is_local_host "$FERRETDB_HOST" \
    || btc_die "MONGODB_URI points at $FERRETDB_HOST, not this machine: nothing local to start for it"
}

# Its pid file is ours only while the process serves our data folder.
ferretdb_pattern() { printf -- '--sqlite-url=file:%s/' "$FERRETDB_DIR/data"; }

ferretdb_up() {
  ferretdb_endpoint
  local pid
  if pid="$(btc_running_pid ferretdb "$(ferretdb_pattern)")"; then
    service_wait ferretdb mongo "$pid" 30 "$FERRETDB_LOG"
    btc_ok "ferretdb already running (pid $pid) on $FERRETDB_HOST:$FERRETDB_PORT"
    return
  fi
  if service_port_taken ferretdb mongo "$FERRETDB_HOST" "$FERRETDB_PORT" MONGODB_URI; then
    return
  fi
  [[ -x "$BTC_BIN_DIR/ferretdb" ]] || btc_die "no $BTC_BIN_DIR/ferretdb: run \`make setup\`"
  mkdir -p "$FERRETDB_DIR/data" "$FERRETDB_DIR/state"
  # --debug-addr=- : no metrics/pprof listener (it would take port 8088); telemetry off: no outside calls.
  btc_spawn ferretdb "$FERRETDB_LOG" "$BTC_BIN_DIR/ferretdb" \
    --handler=sqlite \
    --sqlite-url="file:$FERRETDB_DIR/data/" \
    --state-dir="$FERRETDB_DIR/state" \
    --listen-addr="$FERRETDB_HOST:$FERRETDB_PORT" \
    --debug-addr=- \
    --telemetry=disable \
    --log-level="${FERRETDB_LOG_LEVEL:-warn}"
  pid="$(cat "$(btc_pid_file ferretdb)")"
  service_wait ferretdb mongo "$pid" 30 "$FERRETDB_LOG"
  btc_ok "ferretdb started (pid $pid) on $FERRETDB_HOST:$FERRETDB_PORT, data in $FERRETDB_DIR/data"
}

ferretdb_down() {
  local pid
  if pid="$(btc_running_pid ferretdb "$(ferretdb_pattern)")"; then
    btc_stop_pid ferretdb "$pid" 20
    btc_ok "ferretdb stopped (pid $pid)"
  else
    btc_ok "ferretdb not running (started by this checkout)"
  fi
}

ferretdb_status() {
  ferretdb_endpoint
  service_status ferretdb "$(ferretdb_pattern)" "$FERRETDB_HOST" "$FERRETDB_PORT" "data $FERRETDB_DIR/data"
}
