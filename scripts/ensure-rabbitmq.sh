#!/usr/bin/env bash
# Makes sure Debian's RabbitMQ server is on this machine, for the throwaway nodes the notification
# tests and benchmarks start (connector/ops/local_rabbit.py). Installs the `rabbitmq-server`
# package with apt-get only when it is missing; it never starts a server itself (the package's
# own service stays as the machine's policy leaves it; our nodes use other ports).
set -euo pipefail

if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "ensure-rabbitmq: rabbitmq-server not found and not root (no sudo): install Debian's rabbitmq-server" >&2
    exit 1
fi

echo "ensure-rabbitmq: installing Debian's rabbitmq-server package" >&2
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends rabbitmq-server
