#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (initdb, pg_ctl) are on this machine, for the throwaway
# clusters the tests and benchmarks start (connector/ops/local_postgres.py). Installs Debian's
# `postgresql` package with apt-get only when no initdb is found; it never starts a server itself.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "ensure-postgres: initdb not found and not root (no sudo): install Debian's postgresql" >&2
    exit 1
fi

echo "ensure-postgres: installing Debian's postgresql package" >&2
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
