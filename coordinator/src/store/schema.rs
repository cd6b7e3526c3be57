//! The schema, as an ordered list of migrations.
//!
//! `MIGRATIONS[i]` takes a database from `PRAGMA user_version = i` to `i + 1`. Each runs in its own
//! transaction together with the version bump, so a crash leaves the file at one version or the
//! next, never between. Released migrations are never edited: a change is a new entry.
//!
//! Tables are `STRICT`, so a value of the wrong type is refused on INSERT and UPDATE instead of
//! being stored and misread later.

/// Migration 1: tenants, API keys, workers, placement, the audit chain.
const V1: &str = "
CREATE TABLE tenants (
    -- TenantId rules: 1..=63 bytes of [a-z0-9-], never `platform`. Rows are never deleted, so an
    -- id is never reused (a new tenant must not inherit an old one's audit chain or epochs).
    id TEXT NOT NULL PRIMARY KEY,
    tier TEXT NOT NULL,
    -- The tier before a pause, while `tier = 'paused'`; NULL otherwise.
    paused_from TEXT,
    created_ms INTEGER NOT NULL,
    -- NULL while the tenant lives.
    deleted_ms INTEGER,
    -- The highest placement epoch ever handed out for this tenant. It lives here and not in
    -- `placements` so that removing a placement cannot make an epoch go down (fencing).
    placement_epoch INTEGER NOT NULL DEFAULT 0 CHECK (placement_epoch >= 0),
    CHECK ((tier = 'paused') = (paused_from IS NOT NULL))
) STRICT;

CREATE TRIGGER tenants_never_deleted BEFORE DELETE ON tenants
BEGIN
    SELECT RAISE(ABORT, 'tenant rows are never deleted (ids are never reused)');
END;

CREATE TABLE api_keys (
    key_id TEXT NOT NULL PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (id),
    label TEXT NOT NULL,
    scope_read INTEGER NOT NULL CHECK (scope_read IN (0, 1)),
    scope_write INTEGER NOT NULL CHECK (scope_write IN (0, 1)),
    scope_manage INTEGER NOT NULL CHECK (scope_manage IN (0, 1)),
    -- JSON array of collection names, or NULL for all collections.
    collections TEXT,
    -- HMAC-SHA256(pepper, key). Read only by KeyStore::find; never listed, never audited.
    digest BLOB NOT NULL CHECK (length(digest) = 32),
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
) STRICT;

CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_ms);

CREATE TABLE workers (
    id TEXT NOT NULL PRIMARY KEY,
    last_seen_ms INTEGER NOT NULL,
    version TEXT NOT NULL,
    memory_budget_bytes INTEGER NOT NULL CHECK (memory_budget_bytes >= 0)
) STRICT;

CREATE TABLE placements (
    tenant TEXT NOT NULL PRIMARY KEY REFERENCES tenants (id),
    worker TEXT NOT NULL REFERENCES workers (id),
    epoch INTEGER NOT NULL CHECK (epoch >= 1)
) STRICT;

CREATE INDEX placements_by_worker ON placements (worker);

CREATE TABLE audit_rows (
    -- `platform` or a tenant id.
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    outcome TEXT NOT NULL,
    -- Compact JSON, exactly as hashed.
    details TEXT NOT NULL,
    -- Hex, as exported.
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
) STRICT, WITHOUT ROWID;

-- Append-only. Someone holding the file can drop these; the hash links, the HMAC signatures and
-- exported signed heads are what catch that.
CREATE TRIGGER audit_rows_no_update BEFORE UPDATE ON audit_rows
BEGIN
    SELECT RAISE(ABORT, 'audit rows are append-only');
END;

CREATE TRIGGER audit_rows_no_delete BEFORE DELETE ON audit_rows
BEGIN
    SELECT RAISE(ABORT, 'audit rows are append-only');
END;
";

/// Migration 2: tenant moves between workers, so a move cut short by a crash is finished or
/// undone (`store::moves`).
const V2: &str = "
CREATE TABLE moves (
    tenant TEXT NOT NULL PRIMARY KEY REFERENCES tenants (id),
    from_worker TEXT NOT NULL,
    to_worker TEXT NOT NULL,
    -- copying: the tenant is fenced (served by no worker) while its files are copied;
    -- cleanup: it is placed on to_worker, and from_worker's copy is still to be deleted;
    -- aborted: it stays placed on from_worker, and to_worker's copy (whole or partial) is still
    -- to be deleted.
    state TEXT NOT NULL CHECK (state IN ('copying', 'cleanup', 'aborted')),
    started_ms INTEGER NOT NULL,
    CHECK (from_worker <> to_worker)
) STRICT;
";

