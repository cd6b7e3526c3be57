//! The coordinator's control-plane database: tenants, API keys, workers, placement and the audit
//! chain, in one SQLite file (DESIGN.md sections 2, 3 and 7).
//!
//! # Layout
//!
//! The tables are defined by the migrations in `schema.rs`, tracked with `PRAGMA user_version`:
//! `tenants`, `api_keys`, `workers`, `placements`, `audit_rows`. A database written by a newer
//! coordinator (a higher version than this build knows) is refused rather than guessed at.
//!
//! # Invariants
//!
//! - Every mutation writes its audit rows in the same SQLite transaction (INV-18): if the audit
//!   insert fails, the mutation is rolled back and the call fails.
//! - `audit_rows` is append-only: triggers abort UPDATE and DELETE. Someone holding the file can
//!   drop the triggers; the hash links, the HMAC signatures ([`Store::verify_chain`]) and exported
//!   signed heads ([`Store::chain_head`]) catch what they then do.
//! - Tenant rows are never deleted (a trigger refuses), so a tenant id is never reused.
//! - A tenant's placement epoch counter lives in its tenant row, so it never goes down, not even
//!   when its placement is removed.
//! - The key digest is a BLOB read only by [`KeyStore::find`](crate::auth::KeyStore::find); it is
//!   never in a [`KeyInfo`], an audit row or an error message.
//! - The file and its `-wal`/`-shm` companions are mode 0600.
//!
//! # Concurrency
//!
//! One connection behind a mutex; each call holds it for one short transaction (write transactions
//! are `BEGIN IMMEDIATE`, so a second process cannot interleave between reading a chain's tail and
//! appending to it). Calls block: async callers should use `spawn_blocking`, and nothing may hold
//! the lock across an `.await` (it is never handed out).

mod audit;
pub mod billing;
pub mod census;
pub mod dashboard;
mod jobs;
mod key;
mod leftovers;
mod moves;
pub use jobs::JobRow;
pub use leftovers::Leftover;
pub use moves::{MoveRow, MoveState};
mod idempotency;
pub use idempotency::{IdemOutcome, IdemRow, IdemState};
mod placement;
mod replicas;
pub use replicas::{CopyState, ReplicaRow};
mod restores;
mod schema;
pub use restores::RestoreIntent;
mod snapshots;
pub use snapshots::SnapshotRow;
pub(crate) mod tenant;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::audit::{AuditKey, Draft};
use crate::auth::Scopes;

use schema::MIGRATIONS;

/// The name of the platform's audit chain; every other chain is named by its tenant id.
pub const PLATFORM_CHAIN: &str = "platform";

/// The schema version this build writes (`PRAGMA user_version`); newer files are refused.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a call waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong. Callers branch on the variant; messages are lowercase and name the thing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such tenant, key, worker, placement or chain (or it was deleted).
    #[error("{0}")]
    NotFound(String),
    /// The id is taken (tenant ids stay taken after deletion).
    #[error("{0}")]
    AlreadyExists(String),
    /// The input or the state transition is not allowed.
    #[error("{0}")]
    Invalid(String),
    /// The file was written by a newer coordinator.
    #[error(
        "database schema version {found} is newer than this coordinator supports ({supported}); refusing to open it"
    )]
    TooNew {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The highest version this build knows.
        supported: i64,
    },
    /// Stored data that this code never writes (a damaged or tampered file).
    #[error("control-plane database is corrupt: {0}")]
    Corrupt(String),
    /// Creating the file or setting its permissions failed.
    #[error("i/o error on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused (including an audit insert that failed, which fails the whole operation).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl Error {
    /// Whether the caller asked for something wrong (as opposed to the server failing).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::NotFound(_) | Error::AlreadyExists(_) | Error::Invalid(_)
        )
    }
}

/// Result of store calls.
pub type Result<T> = std::result::Result<T, Error>;

