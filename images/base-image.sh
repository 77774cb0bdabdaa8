#!/usr/bin/env bash
# Builds a local stand-in for the Dockerfiles' default base image, for machines that reach the
# Debian archive but no container registry: a debootstrap "minbase" of Debian bookworm, trimmed
# like the official debian:bookworm-*-slim images, imported into Docker.
#
#   images/base-image.sh [IMAGE]        (default IMAGE: localhost/debian:bookworm-slim-debootstrap)
#
# An existing IMAGE is kept (set REBUILD=1 to replace it). DEBIAN_MIRROR overrides the archive
# (default http://deb.debian.org/debian); DOCKER names the docker command. Needs root and
# debootstrap.
set -euo pipefail

image=${1:-localhost/debian:bookworm-slim-debootstrap}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}
suite=bookworm

if [[ ${REBUILD:-0} != 1 ]] && $docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image already present (REBUILD=1 rebuilds it)"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "error: images/base-image.sh must run as root (debootstrap creates device nodes and owners)" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
fi

rootfs=$(mktemp -d /var/tmp/kfp-lightning-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap $suite (minbase) from $mirror"
debootstrap --variant=minbase --components=main "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -20 "$rootfs.log" >&2
    echo "error: debootstrap failed (full log: $rootfs.log)" >&2
    exit 1
}
rm -f "$rootfs.log"

# The same sources as the official image: the release, its updates and its security archive.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES

# As in the official image: apt keeps no downloaded packages or caches in image layers.
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CLEAN'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CLEAN

# "slim": no documentation, manuals or translations, now and for packages installed later.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
SLIM
find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{groff,info,lintian/overrides,man}/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
rm -rf "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.cache
: >"$rootfs/etc/machine-id"

tar --numeric-owner --xattrs -C "$rootfs" -c . | $docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $suite $mirror" \
    - "$image" >/dev/null
echo "base image $image built"
