#!/usr/bin/env bash
# Create .venv and install the project with its dev extras. Idempotent: the install
# is skipped while pyproject.toml is unchanged since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
  echo "error: Stagecoach needs Python 3.11; '$python' is $("$python" --version 2>&1)." \
       "Fix: install Python 3.11 and run 'make PYTHON=/path/to/python3.11 ...'" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

stamp=.venv/.stagecoach-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "installing Stagecoach and its dependencies into .venv ..." >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' >&2
echo "$want" > "$stamp"
