#!/usr/bin/env bash
# Provide the real Temporal server and its SQL schema tool; print the directory holding
# both (`temporal-server`, `temporal-sql-tool`) on stdout.
#
# These are the multi-process cluster's binaries (docs/operations/cluster.md): the same
# server that the CLI's dev server embeds (CLI v1.5.1 embeds server v1.29.1), run on
# PostgreSQL with a config kept in deploy/temporal/.
#
# Order of preference:
#   1. $TEMPORAL_SERVER_PATH, if it names a directory holding both executables;
#   2. the cache directory ($STAGECOACH_CACHE_DIR, default ~/.cache/stagecoach);
#   3. build both into that cache with `go install` from the Go module proxy.
# Idempotent: a second run finds the cached binaries and builds nothing.
set -euo pipefail

version="${STAGECOACH_TEMPORAL_SERVER_VERSION:-v1.29.1}"
cache="${STAGECOACH_CACHE_DIR:-$HOME/.cache/stagecoach}"
bin="$cache/temporal-server/$version/bin"

if [ -n "${TEMPORAL_SERVER_PATH:-}" ]; then
  if [ -x "$TEMPORAL_SERVER_PATH/temporal-server" ] && [ -x "$TEMPORAL_SERVER_PATH/temporal-sql-tool" ]; then
    echo "$TEMPORAL_SERVER_PATH"; exit 0
  fi
  echo "error: TEMPORAL_SERVER_PATH=$TEMPORAL_SERVER_PATH is not a directory holding the" \
       "executables temporal-server and temporal-sql-tool;" \
       "fix the path or unset it to use the cache" >&2
  exit 2
fi
if [ -x "$bin/temporal-server" ] && [ -x "$bin/temporal-sql-tool" ]; then echo "$bin"; exit 0; fi

if ! command -v go >/dev/null 2>&1; then
  cat >&2 <<MSG
error: no Temporal server found and no Go toolchain to build one.
  Fix one of: set TEMPORAL_SERVER_PATH=/dir/holding/temporal-server-and-temporal-sql-tool,
  or install Go (https://go.dev/dl) so this script can run
  'go install go.temporal.io/server/cmd/server@$version go.temporal.io/server/cmd/tools/sql@$version'
  into $bin.
MSG
  exit 2
fi

echo "building the Temporal server and SQL tool $version into $bin (first run only, several minutes)..." >&2
mkdir -p "$cache/temporal-server/$version"
tmp_bin="$(mktemp -d "$cache/temporal-server/$version/build.XXXXXX")"
trap 'rm -rf "$tmp_bin"' EXIT
# One `go install` for both commands: they share almost every package, so the second
# costs little. CGO off gives static binaries, as the server's own release builds are.
GOBIN="$tmp_bin/bin" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install "go.temporal.io/server/cmd/server@$version" \
             "go.temporal.io/server/cmd/tools/sql@$version" >&2
mv "$tmp_bin/bin/server" "$tmp_bin/bin/temporal-server"
mv "$tmp_bin/bin/sql" "$tmp_bin/bin/temporal-sql-tool"
# An atomic rename of the whole directory: an interrupted build never leaves one
# binary without the other, or a half-written one, at the cached path.
rm -rf "$bin"
mv "$tmp_bin/bin" "$bin"
echo "$bin"
