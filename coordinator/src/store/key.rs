//! API keys: insert, revoke, list, and the [`KeyStore`] the authenticator reads.
//!
//! The digest (`HMAC-SHA256(pepper, key)`, computed by the caller) is written once and read only by
//! [`KeyStore::find`]; listings and audit rows never carry it.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::json;

use super::{
    Actor, Error, KeyInfo, Result, Store, check_text, from_sql_int, shown, tenant, to_sql_int,
};
use crate::auth::{KEY_ID_LEN, KeyRecord, KeyStore, Scopes};

/// Longest label, in bytes.
const MAX_LABEL: usize = 256;
/// Longest collection name a key may be restricted to, in bytes.
const MAX_COLLECTION: usize = 256;
/// Most collections a key may be restricted to.
const MAX_COLLECTIONS: usize = 1024;

const INFO_COLUMNS: &str = "key_id, tenant, label, scope_read, scope_write, scope_manage, collections, created_ms, revoked_ms";

struct RawInfo {
    key_id: String,
    tenant: String,
    label: String,
    scopes: Scopes,
    collections: Option<String>,
    created_ms: i64,
    revoked_ms: Option<i64>,
}

fn decode_info(row: &Row<'_>) -> rusqlite::Result<RawInfo> {
    Ok(RawInfo {
        key_id: row.get(0)?,
        tenant: row.get(1)?,
        label: row.get(2)?,
        scopes: Scopes {
            read: row.get(3)?,
            write: row.get(4)?,
            manage: row.get(5)?,
        },
        collections: row.get(6)?,
        created_ms: row.get(7)?,
        revoked_ms: row.get(8)?,
    })
}

impl RawInfo {
    fn into_info(self) -> Result<KeyInfo> {
        let collections = parse_collections(&self.key_id, self.collections.as_deref())?;
        let created_ms = from_sql_int(
            &format!("created_ms of key {}", self.key_id),
            self.created_ms,
        )?;
        let revoked_ms = self
            .revoked_ms
            .map(|ms| from_sql_int(&format!("revoked_ms of key {}", self.key_id), ms))
            .transpose()?;
        Ok(KeyInfo {
            key_id: self.key_id,
            tenant: self.tenant,
            label: self.label,
            scopes: self.scopes,
            collections,
            created_ms,
            revoked_ms,
        })
    }
}

fn parse_collections(key_id: &str, raw: Option<&str>) -> Result<Option<Vec<String>>> {
    raw.map(|text| {
        serde_json::from_str(text).map_err(|_| {
            Error::Corrupt(format!(
                "collections of key {key_id} are not a json array of names"
            ))
        })
    })
    .transpose()
}

fn scope_names(scopes: &Scopes) -> Vec<&'static str> {
    [
        (scopes.read, "read"),
        (scopes.write, "write"),
        (scopes.manage, "manage"),
    ]
    .into_iter()
    .filter_map(|(held, name)| held.then_some(name))
    .collect()
}

/// The key `key_id` of `tenant`. A key of another tenant is reported exactly as a missing one.
fn key_of(conn: &Connection, tenant: &str, key_id: &str) -> Result<KeyInfo> {
    conn.query_row(
        &format!("SELECT {INFO_COLUMNS} FROM api_keys WHERE key_id = ?1 AND tenant = ?2"),
        [key_id, tenant],
        decode_info,
    )
    .optional()?
    .ok_or_else(|| Error::NotFound(format!("api key {} not found", shown(key_id))))?
    .into_info()
}

fn check_record(record: &KeyRecord, label: &str) -> Result<()> {
    if record.key_id.len() != KEY_ID_LEN
        || !record.key_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(Error::Invalid(format!(
            "api key id {} is invalid: use {KEY_ID_LEN} base62 characters",
            shown(&record.key_id)
        )));
    }
    if record.is_revoked {
        return Err(Error::Invalid(format!(
            "api key {} is new and cannot be stored as revoked",
            record.key_id
        )));
    }
    check_text("label", label, MAX_LABEL)?;
    if let Some(collections) = &record.collections {
        if collections.len() > MAX_COLLECTIONS {
            return Err(Error::Invalid(format!(
                "api key {} names {} collections; at most {MAX_COLLECTIONS} are allowed",
                record.key_id,
                collections.len()
            )));
        }
        for name in collections {
            if name.is_empty() {
                return Err(Error::Invalid("collection name is empty".into()));
            }
            check_text("collection name", name, MAX_COLLECTION)?;
        }
    }
    Ok(())
}

