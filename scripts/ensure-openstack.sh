#!/usr/bin/env bash
# Makes sure real Keystone and cinder-api can be started here, and prints the venv's bin
# directory: the pinned releases and gunicorn (their WSGI server) are installed once from
# PyPI into a venv of their own under $XDG_CACHE_HOME/cascade-connector, outside the
# repository, so that OpenStack's pins never meet the project's. connector/dev/local_openstack.py
# starts and stops them; tests/integration/conftest.py keeps one pair for a test session.
set -euo pipefail

keystone="30.0.0"
cinder="29.0.0"
gunicorn="23.0.0"
python="${PYTHON:-python3}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cascade-connector"
venv="$cache/openstack-venv-keystone-$keystone-cinder-$cinder"

if [ ! -f "$venv/.complete" ]; then
    echo "ensure-openstack: installing keystone $keystone, cinder $cinder, gunicorn $gunicorn (once)" >&2
    started=$(date +%s)
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >&2
    "$venv/bin/pip" install -q "keystone==$keystone" "cinder==$cinder" "gunicorn==$gunicorn" >&2
    "$venv/bin/python" -c 'import keystone, cinder, keystonemiddleware, gunicorn' >&2
    touch "$venv/.complete"
    echo "ensure-openstack: installed in $(( $(date +%s) - started )) s" >&2
fi
echo "$venv/bin"
