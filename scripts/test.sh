#!/usr/bin/env bash
# The whole test pipeline behind `make test` (and so CI): install, start the servers, lint, unit tests,
# sam validate, sam build, integration tests, end-to-end tests — then one summary table.
#
# Every step runs even when an unrelated one failed (a lint error does not hide test results); a step
# whose prerequisite failed is reported as skipped. Exit status: 0 only when every step passed.
# Each step's output is also kept in .local-data/logs/test-<step>.log.
#
# Servers this run had to start are stopped at the end (set KEEP_SERVICES=1 to keep them); servers that
# were already running are left as they were.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../local/services/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../local/services/common.sh"
cd "$BTC_REPO_ROOT" || exit 1

MAKE="${MAKE:-make}"
STEPS=(setup services lint unit validate build integration e2e)
declare -A COMMAND=(
  [setup]="bash scripts/setup.sh"
  [services]="bash local/services.sh up"
  [lint]="$MAKE lint NODEPS=1"
  [unit]="$MAKE test-unit NODEPS=1"
  [validate]="$MAKE validate NODEPS=1"
  [build]="$MAKE build NODEPS=1"
  [integration]="$MAKE test-integration NODEPS=1"
  [e2e]="$MAKE test-e2e NODEPS=1"
)
declare -A NEEDS=(
  [setup]=""
  [services]="setup"
  [lint]="setup"
  [unit]="setup"
  [validate]="setup"
  [build]="validate"
  [integration]="services"
  [e2e]="services build"
)
declare -A RESULT DURATION DETAIL

# STEP_LOG RC → the pytest summary line ("12 passed, 1 failed in 3.2s"); for another step that failed,
# the last line of its output.
step_detail() {
  local log="$1" rc="$2" line
  line="$(grep -E '^=+ .*[0-9.]+s( \([0-9:]+\))? =+$' "$log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')"
  if [[ -z "$line" && "$rc" != 0 ]]; then
    line="$(grep -v '^[[:space:]]*$' "$log" | grep -v '^make\(\[[0-9]*\]\)\{0,1\}: \*\*\*' | tail -n 1 | cut -c1-90)"
  fi
  printf '%s' "$line"
}

running_services() {
  bash local/services.sh status 2>/dev/null | awk '$2 == "running" {print $1}'
}

run_step() {
  local step="$1" need log started rc
  for need in ${NEEDS[$step]}; do
    if [[ "${RESULT[$need]}" != passed ]]; then
      RESULT[$step]=skipped DURATION[$step]=0 DETAIL[$step]="needs $need"
      return
    fi
  done
  log="$BTC_LOG_DIR/test-$step.log"
  printf '\n%s==> [%s] %s%s\n' "$_btc_bold" "$step" "${COMMAND[$step]}" "$_btc_reset"
  started=$SECONDS
  # shellcheck disable=SC2086  # the command strings are word lists by design
  ${COMMAND[$step]} 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  DURATION[$step]=$((SECONDS - started))
  if ((rc == 0)); then
    RESULT[$step]=passed
  else
    RESULT[$step]=FAILED
  fi
  DETAIL[$step]="$(step_detail "$log" "$rc")"
  [[ "${RESULT[$step]}" == passed ]] || DETAIL[$step]="exit $rc: ${DETAIL[$step]}"
}

RUNNING_BEFORE=()

# Stop the servers that were not running when this run began (unless KEEP_SERVICES=1).
stop_started_services() {
  local after=() started_here=() name
  [[ "${KEEP_SERVICES:-0}" == 1 ]] && return 0
  mapfile -t after < <(running_services)
  for name in "${after[@]}"; do
    [[ " ${RUNNING_BEFORE[*]} " == *" $name "* ]] || started_here+=("$name")
  done
  if ((${#started_here[@]})); then
    printf '\n==> stopping the servers this run started: %s (KEEP_SERVICES=1 keeps them)\n' "${started_here[*]}"
    bash local/services.sh down "${started_here[@]}" || true
  fi
}

main() {
  local step failed=0 total_started=$SECONDS colour
  mkdir -p "$BTC_LOG_DIR"
  mapfile -t RUNNING_BEFORE < <(running_services)
  # An interrupted run cleans up too.
  trap 'stop_started_services; exit 130' INT TERM

  for step in "${STEPS[@]}"; do run_step "$step"; done
  trap - INT TERM
  stop_started_services

  printf '\n%s==> make test summary%s\n' "$_btc_bold" "$_btc_reset"
  for step in "${STEPS[@]}"; do
    case "${RESULT[$step]}" in
      passed) colour="$_btc_green" ;;
      *)
        colour="$_btc_red"
        failed=1
        ;;
    esac
    printf '  %-12s %s%-8s%s %5ss  %s\n' "$step" "$colour" "${RESULT[$step]}" "$_btc_reset" \
      "${DURATION[$step]}" "${DETAIL[$step]}"
  done
  printf '  %-12s %-8s %5ss  logs in %s/test-*.log\n' total "" "$((SECONDS - total_started))" "$BTC_LOG_DIR"
  if ((failed)); then
    btc_err "make test failed"
  else
    btc_ok "make test passed"
  fi
  return "$failed"
}

main "$@"