impl Store {
    /// Stores a new key of a live tenant. The audit row names the key id, label, scopes and
    /// collections, never the key or its digest.
    pub fn insert_key(&self, actor: &Actor, record: &KeyRecord, label: &str) -> Result<KeyInfo> {
        check_record(record, label)?;
        let now = self.now();
        let created_ms = to_sql_int("time", now)?;
        let collections = record
            .collections
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|_| Error::Invalid("collection names are not serializable".into()))?;
        self.write(|tx| {
            tenant::live(tx, &record.tenant)?;
            let taken: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM api_keys WHERE key_id = ?1",
                    [&record.key_id],
                    |row| row.get(0),
                )
                .optional()?;
            if taken.is_some() {
                // Says nothing about which tenant holds it.
                return Err(Error::AlreadyExists(format!(
                    "api key {} already exists",
                    record.key_id
                )));
            }
            tx.execute(
                "INSERT INTO api_keys (key_id, tenant, label, scope_read, scope_write, scope_manage,
                                       collections, digest, created_ms, revoked_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL)",
                params![
                    record.key_id,
                    record.tenant,
                    label,
                    record.scopes.read,
                    record.scopes.write,
                    record.scopes.manage,
                    collections,
                    &record.digest[..],
                    created_ms,
                ],
            )?;
            let details = json!({
                "key_id": record.key_id,
                "label": label,
                "scopes": scope_names(&record.scopes),
                "collections": record.collections,
            });
            let draft = self.draft(actor, "key.create", &record.key_id, details);
            self.append_in(tx, &record.tenant, draft)?;
            Ok(KeyInfo {
                key_id: record.key_id.clone(),
                tenant: record.tenant.clone(),
                label: label.to_owned(),
                scopes: record.scopes,
                collections: record.collections.clone(),
                created_ms: now,
                revoked_ms: None,
            })
        })
    }

    /// Revokes a key of `tenant`. [`Error::NotFound`] if `tenant` has no such key, whether or not
    /// another tenant does. Revoking a revoked key changes nothing but is audited again.
    pub fn revoke_key(&self, actor: &Actor, tenant: &str, key_id: &str) -> Result<KeyInfo> {
        let now = self.now();
        let now_sql = to_sql_int("time", now)?;
        self.write(|tx| {
            tenant::live(tx, tenant)?;
            let mut info = key_of(tx, tenant, key_id)?;
            let was_revoked = info.revoked_ms.is_some();
            if !was_revoked {
                tx.execute(
                    "UPDATE api_keys SET revoked_ms = ?2 WHERE key_id = ?1",
                    params![key_id, now_sql],
                )?;
                info.revoked_ms = Some(now);
            }
            let details = json!({ "key_id": key_id, "was_revoked": was_revoked });
            self.append_in(tx, tenant, self.draft(actor, "key.revoke", key_id, details))?;
            Ok(info)
        })
    }

    /// Every key of `tenant` (revoked ones included), oldest first. The tenant may be deleted.
    pub fn list_keys(&self, tenant: &str) -> Result<Vec<KeyInfo>> {
        self.read(|conn| {
            if tenant::load(conn, tenant)?.is_none() {
                return Err(Error::NotFound(format!(
                    "tenant {} not found",
                    shown(tenant)
                )));
            }
            let mut stmt = conn.prepare(&format!(
                "SELECT {INFO_COLUMNS} FROM api_keys WHERE tenant = ?1 ORDER BY created_ms, key_id"
            ))?;
            let raws = stmt
                .query_map([tenant], decode_info)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter().map(RawInfo::into_info).collect()
        })
    }

    fn find_record(&self, key_id: &str) -> Result<Option<KeyRecord>> {
        self.read(|conn| {
            let raw = conn
                .query_row(
                    "SELECT k.tenant, k.scope_read, k.scope_write, k.scope_manage, k.collections,
                            k.digest, k.revoked_ms IS NOT NULL OR t.deleted_ms IS NOT NULL
                     FROM api_keys k JOIN tenants t ON t.id = k.tenant
                     WHERE k.key_id = ?1",
                    [key_id],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            Scopes {
                                read: row.get(1)?,
                                write: row.get(2)?,
                                manage: row.get(3)?,
                            },
                            row.get::<_, Option<String>>(4)?,
                            row.get::<_, Vec<u8>>(5)?,
                            row.get::<_, bool>(6)?,
                        ))
                    },
                )
                .optional()?;
            let Some((tenant, scopes, collections, digest, is_revoked)) = raw else {
                return Ok(None);
            };
            let digest: [u8; 32] = digest
                .try_into()
                .map_err(|_| Error::Corrupt(format!("digest of key {key_id} is not 32 bytes")))?;
            Ok(Some(KeyRecord {
                key_id: key_id.to_owned(),
                tenant,
                scopes,
                collections: parse_collections(key_id, collections.as_deref())?,
                digest,
                // A deleted tenant's keys were revoked with it; the join makes that hold even
                // if a key row was somehow missed.
                is_revoked,
            }))
        })
    }
}

impl KeyStore for Store {
    /// Fails closed: a database error reads as "no such key", so the caller is refused.
    fn find(&self, key_id: &str) -> Option<KeyRecord> {
        match self.find_record(key_id) {
            Ok(record) => record,
            Err(err) => {
                tracing::error!(key_id = %shown(key_id), error = %err, "api key lookup failed");
                None
            }
        }
    }
}

impl KeyStore for Arc<Store> {
    fn find(&self, key_id: &str) -> Option<KeyRecord> {
        <Store as KeyStore>::find(self, key_id)
    }
}
