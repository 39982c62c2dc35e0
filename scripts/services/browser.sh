#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver, for the end-to-end test of the daemon's
# web page (crates/cli/tests/web.rs). Not a daemon: the test starts its own
# chromedriver on a free loopback port and stops it.
#
#   scripts/services/browser.sh start|stop|status
#
# start: installs chromium and chromium-driver if missing and checks that both
#   run. stop: nothing to stop. status: exit 0 if both are installed.
set -euo pipefail

SERVICE_NAME=browser
# shellcheck source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

case "${1:-}" in
start)
    need_root
    t0="$(now)"
    apt_install chromium chromium-driver
    chromium_version="$(chromium --version 2>/dev/null)" || die "chromium is installed but does not run"
    driver_version="$(chromedriver --version 2>/dev/null)" || die "chromedriver is installed but does not run"
    step "ready: $chromium_version; ${driver_version%% (*} ($(elapsed "$t0") s)"
    ;;
stop) ;;
status)
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        step "chromium or chromedriver missing"
        exit 1
    fi
    step "installed: $(chromium --version 2>/dev/null)"
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
