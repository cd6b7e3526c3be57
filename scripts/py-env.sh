#!/usr/bin/env bash
# Usage: bash scripts/py-env.sh
#
# Creates or updates the Python venv of the Python client tests (tests/python/test_clients.py) and of
# the schemathesis run (tests/it/schema.rs) at target/py-venv, installs tests/python/requirements.txt
# into it, and prints the venv's python path
# on stdout (everything else goes to stderr). When the venv was built from the same requirements
# (a sha256 stored in the venv), it does nothing else, so running it before every test run is cheap.
# Set PYTHON to choose the interpreter the venv is made from (default: python3, 3.10 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$PWD/target/py-venv"
requirements="$PWD/tests/python/requirements.txt"
stamp="$venv/requirements.sha256"
python="${PYTHON:-python3}"

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$venv/bin/python" -c '' 2>/dev/null; then
    echo "$venv/bin/python"
    exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: $python is missing or older than 3.10; set PYTHON to a newer interpreter" >&2
    exit 1
fi

echo "py-env: setting up $venv from $requirements" >&2
rm -f "$stamp"
if ! "$venv/bin/python" -c '' 2>/dev/null; then
    # Missing or broken (e.g. the interpreter it was made from is gone): start afresh.
    "$python" -m venv --clear "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --requirement "$requirements" >&2
"$venv/bin/python" -m pip check >&2
echo "$want" >"$stamp"
echo "$venv/bin/python"
