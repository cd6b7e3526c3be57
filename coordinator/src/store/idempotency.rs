//! Idempotency keys of upserts and deletes: per tenant and key, the request's digest, the write
//! token its attempt carried, and, once known, its outcome. Rows live for [`KEY_LIFETIME_MS`]
//! and at most [`MAX_KEYS_PER_TENANT`] per tenant (the oldest go first). Not audited: they are
//! data-plane bookkeeping, like the writes themselves.

use rusqlite::{OptionalExtension, params};

use super::{Error, Result, Store, from_sql_int, to_sql_int};

/// How long a key is remembered.
pub const KEY_LIFETIME_MS: u64 = 24 * 3600 * 1000;
/// Keys remembered per tenant at most.
pub const MAX_KEYS_PER_TENANT: u64 = 100_000;

/// Whether a keyed write's outcome is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemState {
    /// Sent with its token; outcome unknown.
    Pending,
    /// Its outcome.
    Done(IdemOutcome),
}

/// A keyed write's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemOutcome {
    /// The encoded `TenantResponse` of a success.
    Reply(Vec<u8>),
    /// An error: its code (`Code::as_str`) and message.
    Error(String, String),
}

/// One remembered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemRow {
    /// The key.
    pub key: String,
    /// SHA-256 of the request.
    pub digest: [u8; 32],
    /// The collection written.
    pub collection: String,
    /// The write token its last attempt carried.
    pub token: u64,
    /// Points or distinct ids of the request.
    pub items: u64,
    /// A delete (otherwise an upsert).
    pub is_delete: bool,
    /// Pending or done.
    pub state: IdemState,
}

type RawRow = (
    String,
    Vec<u8>,
    String,
    i64,
    i64,
    String,
    String,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
);

const COLUMNS: &str =
    "SELECT key, digest, collection, token, items, kind, state, reply, error_code,
                              error_message
                       FROM idempotency";

fn decode(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
    ))
}

fn into_row(raw: RawRow) -> Result<IdemRow> {
    let (key, digest, collection, token, items, kind, state, reply, code, message) = raw;
    let corrupt = |what: &str| Error::Corrupt(format!("idempotency key row: {what}"));
    let digest: [u8; 32] = digest.try_into().map_err(|_| corrupt("digest length"))?;
    let state = match (state.as_str(), reply, code, message) {
        ("pending", None, None, None) => IdemState::Pending,
        ("done", Some(reply), None, None) => IdemState::Done(IdemOutcome::Reply(reply)),
        ("done", None, Some(code), Some(message)) => {
            IdemState::Done(IdemOutcome::Error(code, message))
        }
        _ => return Err(corrupt("state")),
    };
    let is_delete = match kind.as_str() {
        "upsert" => false,
        "delete" => true,
        _ => return Err(corrupt("kind")),
    };
    Ok(IdemRow {
        is_delete,
        token: from_sql_int("write token", token)?,
        items: from_sql_int("items", items)?,
        key,
        digest,
        collection,
        state,
    })
}

impl Store {
    /// The row of `key` for `tenant`, if it is remembered (and not older than its lifetime).
    pub fn idem_get(&self, tenant: &str, key: &str) -> Result<Option<IdemRow>> {
        let oldest = to_sql_int("time", self.now().saturating_sub(KEY_LIFETIME_MS))?;
        self.read(|conn| {
            conn.query_row(
                &format!("{COLUMNS} WHERE tenant = ?1 AND key = ?2 AND created_ms >= ?3"),
                params![tenant, key, oldest],
                decode,
            )
            .optional()?
            .map(into_row)
            .transpose()
        })
    }

    /// The tenant's pending keys, oldest token first.
    pub fn idem_pending(&self, tenant: &str) -> Result<Vec<IdemRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "{COLUMNS} WHERE tenant = ?1 AND state = 'pending' ORDER BY token"
            ))?;
            let raws = stmt
                .query_map([tenant], decode)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter().map(into_row).collect()
        })
    }

    /// Records an attempt of a keyed write: a new write token from the tenant's counter, the row
    /// (re)written as pending. Forgets the tenant's keys past their lifetime or over the cap.
    /// Answers the token.
    pub fn idem_begin(
        &self,
        tenant: &str,
        key: &str,
        digest: &[u8; 32],
        collection: &str,
        items: u64,
        is_delete: bool,
    ) -> Result<u64> {
        let now = self.now();
        let now_sql = to_sql_int("time", now)?;
        let oldest = to_sql_int("time", now.saturating_sub(KEY_LIFETIME_MS))?;
        self.write(|tx| {
            tx.execute(
                "DELETE FROM idempotency WHERE tenant = ?1 AND created_ms < ?2",
                params![tenant, oldest],
            )?;
            let kept: i64 = tx.query_row(
                "SELECT count(*) FROM idempotency WHERE tenant = ?1",
                [tenant],
                |row| row.get(0),
            )?;
            let over = kept - to_sql_int("cap", MAX_KEYS_PER_TENANT)? + 1;
            if over > 0 {
                tx.execute(
                    "DELETE FROM idempotency WHERE (tenant, key) IN (SELECT tenant, key
                     FROM idempotency WHERE tenant = ?1 AND state = 'done'
                     ORDER BY created_ms LIMIT ?2)",
                    params![tenant, over],
                )?;
            }
            let token: i64 = tx.query_row(
                "UPDATE tenants SET write_token = write_token + 1 WHERE id = ?1
                 RETURNING write_token",
                [tenant],
                |row| row.get(0),
            )?;
            tx.execute(
                "INSERT INTO idempotency
                     (tenant, key, digest, collection, token, kind, items, state, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?8, ?6, 'pending', ?7)
                 ON CONFLICT (tenant, key) DO UPDATE SET
                     digest = excluded.digest, collection = excluded.collection,
                     token = excluded.token, kind = excluded.kind, items = excluded.items,
                     state = 'pending',
                     reply = NULL, error_code = NULL, error_message = NULL,
                     created_ms = excluded.created_ms",
                params![
                    tenant,
                    key,
                    digest.as_slice(),
                    collection,
                    token,
                    to_sql_int("items", items)?,
                    now_sql,
                    if is_delete { "delete" } else { "upsert" }
                ],
            )?;
            from_sql_int("write token", token)
        })
    }

    /// Forgets a pending attempt that never ran (its token was not applied): a retry with the key
    /// applies it as new.
    pub fn idem_forget(&self, tenant: &str, key: &str, token: u64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2 AND token = ?3
                 AND state = 'pending'",
                params![tenant, key, to_sql_int("token", token)?],
            )?;
            Ok(())
        })
    }

    /// Records the outcome of the attempt that carried `token`.
    pub fn idem_finish(
        &self,
        tenant: &str,
        key: &str,
        token: u64,
        outcome: &IdemOutcome,
    ) -> Result<()> {
        let (reply, code, message) = match outcome {
            IdemOutcome::Reply(bytes) => (Some(bytes.as_slice()), None, None),
            IdemOutcome::Error(code, message) => {
                (None, Some(code.as_str()), Some(message.as_str()))
            }
        };
        self.write(|tx| {
            tx.execute(
                "UPDATE idempotency SET state = 'done', reply = ?4, error_code = ?5,
                     error_message = ?6
                 WHERE tenant = ?1 AND key = ?2 AND token = ?3",
                params![
                    tenant,
                    key,
                    to_sql_int("token", token)?,
                    reply,
                    code,
                    message
                ],
            )?;
            Ok(())
        })
    }
}
