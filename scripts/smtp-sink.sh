#!/usr/bin/env bash
# Build the Go SMTP peer of the email benchmark (tests/peers/smtpsink) and print the
# binary's absolute path on stdout.
#
# The binary lives in the cache directory ($STAGECOACH_CACHE_DIR, default
# ~/.cache/stagecoach) under a hash of go.mod, go.sum and main.go, so an edit to the
# source builds a new one and a second run with the same source builds nothing. The
# modules come from the Go module proxy at the versions go.sum pins.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../tests/peers/smtpsink"
src="$(cd "$src" && pwd)"
cache="${STAGECOACH_CACHE_DIR:-$HOME/.cache/stagecoach}"

if command -v sha256sum >/dev/null 2>&1; then
  digest="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum)"
else
  digest="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | shasum -a 256)"
fi
digest="${digest:0:16}"
target="$cache/smtp-sink/$digest/smtp-sink"

if [ -x "$target" ]; then echo "$target"; exit 0; fi

if ! command -v go >/dev/null 2>&1; then
  cat >&2 <<MSG
error: no Go toolchain to build the Go SMTP peer ($src).
  Fix: install Go 1.26 or later (https://go.dev/dl) and put 'go' on PATH; this script
  then builds it once into $cache/smtp-sink.
MSG
  exit 2
fi

echo "building the Go SMTP peer into $target (first run only)..." >&2
mkdir -p "$(dirname "$target")"
tmp="$(mktemp -d "$cache/smtp-sink/build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# Build into a scratch dir, then an atomic rename: an interrupted build never leaves a
# half-written binary at the cached path. -mod=readonly: go.sum must already pin all.
(cd "$src" && GOFLAGS="${GOFLAGS:-} -trimpath -mod=readonly" go build -o "$tmp/smtp-sink" .) >&2
mv "$tmp/smtp-sink" "$target"
echo "$target"
