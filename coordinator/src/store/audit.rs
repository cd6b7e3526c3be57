//! The audit chain in SQLite: appending (linked and signed by [`crate::audit`]), export, signed
//! heads, re-verification.
//!
//! A chain is `platform` or a tenant id, and exists once that tenant was created (deleted tenants'
//! chains stay readable). Rows are read back leniently, one decode result per row, so that
//! [`Store::verify_chain`] can name a row an attacker made unreadable instead of failing as a
//! whole.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Error, PLATFORM_CHAIN, Result, Store, shown, tenant, to_sql_int};
use crate::audit::{AuditRow, ChainHead, Draft, VerifyError, verify_anchored};

const COLUMNS: &str =
    "chain, seq, time_ms, actor, action, resource, outcome, details, prev_hash, hash, signature";

/// A stored value, or why it cannot be read as one.
type Field<T> = std::result::Result<T, String>;
/// A stored row, or why it cannot be read as one.
type Decoded = Field<AuditRow>;

fn decode(row: &Row<'_>) -> Decoded {
    let unreadable = |err: rusqlite::Error| format!("unreadable column: {err}");
    let int = |idx: usize, name: &str| -> Field<u64> {
        let value: i64 = row.get(idx).map_err(unreadable)?;
        u64::try_from(value).map_err(|_| format!("{name} is negative ({value})"))
    };
    let text = |idx: usize| -> Field<String> { row.get(idx).map_err(unreadable) };
    let details = text(7)?;
    Ok(AuditRow {
        chain: text(0)?,
        seq: int(1, "seq")?,
        time_ms: int(2, "time_ms")?,
        actor: text(3)?,
        action: text(4)?,
        resource: text(5)?,
        outcome: text(6)?,
        details: serde_json::from_str(&details)
            .map_err(|_| "details are not valid json".to_owned())?,
        prev_hash: text(8)?,
        hash: text(9)?,
        signature: text(10)?,
    })
}

/// Every row of `chain` in seq order, each decoded or not.
fn rows(conn: &Connection, chain: &str) -> Result<Vec<Decoded>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM audit_rows WHERE chain = ?1 ORDER BY seq"
    ))?;
    let decoded = stmt
        .query_map([chain], |row| Ok(decode(row)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(decoded)
}

/// The last row of `chain`, if any.
fn last(conn: &Connection, chain: &str) -> Result<Option<AuditRow>> {
    let decoded = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM audit_rows WHERE chain = ?1 ORDER BY seq DESC LIMIT 1"),
            [chain],
            |row| Ok(decode(row)),
        )
        .optional()?;
    decoded
        .transpose()
        .map_err(|reason| Error::Corrupt(format!("audit chain {chain}: last row: {reason}")))
}

/// [`Error::NotFound`] unless `chain` is the platform's or a tenant's that was ever created.
pub(super) fn check_chain(conn: &Connection, chain: &str) -> Result<()> {
    if chain == PLATFORM_CHAIN || tenant::load(conn, chain)?.is_some() {
        return Ok(());
    }
    Err(Error::NotFound(format!(
        "audit chain {} not found",
        shown(chain)
    )))
}

/// Details as they will read back from the database. serde_json's default float parsing is not
/// exact, so hashing the caller's value could make an honest row fail verification later; the row
/// is hashed over the re-read value, and refused if even that does not survive the round trip.
fn settled(details: serde_json::Value) -> Result<(serde_json::Value, String)> {
    let invalid = || Error::Invalid("audit details do not survive a json round trip".into());
    let text = serde_json::to_string(&details).map_err(|_| invalid())?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|_| invalid())?;
    let text = serde_json::to_string(&value).map_err(|_| invalid())?;
    let again: serde_json::Value = serde_json::from_str(&text).map_err(|_| invalid())?;
    if again != value {
        return Err(invalid());
    }
    Ok((value, text))
}

impl Store {
    /// Appends `draft` to `chain` inside the caller's transaction: the row commits or rolls back
    /// with the operation it records (INV-18).
    pub(super) fn append_in(
        &self,
        conn: &Connection,
        chain: &str,
        draft: Draft,
    ) -> Result<AuditRow> {
        let time_ms = to_sql_int("audit time", draft.time_ms)?;
        let (details, details_text) = settled(draft.details)?;
        let draft = Draft { details, ..draft };
        let prev = last(conn, chain)?;
        let row =
            AuditRow::append(chain, prev.as_ref(), draft, &self.audit_key).ok_or_else(|| {
                Error::Corrupt(format!(
                    "audit chain {chain}: the hash of its last row is not 32 bytes of hex"
                ))
            })?;
        conn.execute(
            &format!("INSERT INTO audit_rows ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            params![
                row.chain,
                to_sql_int("audit seq", row.seq)?,
                time_ms,
                row.actor,
                row.action,
                row.resource,
                row.outcome,
                details_text,
                row.prev_hash,
                row.hash,
                row.signature,
            ],
        )?;
        Ok(row)
    }

