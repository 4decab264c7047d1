#!/usr/bin/env bash
# `make bench` needs wrk (Debian package `wrk`): install it when missing and we are root,
# otherwise say how.
set -euo pipefail
command -v wrk >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: wrk not found: installing the Debian package (apt-get install -y wrk)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q wrk >/dev/null 2>&1; then
        apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null
    fi
    command -v wrk >/dev/null 2>&1 && exit 0
fi
echo "bench: wrk is not installed; install it with: sudo apt-get install -y wrk" >&2
exit 1