/// Migration 3: draining workers (no new tenants; their tenants are moved off), so a drain
/// survives a coordinator restart.
const V3: &str = "
ALTER TABLE workers ADD COLUMN draining_since_ms INTEGER;
";

/// Migration 4: a tenant's copies beyond its placement's worker (tiers with `replicas` > 1).
const V4: &str = "
CREATE TABLE replicas (
    tenant TEXT NOT NULL REFERENCES tenants (id),
    worker TEXT NOT NULL,
    -- live: it has made every acknowledged write of the tenant durable and is read from and
    -- written to; stale: it missed a write (or may have), is neither read from nor written to,
    -- and catches up from a live copy before it is live again.
    state TEXT NOT NULL CHECK (state IN ('live', 'stale')),
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, worker)
) STRICT, WITHOUT ROWID;
";

/// Migration 5: idempotency keys of upserts and deletes, and each tenant's write-token counter.
const V5: &str = "
ALTER TABLE tenants ADD COLUMN write_token INTEGER NOT NULL DEFAULT 0 CHECK (write_token >= 0);
CREATE TABLE idempotency (
    tenant TEXT NOT NULL REFERENCES tenants (id),
    key TEXT NOT NULL,
    -- SHA-256 of the request (operation and collection), so a key reused with another request is
    -- refused rather than answered with the first one's outcome.
    digest BLOB NOT NULL CHECK (length(digest) = 32),
    collection TEXT NOT NULL,
    -- The write token sent with the attempt; the worker logs it with the write.
    token INTEGER NOT NULL CHECK (token > 0),
    kind TEXT NOT NULL CHECK (kind IN ('upsert', 'delete')),
    -- Points (upsert) or distinct ids (delete) of the request.
    items INTEGER NOT NULL CHECK (items >= 0),
    -- pending: sent, outcome unknown; done: outcome recorded.
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    -- The outcome: the encoded TenantResponse of a success, or an error's code and message.
    reply BLOB,
    error_code TEXT,
    error_message TEXT,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_age ON idempotency (tenant, created_ms);
";

/// Migration 6: copies whose files a worker still has to delete (a replica removed, or handed
/// over, while its worker was away or did not answer), so that the files go when it is back.
const V6: &str = "
CREATE TABLE leftover_copies (
    tenant TEXT NOT NULL,
    worker TEXT NOT NULL,
    reason TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, worker)
) STRICT, WITHOUT ROWID;
";

/// Migration 7: the scheduler's jobs (`store::jobs`).
const V7: &str = "
CREATE TABLE jobs (
    name TEXT NOT NULL PRIMARY KEY,
    next_run_ms INTEGER NOT NULL,
    last_start_ms INTEGER,
    last_end_ms INTEGER,
    last_outcome TEXT CHECK (last_outcome IN ('ok', 'error')),
    -- What the last run found, as JSON.
    last_details TEXT,
    runs INTEGER NOT NULL CHECK (runs >= 0)
) STRICT, WITHOUT ROWID;
";

/// Migration 8: when each tenant's KEK was last rotated (the scheduled rotation's policy).
const V8: &str = "
CREATE TABLE kek_rotations (
    tenant TEXT NOT NULL PRIMARY KEY REFERENCES tenants (id),
    rotated_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
";

/// Migration 9: usage per tenant and day, and the daily census (`store::census`).
const V9: &str = "
CREATE TABLE usage_days (
    tenant TEXT NOT NULL,
    -- UTC, YYYY-MM-DD.
    day TEXT NOT NULL,
    requests INTEGER NOT NULL CHECK (requests >= 0),
    searches INTEGER NOT NULL CHECK (searches >= 0),
    PRIMARY KEY (tenant, day)
) STRICT, WITHOUT ROWID;
CREATE TABLE census (
    day TEXT NOT NULL,
    tenant TEXT NOT NULL,
    tier TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'paused', 'unplaced')),
    -- NULL: the tenant's worker could not be asked.
    collections INTEGER,
    points INTEGER,
    bytes_hot INTEGER,
    bytes_cold INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    searches INTEGER NOT NULL,
    taken_ms INTEGER NOT NULL,
    PRIMARY KEY (day, tenant)
) STRICT, WITHOUT ROWID;
";

/// Migration 10: the signed audit heads kept with each census (`store::audit`), against which
/// every later verification of a chain checks, so a cut tail shows.
const V10: &str = "
CREATE TABLE audit_anchors (
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL CHECK (seq >= 0),
    -- The census day it was taken with.
    day TEXT NOT NULL,
    -- The signed head, as exported (JSON).
    head TEXT NOT NULL,
    PRIMARY KEY (chain, day)
) STRICT, WITHOUT ROWID;
";

