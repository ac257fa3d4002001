#!/bin/sh
# Python packages the tests use that can't share the server's venv, under .tools/ (git-ignored),
# installed only when missing or pinned differently. Two kinds:
#   a client in a venv of its own: KServe's Python package pins protobuf below 7, which the
#     server's grpcio-health-checking can't use.
#     tools/ensure-python-client.sh python3.11 kserve kserve==0.21.0        -> .tools/kserve-venv
#   --path: a folder of packages for the servers' PYTHONPATH (a Python model's own libraries), for
#     libraries that would slow every server's start if installed in the venv (TensorFlow's import
#     loads Keras, which imports scikit-learn whenever it is installed: 0.8 s of every start).
#     Installed without dependencies (a second numpy would shadow the venv's): list every one,
#     at versions the venv's numpy can run.
#     tools/ensure-python-client.sh --path .venv/bin/python sklearn scikit-learn==1.9.1 scipy==...
#                                                                            -> .tools/sklearn
# Usage: tools/ensure-python-client.sh [--path] PYTHON NAME REQUIREMENT...
set -eu

path_only=false
if [ "$1" = "--path" ]; then
    path_only=true
    shift
fi
python=$1
name=$2
shift 2
tools="$(cd "$(dirname "$0")/.." && pwd)/.tools"
if $path_only; then target="$tools/$name"; else target="$tools/$name-venv"; fi
marker="$target/.installed"
[ -f "$marker" ] && [ "$(cat "$marker")" = "$*" ] && exit 0

echo "ensure-python-client: installing $* into $target"
rm -rf "$target"
if $path_only; then
    # shellcheck disable=SC2068  # one word per requirement
    "$python" -m pip install --quiet --no-deps --target "$target" $@
    # Every dependency listed? (pip check sees the folder's packages beside the venv's.)
    PYTHONPATH="$target" "$python" -m pip check || { rm -rf "$target"; exit 1; }
else
    "$python" -m venv "$target"
    "$target/bin/python" -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2068
    "$target/bin/python" -m pip install --quiet $@
fi
echo "$*" > "$marker"
