#!/usr/bin/env bash
# Builds the kube-apiserver that the Kubernetes tests run on 127.0.0.1, from Debian's
# `kubernetes` source package, and caches it outside the clone:
#
#   bash tests/apiserver/build.sh                # build unless cached; install etcd
#   bash tests/apiserver/build.sh --print-path   # where the binary is (or will be); no build
#
# No package registry reachable here ships a kube-apiserver binary, but Debian's source package
# holds the whole v1.20.2 tree with its dependencies vendored. As root, this script installs what
# it needs with apt-get (the Go 1.19 toolchain, etcd-server, rsync; a deb-src entry derived from
# the machine's own Debian sources), unpacks the source, builds cmd/kube-apiserver and stores it
# in $CACHE_ROOT/kube-apiserver-<Debian version>/ (default ~/.cache/kfp-lightning). When that
# binary exists it only makes sure etcd is installed. The Go build cache is kept beside it, so a
# rebuild takes under a minute instead of about five.
set -euo pipefail

# The source package, pinned: its version names the cache directory.
PACKAGE=kubernetes
VERSION=1.20.5+really1.20.2-1.1+deb12u1
GIT_VERSION=v1.20.2
GO_PACKAGE=golang-1.19-go
GOROOT_DIR=/usr/lib/go-1.19

CACHE_ROOT=${KFP_LIGHTNING_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kfp-lightning}
TARGET_DIR=$CACHE_ROOT/kube-apiserver-$VERSION
BINARY=$TARGET_DIR/kube-apiserver

if [[ ${1:-} == --print-path ]]; then
    echo "$BINARY"
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--print-path]" >&2
    exit 2
fi

say() { echo "kube-apiserver: $*"; }
die() {
    echo "kube-apiserver: $*" >&2
    exit 1
}

# Installs Debian packages that are missing, with no service started by their maintainer
# scripts (etcd-server's would listen on the default ports; the tests start their own etcd).
install_packages() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$package")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) == 0 ]] || die "missing Debian packages ${missing[*]}: run this script as root"
    say "installing ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d made_policy=
    if [[ ! -e $policy ]]; then
        # Debian's policy-rc.d protocol: exit status 101 forbids every service start.
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=$policy
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/tmp/kube-apiserver-apt.log 2>&1 || status=$?
    [[ -n $made_policy ]] && rm -f "$made_policy"
    if [[ $status -ne 0 ]]; then
        tail -5 /tmp/kube-apiserver-apt.log >&2
        die "apt-get could not install ${missing[*]} (log: /tmp/kube-apiserver-apt.log)"
    fi
}

