#!/usr/bin/env bash
# Installs everything the project needs from its own files, then fetches MNIST once.
set -euo pipefail
cd "$(dirname "$0")"

missing=""
for package in $(cat apt-packages.txt); do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $package"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

pip_log=$(mktemp)
if ! python3 -m pip install -q -r requirements.txt >"$pip_log" 2>&1; then
    cat "$pip_log"; echo "setup: pip install -r requirements.txt failed (log above)"; exit 1
fi
rm -f "$pip_log"
python3 -m utils.data
