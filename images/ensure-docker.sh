#!/usr/bin/env bash
# Makes a Docker daemon available for the container tests, where this machine allows it.
#
#   images/ensure-docker.sh
#
# As root, installs what the container tests use from Debian when missing: docker.io,
# debootstrap (builds the base image offline) and docker-registry (the CNCF distribution server,
# which the push test starts on 127.0.0.1). The packages' own services are not started: their
# default configurations listen on every interface and use a Docker bridge. Then, unless a
# daemon already answers, starts dockerd in the background with --bridge=none (containers and
# builds here use host networking: no Docker bridge, so no traffic to a private address range),
# logging to $DOCKERD_LOG (default /var/log/dockerd.log). Exits 1 with the reason when Docker
# cannot run; the container tests then skip themselves, saying the same.
set -euo pipefail

log=${DOCKERD_LOG:-/var/log/dockerd.log}

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-registry >/dev/null || missing+=(docker-registry)

if [[ ${#missing[@]} -gt 0 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "docker: installing ${missing[*]}"
    # Debian's policy-rc.d protocol: exit status 101 forbids every service start that a
    # package's maintainer scripts ask for (invoke-rc.d and deb-systemd-invoke both obey it).
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=$policy
        trap 'rm -f "$made_policy"' EXIT
    fi
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        "${missing[@]}"; } >/tmp/ensure-docker-apt.log 2>&1; then
        tail -5 /tmp/ensure-docker-apt.log >&2
        echo "docker: apt-get could not install ${missing[*]} (log: /tmp/ensure-docker-apt.log)" >&2
        exit 1
    fi
    if [[ -n $made_policy ]]; then
        rm -f "$made_policy"
        trap - EXIT
    fi
    missing=()
fi

if docker info >/dev/null 2>&1; then
    echo "docker: daemon running"
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "docker: missing ${missing[*]} (as root, this script installs them with apt-get)" >&2
    fi
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "docker: no daemon answers, and starting one needs root" >&2
    exit 1
fi
if ! command -v dockerd >/dev/null; then
    echo "docker: dockerd is not installed, and apt-get is not available to install it" >&2
    exit 1
fi
# Whether the process a pid file names runs: a zombie does not.
runs() {
    [[ -f $1 ]] && ps -o stat= -p "$(cat "$1")" 2>/dev/null | grep -qv '^Z'
}
# Only a live dockerd counts. One that crashed stays in the process table as a zombie where
# nothing reaps orphans (the PID 1 of some CI machines): pgrep still lists it, and while /proc
# does, a new dockerd refuses the pid file it left ("pid file found, ensure docker is not
# running"). The containerd it ran leaves a pid file too, which a new dockerd takes for a
# containerd to reuse and waits on ("timeout waiting for containerd to start").
if [[ -z $(ps -C dockerd -o stat= | grep -v '^Z' || true) ]]; then
    rm -f /var/run/docker.pid
    runs /var/run/docker/containerd/containerd.pid || rm -f /var/run/docker/containerd/containerd.pid
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
