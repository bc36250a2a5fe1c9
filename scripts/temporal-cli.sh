#!/usr/bin/env bash
# Provide the Temporal CLI and print its absolute path on stdout.
#
# Order of preference (ARCHITECTURE.md, "Running it"):
#   1. $TEMPORAL_CLI_PATH, if it names an executable;
#   2. `temporal` on PATH;
#   3. the cache directory ($STAGECOACH_CACHE_DIR, default ~/.cache/stagecoach);
#   4. build it into that cache with `go install` from the Go module proxy.
# Idempotent: a second run finds the cached binary and builds nothing.
set -euo pipefail

version="${STAGECOACH_TEMPORAL_CLI_VERSION:-v1.5.1}"
cache="${STAGECOACH_CACHE_DIR:-$HOME/.cache/stagecoach}"
target="$cache/temporal-cli/$version/bin/temporal"

if [ -n "${TEMPORAL_CLI_PATH:-}" ]; then
  if [ -x "$TEMPORAL_CLI_PATH" ]; then echo "$TEMPORAL_CLI_PATH"; exit 0; fi
  echo "error: TEMPORAL_CLI_PATH=$TEMPORAL_CLI_PATH is not an executable file;" \
       "fix the path or unset it to use PATH or the cache" >&2
  exit 2
fi
if on_path=$(command -v temporal 2>/dev/null); then echo "$on_path"; exit 0; fi
if [ -x "$target" ]; then echo "$target"; exit 0; fi

if ! command -v go >/dev/null 2>&1; then
  cat >&2 <<MSG
error: no Temporal CLI found and no Go toolchain to build one.
  Fix one of: set TEMPORAL_CLI_PATH=/path/to/temporal, put 'temporal' on PATH,
  or install Go (https://go.dev/dl) so this script can run
  'go install github.com/temporalio/cli/cmd/temporal@$version' into $cache.
MSG
  exit 2
fi

echo "building the Temporal CLI $version into $target (first run only, a few minutes)..." >&2
mkdir -p "$(dirname "$target")"
tmp_bin="$(mktemp -d "$cache/temporal-cli/build.XXXXXX")"
trap 'rm -rf "$tmp_bin"' EXIT
# GOBIN into a scratch dir, then an atomic rename: an interrupted build never leaves
# a half-written binary at the cached path.
GOBIN="$tmp_bin" GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install "github.com/temporalio/cli/cmd/temporal@$version" >&2
mv "$tmp_bin/temporal" "$target"
echo "$target"
