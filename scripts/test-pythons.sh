#!/usr/bin/env bash
# The fast tests on each further supported Python (3.12 and 3.13; `make test` runs the whole
# suite on 3.11). Each version gets its own venv holding the dependencies only, cached
# under ${STAGECOACH_CACHE_DIR:-~/.cache/stagecoach}/venvs and keyed by the interpreter and
# pyproject.toml, so a fresh clone (CI) reuses it; the checkout's own code is imported from
# the working tree (PYTHONPATH), never installed, so no venv points at another clone. A version that cannot be found is an error, never a silent skip: a check
# that quietly runs nothing would pass on a machine where it tests nothing.
#
#   scripts/test-pythons.sh                  # 3.12 and 3.13
#   PYTHON_VERSIONS=3.13 scripts/test-pythons.sh
#   scripts/test-pythons.sh -k sandbox       # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a versions <<<"${PYTHON_VERSIONS:-3.12 3.13}"

# "Fast": no Stagecoach processes, peers killed on purpose, browser, PostgreSQL, benchmark or
# Temporal server, about a minute and a half per version. Chosen for what a new Python can
# break: the pure domain (cattrs, dataclasses), the protocol, the connectors against their
# local peers (asyncio, SSL, SMTP), storage and analytics on SQLite and DuckDB (SQLAlchemy,
# Alembic, pyarrow), the codec (cryptography), settings, the ingest API (FastAPI, pydantic),
# the layout, and the workflow sandbox and the replay of every recorded history, which is
# where the SDK's private modules are reached into (workflows/sandbox.py).
fast_marks="not e2e and not faults and not browser and not postgres and not bench"
fast_paths=(
  tests/engine/domain
  tests/engine/protocol
  tests/engine/services
  tests/engine/temporal/test_codec.py
  tests/engine/test_settings.py
  tests/engine/api/test_app.py
  tests/engine/api/test_ingest_api.py
  tests/engine/api/test_ingest_limits.py
  tests/connectors
  tests/test_architecture.py
  tests/test_pythons.py
  tests/workflows/test_sandbox_runner.py
  tests/workflows/test_replay.py
)

# The highest installed patch release of $1 (e.g. 3.12) under pyenv, else python$1 on PATH.
find_python() {
  local want=$1 found=""
  if command -v pyenv >/dev/null 2>&1; then
    # sort -V: 3.12.10 is newer than 3.12.9.
    found=$(printf '%s\n' "$(pyenv root)"/versions/"$want".*/bin/python"$want" | sort -V | tail -n 1)
    [ -x "$found" ] || found=""
  fi
  if [ -z "$found" ] && command -v "python$want" >/dev/null 2>&1; then
    found=$(command -v "python$want")
  fi
  printf '%s' "$found"
}

# Every version is looked up before any venv is built, so a missing one fails in seconds.
declare -A interpreter
missing=()
for v in "${versions[@]}"; do
  interpreter[$v]=$(find_python "$v")
  [ -n "${interpreter[$v]}" ] || missing+=("$v")
done
if [ ${#missing[@]} -gt 0 ]; then
  for v in "${missing[@]}"; do
    if command -v pyenv >/dev/null 2>&1; then
      where="no $v.* under $(pyenv root)/versions (pyenv versions) and no python$v on PATH"
    else
      where="pyenv is not installed and there is no python$v on PATH"
    fi
    echo "error: Python $v not found: $where." \
         "Fix: 'pyenv install $v' (https://github.com/pyenv/pyenv), or put python$v on PATH," \
         "then run 'make test-pythons' again." >&2
  done
  exit 2
fi

# The venv is rebuilt when the interpreter changes (a new patch release, another path) and
# reinstalled when pyproject.toml changes, as bootstrap.sh does for .venv.
cache=${STAGECOACH_CACHE_DIR:-$HOME/.cache/stagecoach}/venvs

venv_for() {
  local v=$1 python=$2 key
  key=$( { echo "$python"; "$python" -c 'import sys; print(sys.version)'; cat pyproject.toml; } |
        sha256sum | cut -c1-12)
  printf '%s/py%s-%s' "$cache" "$v" "$key"
}

ensure_venv() {
  local v=$1 python=$2 venv
  venv=$(venv_for "$v" "$python")
  [ -f "$venv/.complete" ] && return 0
  echo "installing Stagecoach's dependencies into $venv ($python) ..." >&2
  # Older venvs of this version (another pyproject.toml), and a half-built one, go first.
  rm -rf "$cache/py$v-"*
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  # The project installs with its dependencies, then leaves: only they are cached.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check '.[dev]' >&2
  "$venv/bin/python" -m pip uninstall --quiet --disable-pip-version-check -y stagecoach >&2
  touch "$venv/.complete"
}

failed=()
for v in "${versions[@]}"; do
  python=${interpreter[$v]}
  echo "== Python $v ($python): fast tests" >&2
  start=$SECONDS
  if ! ensure_venv "$v" "$python"; then
    echo "error: could not install Stagecoach's dependencies for Python $v (output above)." \
         "Fix: remove $cache/py$v-* and run 'make test-pythons' again." >&2
    failed+=("$v (install)")
    continue
  fi
  if ! PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$(venv_for "$v" "$python")/bin/pytest" \
       -q -p no:cacheprovider -n 2 -m "$fast_marks" "${fast_paths[@]}" "$@"; then
    failed+=("$v")
  fi
  echo "== Python $v: $((SECONDS - start)) s" >&2
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "error: the fast tests failed on Python ${failed[*]} (output above)." >&2
  exit 1
fi
