# shellcheck shell=bash
# moto's server: SQS and Secrets Manager, in memory. Sourced by services.sh.

MOTO_LOG="$BTC_LOG_DIR/moto.log"

moto_endpoint() {
  btc_split_host_port "$AWS_ENDPOINT_URL" MOTO_HOST MOTO_PORT 80
  btc_is_local_host "$MOTO_HOST" \
    || btc_die "AWS_ENDPOINT_URL points at $MOTO_HOST, not this machine: nothing local to start for it"
}

# The venv path makes the pattern specific to this checkout's moto.
moto_pattern() { printf '%s/bin/moto_server' "$BTC_VENV"; }

# moto keeps everything in memory: the queues and secrets are (re)created on every `up`.
moto_provision() {
  local output
  if ! output="$("$(btc_venv_python)" "$BTC_REPO_ROOT/local/services/probe.py" provision-aws 2>&1)"; then
    printf '%s\n' "$output" >&2
    btc_die "could not create the queues and secrets on $AWS_ENDPOINT_URL"
  fi
  btc_ok "moto: $output"
}

moto_up() {
  moto_endpoint
  local pid
  if pid="$(btc_running_pid moto "$(moto_pattern)")"; then
    service_wait moto moto "$pid" 30 "$MOTO_LOG"
    btc_ok "moto already running (pid $pid) on $MOTO_HOST:$MOTO_PORT"
  elif service_port_taken moto moto "$MOTO_HOST" "$MOTO_PORT" AWS_ENDPOINT_URL; then
    :
  else
    [[ -x "$(moto_pattern)" ]] || btc_die "no $(moto_pattern): run \`make setup\`"
    btc_spawn moto "$MOTO_LOG" "$(moto_pattern)" -H "$MOTO_HOST" -p "$MOTO_PORT"
    pid="$(cat "$(btc_pid_file moto)")"
    service_wait moto moto "$pid" 30 "$MOTO_LOG"
    btc_ok "moto started (pid $pid) on $MOTO_HOST:$MOTO_PORT"
  fi
  moto_provision
}

moto_down() {
  local pid
  if pid="$(btc_running_pid moto "$(moto_pattern)")"; then
    btc_stop_pid moto "$pid" 10
    btc_ok "moto stopped (pid $pid)"
  else
    btc_ok "moto not running (started by this checkout)"
  fi
}

moto_status() {
  moto_endpoint
  service_status moto "$(moto_pattern)" "$MOTO_HOST" "$MOTO_PORT" "in memory"
}
