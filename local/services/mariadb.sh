# shellcheck shell=bash
# MariaDB: a private server (own datadir, socket and port) plus the SQL migrations. Sourced by services.sh.
#
# Debian's packaged configuration is ignored (--no-defaults): it logs to syslog, which is absent here,
# and points at the system's socket and datadir.

MARIADB_DIR="$BTC_DATA_DIR/mariadb"
MARIADB_DATADIR="$MARIADB_DIR/data"
MARIADB_LOG="$BTC_LOG_DIR/mariadb.log"
MARIADB_MIGRATIONS_DIR="$BTC_REPO_ROOT/local/migrations"

mariadb_endpoint() {
  MARIADB_HOST="$MYSQL_HOST"
  MARIADB_PORT="$MYSQL_PORT"
  btc_is_local_host "$MARIADB_HOST" \
    || btc_die "MYSQL_HOST is $MARIADB_HOST, not this machine: nothing local to start for it"
  [[ "$MARIADB_HOST" == localhost ]] && MARIADB_HOST=127.0.0.1
  [[ "$MYSQL_USER" =~ ^[A-Za-z0-9_]+$ ]] || btc_die "MYSQL_USER must be letters, digits and _ (got $MYSQL_USER)"
  [[ "$MYSQL_DATABASE" =~ ^[A-Za-z0-9_]+$ ]] \
    || btc_die "MYSQL_DATABASE must be letters, digits and _ (got $MYSQL_DATABASE)"
  # A unix socket path is limited to 107 bytes; a deep checkout falls back to one in /tmp.
  MARIADB_SOCKET="$MARIADB_DIR/mysqld.sock"
  if ((${#MARIADB_SOCKET} > 100)); then
    MARIADB_SOCKET="/tmp/btc-mariadb-$(printf '%s' "$MARIADB_DIR" | sha256sum | cut -c1-12).sock"
  fi
}

mariadb_pattern() { printf -- '--datadir=%s' "$MARIADB_DATADIR"; }

mariadb_server() {
  command -v mariadbd 2>/dev/null || { [[ -x /usr/sbin/mariadbd ]] && printf '/usr/sbin/mariadbd'; } \
    || btc_die "mariadbd not found: run \`make setup\` (apt-get install -y mariadb-server)"
}

# The OS user the server runs as: `mysql` when root and that user can reach the data folder (a checkout
# under /root cannot be), else the current user (mariadbd runs as root only when told explicitly).
mariadb_run_user() {
  if [[ "$(id -u)" != 0 ]]; then
    id -un
  elif id mysql >/dev/null 2>&1 && chown mysql: "$MARIADB_DIR" && runuser -u mysql -- test -w "$MARIADB_DIR"; then
    printf 'mysql'
  else
    printf 'root'
  fi
}

# The client as the server's administrator: over the socket, authenticated as the OS user. The explicit
# protocol and host matter: the client would otherwise follow MYSQL_HOST from the environment to TCP.
# shellcheck disable=SC2120  # called with arguments through btc_poll, and with a heredoc as is
mariadb_admin_sql() {
  local os_user
  os_user="$(id -un)"
  mariadb --no-defaults --protocol=SOCKET --host=localhost --socket="$MARIADB_SOCKET" --user="$os_user" \
    --batch --skip-column-names "$@"
}

sql_string() {
  local value="${1//\\/\\\\}"
  printf "'%s'" "${value//\'/\\\'}"
}

mariadb_initialise() {
  local run_user="$1"
  [[ -d "$MARIADB_DATADIR/mysql" ]] && return 0
  btc_say "mariadb: creating a new datadir in $MARIADB_DATADIR"
  rm -rf "$MARIADB_DATADIR"
  if ! mariadb-install-db --no-defaults --datadir="$MARIADB_DATADIR" --user="$run_user" \
    --auth-root-authentication-method=socket --skip-test-db >"$BTC_LOG_DIR/mariadb-install.log" 2>&1; then
    btc_tail_log "$BTC_LOG_DIR/mariadb-install.log"
    rm -rf "$MARIADB_DATADIR"
    btc_die "mariadb-install-db failed"
  fi
}

# Database and application user (the user is refreshed so a changed MYSQL_PASSWORD takes effect).
# The user may also create and drop the throw-away btc_test_* databases of the integration tests.
mariadb_bootstrap() {
  local user password
  user="$(sql_string "$MYSQL_USER")"
  password="$(sql_string "$MYSQL_PASSWORD")"
  # shellcheck disable=SC2119
  mariadb_admin_sql <<SQL || btc_die "mariadb: creating database $MYSQL_DATABASE and user $MYSQL_USER failed"
CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS $user@'127.0.0.1' IDENTIFIED BY $password;
CREATE USER IF NOT EXISTS $user@'localhost' IDENTIFIED BY $password;
ALTER USER $user@'127.0.0.1' IDENTIFIED BY $password;
ALTER USER $user@'localhost' IDENTIFIED BY $password;
GRANT ALL PRIVILEGES ON \`$MYSQL_DATABASE\`.* TO $user@'127.0.0.1', $user@'localhost';
GRANT ALL PRIVILEGES ON \`btc\\_test\\_%\`.* TO $user@'127.0.0.1', $user@'localhost';
SQL
}

# Apply local/migrations/*.sql in name order over TCP as the application user, each at most once
# (recorded with its checksum in schema_migrations); an applied file whose statements changed is an error.
# The checksum leaves out `--` comment lines: a comment is no schema change.
mariadb_migrate() {
  local client_cnf="$BTC_RUN_DIR/mariadb-client.cnf" rc=0
  mkdir -p "$BTC_RUN_DIR"
  (
    umask 077
    printf '[client]\nprotocol=TCP\nhost=%s\nport=%s\nuser=%s\npassword="%s"\n' \
      "$MARIADB_HOST" "$MARIADB_PORT" "$MYSQL_USER" "${MYSQL_PASSWORD//\"/\\\"}" >"$client_cnf"
  )
  # A subshell, so the file with the password is removed even when a migration fails.
  (mariadb_apply_migrations "$client_cnf") || rc=$?
  rm -f "$client_cnf"
  return "$rc"
}

mariadb_apply_migrations() {
  local file name checksum recorded applied=0
  local -a client=(mariadb --defaults-file="$1" --database="$MYSQL_DATABASE" --batch --skip-column-names)
  "${client[@]}" -e "CREATE TABLE IF NOT EXISTS schema_migrations (
      filename VARCHAR(255) NOT NULL PRIMARY KEY,
      checksum CHAR(64) NOT NULL,
      applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)" \
    || btc_die "mariadb: cannot reach $MARIADB_HOST:$MARIADB_PORT as $MYSQL_USER to migrate $MYSQL_DATABASE"
  for file in "$MARIADB_MIGRATIONS_DIR"/*.sql; do
    [[ -e "$file" ]] || continue
    name="$(basename "$file")"
    checksum="$(grep -v '^[[:space:]]*--' "$file" | sha256sum | cut -d' ' -f1)"
    recorded="$("${client[@]}" -e "SELECT checksum FROM schema_migrations WHERE filename = $(sql_string "$name")")" \
      || btc_die "mariadb: cannot read schema_migrations in $MYSQL_DATABASE"
    if [[ "$recorded" == "$checksum" ]]; then
      continue
    elif [[ -n "$recorded" ]]; then
      btc_die "migration $name changed after it was applied to $MYSQL_DATABASE; add a new file instead" \
        "(a local database recorded before checksums left out comments: \`make clean\` recreates it)"
    fi
    "${client[@]}" <"$file" || btc_die "migration $name failed on $MYSQL_DATABASE"
    "${client[@]}" -e "INSERT INTO schema_migrations (filename, checksum) VALUES ($(sql_string "$name"), '$checksum')" \
      || btc_die "mariadb: cannot record migration $name"
    btc_ok "mariadb: applied migration $name"
    applied=$((applied + 1))
  done
  btc_ok "mariadb: $MYSQL_DATABASE schema up to date ($applied migration(s) applied now)"
}

# The administrator's connection (socket) works: the server accepts queries, crash recovery is over.
mariadb_wait_socket() {
  local pid="$1" rc=0
  btc_poll 60 "$pid" mariadb_admin_sql -e 'SELECT 1' || rc=$?
  if ((rc)); then
    btc_tail_log "$MARIADB_LOG"
    btc_err "last attempt: $BTC_POLL_OUTPUT"
    ((rc == 2)) && btc_die "mariadb (pid $pid) exited while starting — its log is above ($MARIADB_LOG)"
    btc_die "mariadb (pid $pid) did not accept queries on $MARIADB_SOCKET within 60s — log above ($MARIADB_LOG)"
  fi
}

mariadb_up() {
  mariadb_endpoint
  local pid run_user server
  if pid="$(btc_running_pid mariadb "$(mariadb_pattern)")"; then
    mariadb_wait_socket "$pid"
    mariadb_bootstrap
    service_wait mariadb mysql "$pid" 30 "$MARIADB_LOG"
    btc_ok "mariadb already running (pid $pid) on $MARIADB_HOST:$MARIADB_PORT"
    mariadb_migrate
    return
  fi
  if service_port_taken mariadb mysql "$MARIADB_HOST" "$MARIADB_PORT" MYSQL_PORT; then
    mariadb_migrate
    return
  fi
  server="$(mariadb_server)"
  mkdir -p "$MARIADB_DIR" "$BTC_LOG_DIR" "$BTC_RUN_DIR"
  if [[ "$(id -u)" == 0 ]]; then
    # Debian's client tools and scripts expect this folder even though this server's socket is elsewhere.
    mkdir -p /run/mysqld
    id mysql >/dev/null 2>&1 && chown mysql: /run/mysqld
  fi
  run_user="$(mariadb_run_user)"
  [[ "$(id -u)" == 0 ]] && chown -R "$run_user": "$MARIADB_DIR"
  mariadb_initialise "$run_user"
  # A crash leaves the pid file and socket behind; the process is gone (checked above), so drop them.
  rm -f "$MARIADB_DIR/mysqld.pid" "$MARIADB_SOCKET"
  btc_spawn mariadb "$MARIADB_LOG" "$server" --no-defaults \
    --user="$run_user" \
    --datadir="$MARIADB_DATADIR" \
    --socket="$MARIADB_SOCKET" \
    --pid-file="$MARIADB_DIR/mysqld.pid" \
    --bind-address="$MARIADB_HOST" \
    --port="$MARIADB_PORT" \
    --skip-name-resolve \
    --character-set-server=utf8mb4 \
    --collation-server=utf8mb4_unicode_ci \
    --max-connections=300 \
    --innodb-buffer-pool-size=128M \
    --innodb-flush-log-at-trx-commit=2 \
    --log-warnings=1
  pid="$(cat "$(btc_pid_file mariadb)")"
  mariadb_wait_socket "$pid"
  mariadb_bootstrap
  service_wait mariadb mysql "$pid" 30 "$MARIADB_LOG"
  btc_ok "mariadb started (pid $pid as $run_user) on $MARIADB_HOST:$MARIADB_PORT, datadir $MARIADB_DATADIR"
  mariadb_migrate
}

mariadb_down() {
  mariadb_endpoint
  local pid
  if pid="$(btc_running_pid mariadb "$(mariadb_pattern)")"; then
    # SIGTERM is mariadbd's clean shutdown (InnoDB flushes); give it time before SIGKILL.
    btc_stop_pid mariadb "$pid" 60
    rm -f "$MARIADB_SOCKET"
    btc_ok "mariadb stopped (pid $pid)"
  else
    btc_ok "mariadb not running (started by this checkout)"
  fi
}

mariadb_status() {
  mariadb_endpoint
  service_status mariadb "$(mariadb_pattern)" "$MARIADB_HOST" "$MARIADB_PORT" "datadir $MARIADB_DATADIR"
}
