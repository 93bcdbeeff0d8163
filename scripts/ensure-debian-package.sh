#!/usr/bin/env bash
# Makes sure a server from one of Debian's packages is on this machine, for the throwaway servers
# the tests and benchmarks start (connector/dev/local_postgres.py, local_rabbit.py). Installs
# PACKAGE with apt-get only when no file matches GLOB; it never starts a server itself (a
# package's own service stays as the machine's policy leaves it; our servers use other ports).
#
#   scripts/ensure-debian-package.sh postgresql '/usr/lib/postgresql/*/bin/initdb'
#   scripts/ensure-debian-package.sh rabbitmq-server /usr/lib/rabbitmq/bin/rabbitmq-server
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 PACKAGE GLOB" >&2
    exit 2
fi
package=$1
glob=$2

if compgen -G "$glob" >/dev/null; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "ensure-debian-package: $glob not found and not root (no sudo): install Debian's $package" >&2
    exit 1
fi

echo "ensure-debian-package: installing Debian's $package package" >&2
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$package"
