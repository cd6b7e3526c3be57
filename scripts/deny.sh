#!/usr/bin/env bash
# Usage: scripts/deny.sh
# `cargo deny check` (advisories, licenses, bans, sources; config in deny.toml), offline, run by
# scripts/test.sh. Installs the pinned cargo-deny when missing. The RustSec advisory database is the
# snapshot in ../shared/advisory-db (plain files, no network here): it is copied once per snapshot into
# a git repository under target/advisory-dbs/, where cargo-deny looks for its database, with a
# commit dated as the snapshot so the staleness check sees its real age.
set -euo pipefail
cd "$(dirname "$0")/.."

DENY_VERSION=0.20.2 # builds with Rust 1.95
if ! cargo deny --version 2>/dev/null | grep -qF " $DENY_VERSION"; then
    echo "installing cargo-deny $DENY_VERSION" >&2
    cargo install --locked cargo-deny --version "$DENY_VERSION"
fi

# cargo-deny reads the metadata of every platform's dependencies offline: fetch them all first (a
# build fetches only this platform's; reqwest, say, has wasm-only ones).
cargo fetch --locked

# The snapshot beside the checkout (../shared), or where VV_ADVISORY_DB points. Without one, the
# checks that need no database (bans, licenses, sources) still run, and the skip is said loudly.
snapshot=${VV_ADVISORY_DB:-../shared/advisory-db}
if [[ ! -d $snapshot/crates || ! -f $snapshot/SNAPSHOT ]]; then
    echo "WARNING: no RustSec advisory database snapshot at $snapshot; advisories NOT checked" >&2
    cargo deny --locked --offline check bans licenses sources
    exit 0
fi
# `SNAPSHOT` holds "<commit> <date>" of the upstream database.
read -r snapshot_commit snapshot_date <"$snapshot/SNAPSHOT"
# cargo-deny's directory for the default database URL (https://github.com/rustsec/advisory-db).
db=target/advisory-dbs/advisory-db-3157b0e258782691
stamp=target/advisory-dbs/snapshot
if [[ ! -d $db/.git || ! -f $stamp || $(cat "$stamp") != "$snapshot_commit" ]]; then
    rm -rf "$db"
    mkdir -p "$db"
    cp -a "$snapshot/." "$db/"
    date="${snapshot_date}T00:00:00Z"
    git -C "$db" init -q
    git -C "$db" add -A
    GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date git -C "$db" \
        -c user.name=vaultvec -c user.email=vaultvec@localhost -c commit.gpgsign=false \
        commit -q -m "RustSec advisory-db snapshot $snapshot_commit ($snapshot_date)"
    echo "$snapshot_commit" >"$stamp"
fi

cargo deny --locked --offline check
