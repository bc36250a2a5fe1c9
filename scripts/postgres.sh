#!/usr/bin/env bash
# Make sure a PostgreSQL server is installed (from Debian) and print its bin directory.
# Called by the test setup only for tests marked `postgres`; the fixture then starts a
# throwaway cluster on a free loopback port and removes it afterwards.
set -euo pipefail

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then echo "$d"; return 0; fi
  done
  return 1
}

if bindir=$(find_bindir); then echo "$bindir"; exit 0; fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "error: PostgreSQL server binaries not found under /usr/lib/postgresql and this" \
       "user cannot install them. Fix: apt-get install -y postgresql (as root), or run" \
       "the suite without the postgres tests: pytest -m 'not postgres'" >&2
  exit 2
fi
echo "installing PostgreSQL from Debian (first run only)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends postgresql >&2
# The package starts a system cluster on 5432; the tests use their own, so stop it.
if command -v pg_ctlcluster >/dev/null 2>&1; then
  for c in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do
    pg_ctlcluster ${c%/*} ${c#*/} stop >/dev/null 2>&1 || true
  done
fi
find_bindir