/// Migration 11: where a tenant's files are (`store::tenant`): in the workers' data directories
/// (`hot`), moving to their cold storage after a pause (`cooling`), there (`cold`), or moving back
/// for a resume (`warming`).
const V11: &str = "
ALTER TABLE tenants ADD COLUMN storage TEXT NOT NULL DEFAULT 'hot'
    CHECK (storage IN ('hot', 'cooling', 'cold', 'warming'));
";

/// Migration 12: snapshots in the snapshot store (`store::snapshots`), and the KEK versions a
/// rotation kept only because a snapshot needs them.
const V12: &str = "
CREATE TABLE snapshots (
    id TEXT NOT NULL PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (id),
    created_ms INTEGER NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('admin', 'schedule')),
    files INTEGER NOT NULL CHECK (files >= 0),
    bytes INTEGER NOT NULL CHECK (bytes >= 0),
    archive_bytes INTEGER NOT NULL CHECK (archive_bytes >= 0),
    -- JSON array of the tenant's KEK versions when it was taken.
    kek_versions TEXT NOT NULL
) STRICT;
CREATE INDEX snapshots_of_tenant ON snapshots (tenant, created_ms);
CREATE TABLE kek_retired (
    tenant TEXT NOT NULL REFERENCES tenants (id),
    version INTEGER NOT NULL CHECK (version > 0),
    PRIMARY KEY (tenant, version)
) STRICT, WITHOUT ROWID;
";

/// Migration 13: a census row's `bytes_cold` may be unknown (a paused tenant's worker that could
/// not be asked), like its other figures.
const V13: &str = "
CREATE TABLE census_v13 (
    day TEXT NOT NULL,
    tenant TEXT NOT NULL,
    tier TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'paused', 'unplaced')),
    collections INTEGER,
    points INTEGER,
    bytes_hot INTEGER,
    bytes_cold INTEGER,
    requests INTEGER NOT NULL,
    searches INTEGER NOT NULL,
    taken_ms INTEGER NOT NULL,
    PRIMARY KEY (day, tenant)
) STRICT, WITHOUT ROWID;
INSERT INTO census_v13 SELECT day, tenant, tier, state, collections, points, bytes_hot,
    bytes_cold, requests, searches, taken_ms FROM census;
DROP TABLE census;
ALTER TABLE census_v13 RENAME TO census;
";

