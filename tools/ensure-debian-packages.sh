#!/bin/sh
# Install Debian packages the tests or benchmarks run, only when they are missing.
# Usage: tools/ensure-debian-packages.sh PACKAGE[:COMMAND] ...
#   chromium        present when `command -v chromium` finds it
#   nghttp2-client:h2load   present when `command -v h2load` finds it
#   fonts-dejavu-core:-     no command: present when dpkg lists the package as installed
# Missing ones are installed with apt-get (as root, or through sudo); nothing runs when all are there.
set -eu

missing=""
for spec in "$@"; do
    package=${spec%%:*}
    command=${spec#*:}
    [ "$command" = "$spec" ] && command=$package
    if [ "$command" = "-" ]; then
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" && continue
    else
        command -v "$command" >/dev/null 2>&1 && continue
    fi
    missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-debian-packages: missing:$missing, and this is not a Debian-like system (no apt-get): install them by hand" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "ensure-debian-packages: missing:$missing; run as root or install sudo" >&2
        exit 1
    fi
fi
echo "ensure-debian-packages: installing$missing"
$sudo apt-get update -q
# shellcheck disable=SC2086  # one word per package
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