/// Who did something, as recorded in audit rows: `admin`, `key:<keyid>`, `user:<id>`,
/// `worker:<id>`, `system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    /// The operator, through the admin token.
    pub fn admin() -> Actor {
        Actor("admin".into())
    }

    /// The coordinator itself (schedules, failover).
    pub fn system() -> Actor {
        Actor("system".into())
    }

    /// A tenant's API key, by its public id.
    pub fn key(key_id: &str) -> Actor {
        Actor(format!("key:{key_id}"))
    }

    /// A dashboard user.
    pub fn user(id: &str) -> Actor {
        Actor(format!("user:{id}"))
    }

    /// A worker.
    pub fn worker(id: &str) -> Actor {
        Actor(format!("worker:{id}"))
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Slug: 1..=63 bytes of `[a-z0-9-]`.
    pub id: String,
    /// Current tier; `paused` while paused.
    pub tier: String,
    /// The tier before the pause, while paused.
    pub paused_from: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Deleted tenants stay (their ids are never reused) but no longer operate.
    pub deleted: bool,
    /// Where its files are: `hot` (the workers' data directories), `cooling` (moving to cold
    /// storage after a pause), `cold`, or `warming` (moving back for a resume).
    pub storage: String,
}

/// An API key as listed: everything but the digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Public key id.
    pub key_id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Free text chosen by the owner.
    pub label: String,
    /// Scopes.
    pub scopes: Scopes,
    /// If set, the only collections the key may touch.
    pub collections: Option<Vec<String>>,
    /// Issue time, Unix milliseconds.
    pub created_ms: u64,
    /// Revocation time, if revoked.
    pub revoked_ms: Option<u64>,
}

/// A worker as last heard from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    /// Worker id.
    pub id: String,
    /// Last hello or heartbeat, Unix milliseconds.
    pub last_seen_ms: u64,
    /// Its software version.
    pub version: String,
    /// Memory it may use for loaded tenants.
    pub memory_budget_bytes: u64,
    /// Since when it is draining (Unix ms), if it is.
    pub draining_since_ms: Option<u64>,
}

/// Which worker holds a tenant, under which fencing epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The tenant.
    pub tenant: String,
    /// The worker holding it.
    pub worker: String,
    /// Fencing epoch: strictly increasing per tenant, starting at 1.
    pub epoch: u64,
}

