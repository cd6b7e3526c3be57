#!/usr/bin/env bash
# Usage: scripts/test.sh [nextest args...]
# The one test command: installs what the tests need on a fresh machine, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install --locked cargo-nextest
fi

cargo fmt --all -- --check
# INV-17: floats are never sorted with a comparison that can panic on NaN.
if grep -rnE 'partial_cmp\([^)]*\)\.unwrap\(\)' --include='*.rs' storage coordinator worker proto tests; then
    echo "error: partial_cmp().unwrap() found; use f32::total_cmp" >&2
    exit 1
fi
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
# The Python client tests (tests/it/python.rs) run in this venv.
bash scripts/py-env.sh
# Headless Chromium, its WebDriver and nginx for the dashboard's browser test (apt-get if missing).
bash scripts/browser-env.sh
# The deploy files are checked, not just shipped: systemd-analyze verify/security, nginx -t and
# the HTTP-to-HTTPS redirect on a real nginx (installs systemd, nginx, openssl, curl if missing).
bash scripts/check-deploy.sh
# cargo deny (advisories, licenses, bans, sources; deny.toml) offline against ../shared/advisory-db.
bash scripts/deny.sh
cargo nextest run --workspace --locked --no-fail-fast "$@"
# Doc tests are not run by nextest.
cargo test --workspace --doc --locked
