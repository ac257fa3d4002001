#!/bin/sh
# Install npm packages the tests run into .tools/npm (git-ignored), only when they are missing.
# Usage: tools/ensure-npm-tools.sh PACKAGE@VERSION:COMMAND ...
#   azurite@3:azurite-blob   present when .tools/npm/node_modules/.bin/azurite-blob exists
# Nothing runs when all are there; otherwise the missing ones are installed with npm in one go.
set -eu

prefix="$(cd "$(dirname "$0")/.." && pwd)/.tools/npm"
missing=""
for spec in "$@"; do
    package=${spec%%:*}
    command=${spec#*:}
    [ -x "$prefix/node_modules/.bin/$command" ] || missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if ! command -v npm >/dev/null 2>&1; then
    echo "ensure-npm-tools: missing:$missing, and npm is not installed (apt-get install nodejs npm)" >&2
    exit 1
fi
echo "ensure-npm-tools: installing$missing into $prefix"
mkdir -p "$prefix"
# shellcheck disable=SC2086  # one word per package
npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$prefix" $missing
