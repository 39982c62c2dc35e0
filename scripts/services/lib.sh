# Shared helpers for scripts/services/*.sh. Sourced, not executed.
# shellcheck shell=bash

SERVICES_DIR="${DROVER_SERVICES_DIR:-/tmp/drover-services}"
# shellcheck disable=SC2034 # used by the scripts that source this file
TEST_USER="drover-test"

# One line per step on stdout; errors on stderr.
step() { printf '[%s] %s\n' "$SERVICE_NAME" "$*"; }
die() {
    printf '[%s] ERROR: %s\n' "$SERVICE_NAME" "$*" >&2
    exit 1
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, starts daemons)"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# Install Debian packages that are missing; run `apt-get update` only when the
# package lists do not know a package or the install fails (stale lists).
apt_install() {
    local missing=() p
    for p in "$@"; do
        # (no `| grep -q`: with pipefail an early grep exit fails the pipeline)
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] ||
            missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    local apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    local log="$SERVICES_DIR/apt-$SERVICE_NAME.log"
    mkdir -p "$SERVICES_DIR"
    local need_update=0
    for p in "${missing[@]}"; do
        [[ "$(apt-cache policy "$p" 2>/dev/null || true)" =~ Candidate:\ [0-9] ]] || need_update=1
    done
    if [ "$need_update" -eq 1 ]; then
        step "apt-get update"
        apt-get update -q >"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
    fi
    step "apt-get install ${missing[*]}"
    if ! apt-get install "${apt_opts[@]}" "${missing[@]}" >>"$log" 2>&1; then
        step "install failed, retrying after apt-get update"
        apt-get update -q >>"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
        apt-get install "${apt_opts[@]}" "${missing[@]}" >>"$log" 2>&1 ||
            { tail -n 40 "$log" >&2; die "apt-get install ${missing[*]} failed (log: $log)"; }
    fi
}

# True if the pid is a live process (not a zombie). pgrep is no proof of life.
pid_alive() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/stat" ] || return 1
    state="$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# Pid from a pid file if that process is alive (and, if given, its command name
# matches), else nothing.
pidfile_pid() {
    local file="$1" comm="${2:-}" pid
    [ -s "$file" ] || return 1
    pid="$(tr -dc '0-9' <"$file")"
    pid_alive "$pid" || return 1
    if [ -n "$comm" ]; then
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
    fi
    printf '%s\n' "$pid"
}

# Stop the daemon named by a pid file: SIGTERM, wait up to $3 s (default 10),
# then SIGKILL. Never hangs. Removes the pid file.
stop_pidfile() {
    local file="$1" comm="$2" timeout="${3:-10}" pid i
    if ! pid="$(pidfile_pid "$file" "$comm")"; then
        rm -f "$file"
        step "$comm not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        pid_alive "$pid" && die "$comm (pid $pid) survived SIGKILL"
        step "stopped $comm (pid $pid, needed SIGKILL)"
    else
        step "stopped $comm (pid $pid)"
    fi
    rm -f "$file"
}
