#!/usr/bin/env bash
# Make sure a Chromium browser is installed (from Debian) and print its path.
# Called by the test setup only for tests marked `browser`: Playwright drives this binary
# (executable_path), so no browser is ever downloaded from anywhere but the package
# registry. STAGECOACH_CHROMIUM names another binary to use instead.
set -euo pipefail

find_chromium() {
  local c
  for c in "${STAGECOACH_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}

if path=$(find_chromium); then echo "$path"; exit 0; fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "error: Chromium not found at /usr/bin/chromium and this user cannot install it." \
       "Fix: apt-get install -y chromium (as root), set STAGECOACH_CHROMIUM to a Chromium" \
       "binary, or run the suite without the browser tests: pytest -m 'not browser'" >&2
  exit 2
fi
echo "installing Chromium from Debian (first run only)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium fonts-liberation >&2
find_chromium
