#!/usr/bin/env bash
# Makes sure the tools that validate deploy/ are on this machine, each from its own ecosystem's
# registry, and prints where they are as NAME=PATH lines (tests/deploy reads them). Everything is
# cached under $XDG_CACHE_HOME/cascade-connector/deploy-tools, so a warm run only checks stamps.
#  - promtool and the prometheus server, from Debian's prometheus package: the .deb is fetched
#    with `apt-get download` and only the two binaries are unpacked (installing the package would
#    start a Prometheus service here; the alert tests start throwaway servers of their own);
#  - systemd-analyze, from Debian's systemd package (installed when missing);
#  - deploycheck (tests/deploy/deploycheck): compose-go and kustomize's API from the Go module
#    proxy, built with the machine's Go, rebuilt when its sources change;
#  - the PodMonitor CRD schema, from the prometheus-operator Go module (its example CRDs).
# The PyPI validators (kubernetes-validate, dockerfile) come with the dev extra in pyproject.toml.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cascade-connector/deploy-tools"
prometheus_operator="v0.85.0"
mkdir -p "$cache/bin"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    sudo=(false)
fi

apt_install() {
    echo "ensure-deploy-tools: installing Debian's $*" >&2
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
        install -y -q --no-install-recommends "$@" >&2
}

if [ ! -x "$cache/bin/promtool" ] || [ ! -x "$cache/bin/prometheus" ]; then
    echo "ensure-deploy-tools: fetching promtool and prometheus from Debian's prometheus package" >&2
    download() { (cd "$tmp" && apt-get -q -o APT::Sandbox::User=root download prometheus >&2); }
    download || { "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q >&2 && download; }
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/prometheus"
    install -m 0755 "$tmp/prometheus/usr/bin/promtool" "$cache/bin/promtool"
    install -m 0755 "$tmp/prometheus/usr/bin/prometheus" "$cache/bin/prometheus"
fi

if ! command -v systemd-analyze >/dev/null; then
    apt_install systemd
fi

if ! command -v go >/dev/null; then
    echo "ensure-deploy-tools: no Go toolchain (go) on PATH; it builds tests/deploy/deploycheck" >&2
    exit 1
fi
# GOTOOLCHAIN=local: build with this Go or fail, never fetch another toolchain.
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly
src="$root/tests/deploy/deploycheck"
stamp="$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -d' ' -f1)"
if [ ! -x "$cache/bin/deploycheck" ] || [ "$(cat "$cache/deploycheck.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "ensure-deploy-tools: building deploycheck (compose-go, kustomize) with $(go version)" >&2
    (cd "$src" && go build -o "$cache/bin/deploycheck" .) >&2
    echo "$stamp" >"$cache/deploycheck.stamp"
fi

crd="$cache/podmonitors-$prometheus_operator.yaml"
if [ ! -f "$crd" ]; then
    echo "ensure-deploy-tools: fetching the prometheus-operator $prometheus_operator CRDs" >&2
    dir="$(cd "$tmp" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$prometheus_operator" \
        | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" "$crd.part"
    mv "$crd.part" "$crd"
fi

echo "promtool=$cache/bin/promtool"
echo "prometheus=$cache/bin/prometheus"
echo "systemd-analyze=$(command -v systemd-analyze)"
echo "deploycheck=$cache/bin/deploycheck"
echo "podmonitor-crd=$crd"
