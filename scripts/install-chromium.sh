#!/usr/bin/env bash
# The dashboard's browser test drives Debian's chromium through Playwright (never a downloaded
# browser). Install it when missing and we may (root, as on a fresh CI machine); otherwise say
# so: the test then skips locally and fails under CI=true.
set -euo pipefail
if command -v chromium >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
else
    echo "chromium not found (install it with: sudo apt-get install chromium);" \
         "the browser test will skip (under CI it fails)"
fi
