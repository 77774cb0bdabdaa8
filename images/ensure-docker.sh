#!/usr/bin/env bash
# Makes a Docker daemon available for the container test, where this machine allows it.
#
#   images/ensure-docker.sh
#
# A daemon that already answers is used as it is. Otherwise, as root: installs Debian's docker.io
# (and debootstrap, which builds the base image offline) when missing, then starts dockerd in the
# background with --bridge=none (containers and builds here use host networking: no Docker
# bridge, so no traffic to a private address range), logging to $DOCKERD_LOG
# (default /var/log/dockerd.log). Exits 1 with the reason when Docker cannot run; the container
# test then skips itself, saying the same.
set -euo pipefail

log=${DOCKERD_LOG:-/var/log/dockerd.log}

if docker info >/dev/null 2>&1; then
    echo "docker: daemon running"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "docker: no daemon answers, and starting one needs root" >&2
    exit 1
fi
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    if ! command -v apt-get >/dev/null; then
        echo "docker: not installed, and apt-get is not available to install it" >&2
        exit 1
    fi
    echo "docker: installing docker.io and debootstrap"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        docker.io debootstrap; } >/tmp/ensure-docker-apt.log 2>&1; then
        tail -5 /tmp/ensure-docker-apt.log >&2
        echo "docker: apt-get could not install docker.io (log: /tmp/ensure-docker-apt.log)" >&2
        exit 1
    fi
fi
if ! pgrep -x dockerd >/dev/null; then
    mkdir -p "$(dirname "$log")"
    echo "docker: starting dockerd --bridge=none (log: $log)"
    nohup dockerd --bridge=none >"$log" 2>&1 &
fi
for _ in $(seq 60); do
    if docker info >/dev/null 2>&1; then
        echo "docker: daemon running"
        exit 0
    fi
    sleep 1
done
tail -5 "$log" >&2 || true
echo "docker: dockerd did not come up within 60s (log: $log)" >&2
exit 1
