#!/usr/bin/env bash
# Makes sure real Keystone, cinder-api and neutron-server can be started here, and prints the
# bin directories of their venvs (Keystone's and Cinder's first, Neutron's second line): the
# pinned releases and gunicorn (their WSGI server) are installed once from PyPI into venvs of
# their own under $XDG_CACHE_HOME/cascade-connector, outside the repository, so that OpenStack's
# pins never meet the project's. Neutron has a venv of its own: its release's requirements are
# not checked against Keystone's and Cinder's, and one venv per service keeps a bump of one from
# breaking another. connector/dev/local_openstack.py starts and stops them;
# tests/integration/conftest.py keeps one set for a test session.
set -euo pipefail

keystone="30.0.0"
cinder="29.0.0"
neutron="29.0.0"
gunicorn="23.0.0"
# neutron-server's PostgreSQL driver (oslo.db's default for postgresql:// URLs).
psycopg2="2.9.10"
python="${PYTHON:-python3}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cascade-connector"

# ensure VENV WHAT PACKAGE... : install PACKAGEs into VENV unless it is complete already.
ensure() {
    local venv="$1" what="$2" started
    shift 2
    if [ ! -f "$venv/.complete" ]; then
        echo "ensure-openstack: installing $what, gunicorn $gunicorn (once)" >&2
        started=$(date +%s)
        rm -rf "$venv"
        mkdir -p "$cache"
        "$python" -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip >&2
        "$venv/bin/pip" install -q "$@" "gunicorn==$gunicorn" >&2
        touch "$venv/.complete"
        echo "ensure-openstack: installed $what in $(( $(date +%s) - started )) s" >&2
    fi
}

main="$cache/openstack-venv-keystone-$keystone-cinder-$cinder"
ensure "$main" "keystone $keystone, cinder $cinder" "keystone==$keystone" "cinder==$cinder"
"$main/bin/python" -c 'import keystone, cinder, keystonemiddleware, gunicorn' >&2
network="$cache/openstack-venv-neutron-$neutron"
ensure "$network" "neutron $neutron" "neutron==$neutron" "psycopg2-binary==$psycopg2"
"$network/bin/python" -c 'import neutron, keystonemiddleware, psycopg2, gunicorn' >&2
echo "$main/bin"
echo "$network/bin"
