#!/usr/bin/env bash
# Start or stop every real service drover's tests need: sshd, SLURM, PostgreSQL,
# a Kubernetes control plane (built once from Debian's source and cached), and
# the browser of the web page's end-to-end test.
#
#   scripts/services/all.sh start|stop|status
#
# stop stops each service even if another fails, and fails if any failed.
set -euo pipefail

here="$(dirname "$(readlink -f "$0")")"

case "${1:-}" in
start)
    "$here/sshd.sh" start
    "$here/slurm.sh" start
    "$here/postgres.sh" start
    "$here/kube.sh" start
    "$here/browser.sh" start
    ;;
stop | status)
    rc=0
    "$here/browser.sh" "$1" || rc=1
    "$here/kube.sh" "$1" || rc=1
    "$here/postgres.sh" "$1" || rc=1
    "$here/slurm.sh" "$1" || rc=1
    "$here/sshd.sh" "$1" || rc=1
    exit "$rc"
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