# Writes deb-src entries mirroring the machine's Debian deb entries (deb822 *.sources files and
# one-line sources.list files), so `apt-get source` reaches the archive the machine already uses.
add_deb_src() {
    local list=/etc/apt/sources.list.d/kfp-lightning-deb-src.sources
    [[ -e $list ]] && return 0
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "/etc/os-release names no Debian release (VERSION_CODENAME)"
    local stanzas=""
    shopt -s nullglob
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        # Each stanza of Types: deb for this release becomes the same stanza with deb-src.
        stanzas+=$(awk -v codename="$codename" '
            function flush() {
                if (is_deb && release) { gsub(/Types:[^\n]*/, "Types: deb-src", block); print block "\n" }
                block = ""; is_deb = 0; release = 0
            }
            /^[ \t]*$/ { flush(); next }
            /^#/ { next }
            /^Types:/ { if ($0 ~ /(^|[ \t])deb([ \t]|$)/) is_deb = 1 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == codename || index($i, codename "-") == 1) release = 1 }
            /^Enabled:[ \t]*no/ { is_deb = 0 }
            { block = block $0 "\n" }
            END { flush() }
        ' "$file")$'\n'
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -e $file ]] || continue
        # One-line form: "deb [options] URI suite components..." -> the deb822 equivalent.
        stanzas+=$(awk -v codename="$codename" '
            $1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) != codename && index($(i + 1), codename "-") != 1) next
                comps = ""
                for (j = i + 2; j <= NF; j++) comps = comps " " $j
                print "Types: deb-src\nURIs: " $i "\nSuites: " $(i + 1) "\nComponents:" comps "\n"
            }
        ' "$file")$'\n'
    done
    shopt -u nullglob
    [[ -n ${stanzas//[[:space:]]/} ]] || die "no Debian '$codename' entry in /etc/apt to derive deb-src from"
    [[ $(id -u) == 0 ]] || die "adding a deb-src entry needs root"
    say "adding deb-src entries for '$codename' ($list)"
    printf '%s\n' "$stanzas" >"$list"
}

build() {
    local work=$WORK
    rm -rf "$work"
    mkdir -p "$work/source" "$work/gopath/src/k8s.io"

    say "downloading the source package $PACKAGE=$VERSION"
    (cd "$work/source" && apt-get source -qq --download-only "$PACKAGE=$VERSION") \
        >"$work/apt-source.log" 2>&1 || {
        tail -5 "$work/apt-source.log" >&2
        die "apt-get source $PACKAGE=$VERSION failed"
    }
    (cd "$work/source" && dpkg-source --no-check -x ./*.dsc tree) >"$work/dpkg-source.log" 2>&1 || {
        tail -5 "$work/dpkg-source.log" >&2
        die "dpkg-source could not unpack the source package"
    }
    local tree=$work/source/tree
    # The tree predates Go modules as Debian builds it: a GOPATH with the package at its import path.
    ln -s "$tree" "$work/gopath/src/k8s.io/kubernetes"

    # reflect2 1.0.1 (vendored) reads runtime internals that changed in Go 1.18: the first
    # request for a custom object crashes the server. Debian's 1.0.2 is the upstream fix.
    local reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [[ -d $reflect2 ]] || die "$reflect2 missing (golang-github-modern-go-reflect2-dev)"
    rm -rf "$tree/vendor/github.com/modern-go/reflect2"
    cp -r "$reflect2" "$tree/vendor/github.com/modern-go/reflect2"

    export GOPATH=$work/gopath GO111MODULE=off GOFLAGS= CGO_ENABLED=0
    export GOCACHE=$CACHE_ROOT/go-build-cache
    export PATH=$GOROOT_DIR/bin:$PATH
    cd "$GOPATH/src/k8s.io/kubernetes"
    say "building with $(go version | cut -d' ' -f3) (about 5 minutes on 2 cores, under 1 warm)"
    # The generated OpenAPI definitions are not in the source tarball; the Makefile makes them.
    make gen_openapi >"$work/gen-openapi.log" 2>&1 || {
        tail -20 "$work/gen-openapi.log" >&2
        die "make gen_openapi failed (log above)"
    }
    # What --version and the /version endpoint report, in both packages that hold it, as
    # hack/lib/version.sh sets them (in GOPATH mode, vendored paths are under the tree's own).
    local ldflags="-s -w" package
    for package in client-go/pkg/version component-base/version; do
        package=k8s.io/kubernetes/vendor/k8s.io/$package
        ldflags+=" -X $package.gitVersion=$GIT_VERSION -X $package.gitMajor=1"
        ldflags+=" -X $package.gitMinor=20 -X $package.gitTreeState=clean"
    done
    go build -trimpath -ldflags "$ldflags" -o "$work/kube-apiserver" ./cmd/kube-apiserver \
        >"$work/go-build.log" 2>&1 || {
        tail -20 "$work/go-build.log" >&2
        die "go build ./cmd/kube-apiserver failed (log above)"
    }
    "$work/kube-apiserver" --version >/dev/null || die "the built binary does not run"
    mkdir -p "$TARGET_DIR"
    mv "$work/kube-apiserver" "$BINARY.partial"
    mv "$BINARY.partial" "$BINARY"
    say "built $("$BINARY" --version) -> $BINARY"
}

mkdir -p "$CACHE_ROOT"
# One build at a time per cache, whoever else runs this script.
exec 9>"$CACHE_ROOT/.build.lock"
flock 9

if [[ -x $BINARY ]]; then
    install_packages etcd-server
    say "cached: $BINARY"
    exit 0
fi
command -v apt-get >/dev/null || die "no apt-get: build needs Debian (see this script's header)"
add_deb_src
[[ $(id -u) == 0 ]] && { apt-get update -qq >/tmp/kube-apiserver-apt.log 2>&1 ||
    die "apt-get update failed (log: /tmp/kube-apiserver-apt.log)"; }
install_packages "$GO_PACKAGE" golang-github-modern-go-reflect2-dev dpkg-dev rsync make \
    etcd-server
# The unpacked tree and its build (about 400 MB) go once the binary is cached or the build fails.
WORK=$CACHE_ROOT/build-$VERSION
trap 'rm -rf "$WORK"' EXIT
build
say "done in ${SECONDS}s (packages, source and build)"