/// Migration 14: the dashboard's people. A user is a verified email address (lowercased), known
/// by one or more provider identities; a tenant's members are email addresses with a role,
/// invited before their first login. A session row is keyed by the SHA-256 of the random id its
/// cookie holds (the id itself is never stored); a login flow row, by the SHA-256 of its OAuth
/// `state`, holds what the callback needs (PKCE verifier, nonce) and the hash of the cookie that
/// binds it to the browser that started it. Both go when used or expired.
const V14: &str = "
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE user_identities (
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users (id),
    PRIMARY KEY (provider, subject)
) STRICT, WITHOUT ROWID;
CREATE TABLE members (
    tenant TEXT NOT NULL REFERENCES tenants (id),
    email TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    invited_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, email)
) STRICT, WITHOUT ROWID;
CREATE INDEX members_by_email ON members (email);
CREATE TABLE sessions (
    id_hash BLOB PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    provider TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    csrf TEXT NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE login_flows (
    state_hash BLOB PRIMARY KEY,
    browser_hash BLOB NOT NULL,
    provider TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    nonce TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
";

/// Migration 15: snapshots a tenant's owner takes from the dashboard (origin `owner`). SQLite
/// cannot change a CHECK constraint in place, so the table is rebuilt with its rows.
const V15: &str = "
CREATE TABLE snapshots_v15 (
    id TEXT NOT NULL PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (id),
    created_ms INTEGER NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('admin', 'schedule', 'owner')),
    files INTEGER NOT NULL CHECK (files >= 0),
    bytes INTEGER NOT NULL CHECK (bytes >= 0),
    archive_bytes INTEGER NOT NULL CHECK (archive_bytes >= 0),
    -- JSON array of the tenant's KEK versions when it was taken.
    kek_versions TEXT NOT NULL
) STRICT;
INSERT INTO snapshots_v15 (id, tenant, created_ms, origin, files, bytes, archive_bytes, kek_versions)
    SELECT id, tenant, created_ms, origin, files, bytes, archive_bytes, kek_versions FROM snapshots;
DROP TABLE snapshots;
ALTER TABLE snapshots_v15 RENAME TO snapshots;
CREATE INDEX snapshots_of_tenant ON snapshots (tenant, created_ms);
";

/// Migration 16: billing. `usage_hours` holds each tenant's requests, searches and upserted
/// points per UTC hour (hours since the epoch), added to by the usage flush and pruned past
/// 35 days. `anomalies` holds each usage spike the anomaly watch found (one per tenant, metric and
/// period), with the audit row that records it and whether it paused the tenant.
/// `tenant_settings` holds what a tenant's owner sets on the dashboard. `outbox` holds mail to
/// send: a row is written in the transaction of what caused it and stays until the relay
/// accepted it (`sent_ms`), retried with a growing delay meanwhile.
const V16: &str = "
CREATE TABLE usage_hours (
    tenant TEXT NOT NULL,
    hour INTEGER NOT NULL CHECK (hour >= 0),
    requests INTEGER NOT NULL CHECK (requests >= 0),
    searches INTEGER NOT NULL CHECK (searches >= 0),
    upserted INTEGER NOT NULL CHECK (upserted >= 0),
    PRIMARY KEY (tenant, hour)
) STRICT, WITHOUT ROWID;
CREATE INDEX usage_hours_by_hour ON usage_hours (hour);
CREATE TABLE anomalies (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (id),
    metric TEXT NOT NULL CHECK (metric IN ('requests', 'searches', 'upserted', 'stored_bytes')),
    -- Start of the hour (or, for stored bytes, the census day) the spike was in, Unix ms.
    period_ms INTEGER NOT NULL,
    period_len_ms INTEGER NOT NULL,
    value INTEGER NOT NULL,
    median REAL NOT NULL,
    mad REAL NOT NULL,
    threshold REAL NOT NULL,
    score REAL NOT NULL,
    found_ms INTEGER NOT NULL,
    audit_chain TEXT NOT NULL,
    audit_seq INTEGER NOT NULL,
    audit_hash TEXT NOT NULL,
    -- 1 when the tier pauses on anomalies; paused_ms once the pause was made.
    auto_pause INTEGER NOT NULL CHECK (auto_pause IN (0, 1)),
    paused_ms INTEGER,
    UNIQUE (tenant, metric, period_ms)
) STRICT;
CREATE INDEX anomalies_of_tenant ON anomalies (tenant, found_ms);
CREATE TABLE tenant_settings (
    tenant TEXT NOT NULL PRIMARY KEY REFERENCES tenants (id),
    -- JSON array of addresses that receive the tenant's notifications beside its owners.
    notify_emails TEXT NOT NULL,
    -- The tenant's anomaly threshold (within its tier's range), or NULL for the tier's.
    anomaly_threshold REAL,
    updated_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    -- The audit row the mail is about (`<chain>#<seq>`).
    audit_ref TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT,
    sent_ms INTEGER
) STRICT;
CREATE INDEX outbox_due ON outbox (sent_ms, next_attempt_ms);
";

/// Migration 17: snapshots brought back from elsewhere (origin `upload`, so the table is rebuilt
/// with the wider check), and `restores`: a restore under way, written before it stages anything
/// on its worker and removed with the audit row of its outcome, so that a crash in between is
/// settled at the next start (`store::restores`). `files` is the JSON listing of the snapshot's
/// files (path, length, SHA-256); `started` says whether its `started` row was written.
const V17: &str = "
CREATE TABLE snapshots_v17 (
    id TEXT NOT NULL PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (id),
    created_ms INTEGER NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('admin', 'schedule', 'owner', 'upload')),
    files INTEGER NOT NULL CHECK (files >= 0),
    bytes INTEGER NOT NULL CHECK (bytes >= 0),
    archive_bytes INTEGER NOT NULL CHECK (archive_bytes >= 0),
    -- JSON array of the tenant's KEK versions when it was taken.
    kek_versions TEXT NOT NULL
) STRICT;
INSERT INTO snapshots_v17 (id, tenant, created_ms, origin, files, bytes, archive_bytes, kek_versions)
    SELECT id, tenant, created_ms, origin, files, bytes, archive_bytes, kek_versions FROM snapshots;
DROP TABLE snapshots;
ALTER TABLE snapshots_v17 RENAME TO snapshots;
CREATE INDEX snapshots_of_tenant ON snapshots (tenant, created_ms);
CREATE TABLE restores (
    tenant TEXT NOT NULL PRIMARY KEY REFERENCES tenants (id),
    snapshot TEXT NOT NULL,
    worker TEXT NOT NULL,
    files TEXT NOT NULL,
    started INTEGER NOT NULL CHECK (started IN (0, 1)),
    began_ms INTEGER NOT NULL
) STRICT;
";

/// Every migration, in order. The schema version of a database is how many of these it has had.
pub(crate) const MIGRATIONS: &[&str] = &[
    V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13, V14, V15, V16, V17,
];
