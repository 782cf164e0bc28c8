#!/usr/bin/env bash
# Install the system tools the tests talk to, when they are missing:
#   Debian: dcmtk (storescu, storescp, echoscu), orthanc (a real PACS as sender),
#           prometheus + promtool (scrape and rule checks), docker-compose (compose config
#           check), openssl (test certificates), util-linux and iproute2 (unshare and ip:
#           the read-only-root test, the receiver bench's private network),
#           docker.io + mmdebstrap (the container and compose tests start a private daemon
#           and build their base images from Debian packages: no registry is reachable),
#           prometheus-alertmanager (compose's monitoring profile stand-in)
#   Go:     helm, grpcurl and helm-docs, built once into $GOPATH/bin and reused afterwards.
# Idempotent: a second run with everything present does nothing and takes a second.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.16.4}"
GRPCURL_VERSION="${GRPCURL_VERSION:-v1.9.3}"
HELM_DOCS_VERSION="${HELM_DOCS_VERSION:-v1.14.2}"

log() { printf 'install-tools: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing_debs=()
command -v storescu >/dev/null 2>&1 || missing_debs+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing_debs+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing_debs+=(orthanc-dicomweb)
command -v promtool >/dev/null 2>&1 || missing_debs+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing_debs+=(docker-compose)
command -v openssl >/dev/null 2>&1 || missing_debs+=(openssl)
command -v curl >/dev/null 2>&1 || missing_debs+=(curl)
command -v unshare >/dev/null 2>&1 || missing_debs+=(util-linux)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing_debs+=(iproute2)
command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || missing_debs+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing_debs+=(mmdebstrap)
[ -x /usr/bin/prometheus-alertmanager ] || missing_debs+=(prometheus-alertmanager)

if [ "${#missing_debs[@]}" -gt 0 ]; then
    log "apt-get install ${missing_debs[*]}"
    # Keep the packages' own services (orthanc, prometheus) from starting on install:
    # tests run private instances on their own ports.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        added_policy=1
    fi
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing_debs[@]}" >/dev/null
    if [ "$added_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
fi

# Go may be installed without being on PATH (its tarball's default place).
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    PATH="$PATH:/usr/local/go/bin"
fi
gobin="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
go_tool() {  # name module version
    if command -v "$1" >/dev/null 2>&1 || [ -x "$gobin/$1" ]; then return; fi
    if ! command -v go >/dev/null 2>&1; then
        log "cannot build $1: Go is not installed (install Go, or put $1 on PATH)"
        exit 1
    fi
    log "go install $2@$3 (one-time build into $gobin)"
    go install "$2@$3"
}
go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"
go_tool helm-docs github.com/norwoodj/helm-docs/cmd/helm-docs "$HELM_DOCS_VERSION"

log "tools ready: storescu, Orthanc, prometheus, promtool, docker-compose, dockerd, mmdebstrap, alertmanager, helm, grpcurl, helm-docs ($gobin)"