type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> u64 {
    // A clock before 1970 is a broken host; 0 keeps rows orderable rather than failing every write.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The control-plane database. See the module docs.
pub struct Store {
    conn: Mutex<Connection>,
    audit_key: AuditKey,
    clock: Clock,
    path: Option<PathBuf>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed, mode 0600) the database at `path` and brings its schema up to
    /// date. Refuses a file from a newer coordinator with [`Error::TooNew`].
    pub fn open(path: &Path, audit_key: AuditKey) -> Result<Store> {
        create_private(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        let store = Store::init(conn, audit_key, Some(path.to_owned()))?;
        // SQLite gives -wal and -shm the database file's mode; tightening them again costs nothing
        // and covers files left by an older, laxer run.
        for suffix in ["-wal", "-shm"] {
            let mut companion = path.as_os_str().to_owned();
            companion.push(suffix);
            let companion = PathBuf::from(companion);
            if companion.exists() {
                set_private(&companion)?;
            }
        }
        Ok(store)
    }

    /// A database that lives in memory only (tests).
    pub fn open_in_memory(audit_key: AuditKey) -> Result<Store> {
        Store::init(Connection::open_in_memory()?, audit_key, None)
    }

    /// Replaces the clock (Unix milliseconds) that stamps rows; tests make time deterministic.
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Store {
        self.clock = Box::new(clock);
        self
    }

    /// The file, unless in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn init(mut conn: Connection, audit_key: AuditKey, path: Option<PathBuf>) -> Result<Store> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if path.is_some() && !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Corrupt(format!(
                "could not switch to WAL journal mode (got {mode})"
            )));
        }
        // FULL: a commit that returned is on disk even after power loss (an acknowledged admin
        // operation and its audit row must not vanish).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Deleted content (revoked digests, later destroyed KEKs) is overwritten, not left in
        // free pages (crypto-erasure, DESIGN.md section 4).
        conn.pragma_update(None, "secure_delete", true)?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
            audit_key,
            clock: Box::new(system_clock),
            path,
        })
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Runs `f` in one write transaction; an error from `f` rolls everything back.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` on the connection, for reads of a single statement.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        f(&self.conn.lock())
    }

    /// A draft stamped now, outcome `ok`: what every mutation records.
    fn draft(
        &self,
        actor: &Actor,
        action: &str,
        resource: &str,
        details: serde_json::Value,
    ) -> Draft {
        Draft {
            time_ms: self.now(),
            actor: actor.0.clone(),
            action: action.into(),
            resource: resource.into(),
            outcome: "ok".into(),
            details,
        }
    }
}

/// Applies the migrations the file has not had yet; refuses a file from a newer build.
fn migrate(conn: &mut Connection) -> Result<()> {
    let supported = SCHEMA_VERSION;
    for (idx, sql) in MIGRATIONS.iter().enumerate() {
        let target = idx as i64 + 1;
        // The version is read inside the write transaction, so two processes opening a fresh
        // file at once cannot both run the same migration.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = user_version(&tx)?;
        if !(0..=supported).contains(&version) {
            return Err(Error::TooNew {
                found: version,
                supported,
            });
        }
        if version >= target {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", target)?;
        tx.commit()?;
    }
    // Covers a file whose version is above ours when there is nothing left to apply.
    let version = user_version(conn)?;
    if version != supported {
        return Err(Error::TooNew {
            found: version,
            supported,
        });
    }
    Ok(())
}

fn user_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// Creates `path` with mode 0600 if it does not exist, and tightens it to 0600 if it does.
fn create_private(path: &Path) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(io)?;
    set_private(path)
}

fn set_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| Error::Io {
                path: path.to_owned(),
                source,
            },
        )?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Tenant ids follow `TenantId`: 1..=63 bytes of `[a-z0-9-]`, and `platform` names the platform
/// chain, so no tenant may take it.
fn check_tenant_id(id: &str) -> Result<()> {
    if !is_slug(id) {
        return Err(Error::Invalid(format!(
            "tenant id {} is invalid: use 1 to 63 characters of a-z, 0-9 and -",
            shown(id)
        )));
    }
    if id == PLATFORM_CHAIN {
        return Err(Error::Invalid(format!(
            "tenant id {PLATFORM_CHAIN} is reserved for the platform audit chain"
        )));
    }
    Ok(())
}

/// Tier names follow the same rules as tenant ids; `paused` is set only by pausing.
fn check_tier(tier: &str) -> Result<()> {
    if !is_slug(tier) {
        return Err(Error::Invalid(format!(
            "tier {} is invalid: use 1 to 63 characters of a-z, 0-9 and -",
            shown(tier)
        )));
    }
    if tier == tenant::PAUSED {
        return Err(Error::Invalid(
            "tier paused is set by pausing a tenant, not directly".into(),
        ));
    }
    Ok(())
}

fn is_slug(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// Checks a free-text field: at most `max` bytes, no control characters (they would make logs and
/// the dashboard lie).
fn check_text(what: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} {} is invalid: at most {max} bytes without control characters",
            shown(value)
        )));
    }
    Ok(())
}

/// Checks an identifier (worker id, version): 1..=`max` bytes of visible ASCII.
fn check_ident(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Invalid(format!(
            "{what} {} is invalid: use 1 to {max} visible ascii characters",
            shown(value)
        )));
    }
    Ok(())
}

/// A value fit for an error message: as is when short and printable, else escaped and cut, so a
/// hostile input cannot flood or forge log lines.
fn shown(value: &str) -> String {
    const MAX: usize = 64;
    if value.len() <= MAX && value.chars().all(|c| c.is_ascii_graphic()) && !value.is_empty() {
        return value.to_owned();
    }
    let cut: String = value.chars().take(MAX).collect();
    let ellipsis = if cut.len() < value.len() { "..." } else { "" };
    format!("{cut:?}{ellipsis}")
}

/// SQLite integers are i64; the API's are u64.
fn to_sql_int(what: &str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Invalid(format!("{what} {value} is too large")))
}

fn from_sql_int(what: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::Corrupt(format!("{what} is negative ({value})")))
}

#[cfg(test)]
mod tests;
