#!/bin/sh
# A client library the tests run in a venv of its own under .tools/ (git-ignored), installed only
# when missing or pinned differently. For clients whose dependencies can't share the server's venv:
# KServe's Python package pins protobuf below 7, which the server's grpcio-health-checking can't use.
# Usage: tools/ensure-python-client.sh PYTHON NAME REQUIREMENT...
#   tools/ensure-python-client.sh python3.11 kserve kserve==0.21.0   -> .tools/kserve-venv
set -eu

python=$1
name=$2
shift 2
venv="$(cd "$(dirname "$0")/.." && pwd)/.tools/$name-venv"
marker="$venv/.installed"
[ -f "$marker" ] && [ "$(cat "$marker")" = "$*" ] && exit 0

echo "ensure-python-client: installing $* into $venv"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2068  # one word per requirement
"$venv/bin/python" -m pip install --quiet $@
echo "$*" > "$marker"