    /// Appends one row to `chain` (`platform` or an existing tenant's) in its own transaction.
    pub fn audit(&self, chain: &str, draft: Draft) -> Result<AuditRow> {
        self.write(|tx| {
            check_chain(tx, chain)?;
            self.append_in(tx, chain, draft)
        })
    }

    /// Appends `drafts` to `chain` in one transaction (one fsync for all of them).
    pub fn audit_many(&self, chain: &str, drafts: Vec<Draft>) -> Result<()> {
        if drafts.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            check_chain(tx, chain)?;
            for draft in drafts {
                self.append_in(tx, chain, draft)?;
            }
            Ok(())
        })
    }

    /// Every row of `chain`, in seq order (the export, one JSON object per row).
    /// [`Error::Corrupt`] names a row that cannot be read back.
    pub fn export_chain(&self, chain: &str) -> Result<Vec<AuditRow>> {
        self.read(|conn| {
            check_chain(conn, chain)?;
            rows(conn, chain)?
                .into_iter()
                .enumerate()
                .map(|(idx, decoded)| {
                    decoded.map_err(|reason| {
                        Error::Corrupt(format!("audit chain {chain}: row {}: {reason}", idx + 1))
                    })
                })
                .collect()
        })
    }

    /// The signed head of `chain` now: export it somewhere else, and a later export that lost its
    /// tail fails [`crate::audit::verify`] against it.
    pub fn chain_head(&self, chain: &str) -> Result<ChainHead> {
        self.read(|conn| {
            check_chain(conn, chain)?;
            Ok(ChainHead::of(
                chain,
                last(conn, chain)?.as_ref(),
                &self.audit_key,
            ))
        })
    }

    /// Verifies exported `rows` of one chain under the audit key, against the head taken from
    /// their last row and the latest head kept with a census.
    pub fn verify_rows(&self, rows: &[AuditRow]) -> std::result::Result<(), VerifyError> {
        let Some(last) = rows.last() else {
            return Ok(());
        };
        let mut anchors = vec![ChainHead::of(&last.chain, Some(last), &self.audit_key)];
        // The latest head kept with a census too (a kept head that cannot be read shows in the
        // scheduled verification, which reads it through `verify_chain`).
        anchors.extend(self.latest_anchor(&last.chain).ok().flatten());
        verify_anchored(rows, Some(&self.audit_key), &anchors)
    }

    /// Keeps the signed heads of every chain taken with the census of `day` (a second census of
    /// the same day replaces them).
    pub fn record_anchors(&self, day: &str, heads: &[ChainHead]) -> Result<()> {
        self.write(|tx| {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO audit_anchors (chain, seq, day, head) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for head in heads {
                let json = serde_json::to_string(head)
                    .map_err(|err| Error::Corrupt(format!("a head: {err}")))?;
                stmt.execute(params![head.chain, to_sql_int("seq", head.seq)?, day, json])?;
            }
            Ok(())
        })
    }

    /// The latest kept head of `chain` (the longest), if any.
    pub fn latest_anchor(&self, chain: &str) -> Result<Option<ChainHead>> {
        let json: Option<String> = self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT head FROM audit_anchors WHERE chain = ?1 ORDER BY seq DESC LIMIT 1",
                    [chain],
                    |row| row.get(0),
                )
                .optional()?)
        })?;
        json.map(|j| {
            serde_json::from_str(&j)
                .map_err(|err| Error::Corrupt(format!("the kept head of {chain}: {err}")))
        })
        .transpose()
    }

    /// Re-verifies the stored rows of `chain`: seq, links, hashes and signatures under the audit
    /// key, naming the first bad row; and against the latest head kept with a census
    /// ([`Store::record_anchors`]), so a tail cut below it is caught (a tail cut after it shows
    /// only against a head exported later).
    pub fn verify_chain(&self, chain: &str) -> Result<std::result::Result<(), VerifyError>> {
        let decoded = self.read(|conn| {
            check_chain(conn, chain)?;
            rows(conn, chain)
        })?;
        let mut rows = Vec::with_capacity(decoded.len());
        for (idx, row) in decoded.into_iter().enumerate() {
            match row {
                Ok(row) => rows.push(row),
                Err(reason) => {
                    return Ok(Err(VerifyError {
                        line: idx + 1,
                        reason,
                    }));
                }
            }
        }
        let mut anchors = vec![ChainHead::of(chain, rows.last(), &self.audit_key)];
        anchors.extend(self.latest_anchor(chain)?);
        Ok(verify_anchored(&rows, Some(&self.audit_key), &anchors))
    }
}
