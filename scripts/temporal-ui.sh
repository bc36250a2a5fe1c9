#!/usr/bin/env bash
# Provide Temporal's Web UI server and print its absolute path on stdout.
#
# `stagecoach up` runs it beside the dev server (started --headless) so the Web UI can
# be configured like the temporalio/ui container: the codec endpoint with cross-origin
# credentials, which the dev server's built-in UI has no flag for (docs/codec.md).
# The version is the one the Temporal CLI (scripts/temporal-cli.sh) embeds.
#
# Order of preference:
#   1. $TEMPORAL_UI_SERVER_PATH, if it names an executable;
#   2. the cache directory ($STAGECOACH_CACHE_DIR, default ~/.cache/stagecoach);
#   3. build it into that cache with `go install` from the Go module proxy.
# Idempotent: a second run finds the cached binary and builds nothing.
set -euo pipefail

version="${STAGECOACH_TEMPORAL_UI_VERSION:-v2.42.1}"
cache="${STAGECOACH_CACHE_DIR:-$HOME/.cache/stagecoach}"
target="$cache/temporal-ui-server/$version/bin/temporal-ui-server"

if [ -n "${TEMPORAL_UI_SERVER_PATH:-}" ]; then
  if [ -x "$TEMPORAL_UI_SERVER_PATH" ]; then echo "$TEMPORAL_UI_SERVER_PATH"; exit 0; fi
  echo "error: TEMPORAL_UI_SERVER_PATH=$TEMPORAL_UI_SERVER_PATH is not an executable file;" \
       "fix the path or unset it to use the cache" >&2
  exit 2
fi
if [ -x "$target" ]; then echo "$target"; exit 0; fi

if ! command -v go >/dev/null 2>&1; then
  cat >&2 <<MSG
error: no Temporal UI server found and no Go toolchain to build one.
  Fix one of: set TEMPORAL_UI_SERVER_PATH=/path/to/ui-server, or install Go
  (https://go.dev/dl) so this script can run
  'go install github.com/temporalio/ui-server/v2/cmd/server@$version' into $cache.
  Without it, 'stagecoach up' serves the dev server's own Web UI (docs/codec.md).
MSG
  exit 2
fi

echo "building the Temporal UI server $version into $target (first run only)..." >&2
mkdir -p "$(dirname "$target")"
tmp_bin="$(mktemp -d "$cache/temporal-ui-server/build.XXXXXX")"
trap 'rm -rf "$tmp_bin"' EXIT
GOBIN="$tmp_bin" GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install "github.com/temporalio/ui-server/v2/cmd/server@$version" >&2
mv "$tmp_bin/server" "$target"
echo "$target"
