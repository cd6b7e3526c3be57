//! Rows, heads, the canonical encoding and the verifier.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The key that signs rows and heads. Read from a 0600 secrets file; never printed.
pub struct AuditKey {
    mac: Hmac<Sha256>,
}

impl AuditKey {
    /// A key from its secret bytes (at least 32).
    pub fn new(secret: &[u8]) -> Option<AuditKey> {
        if secret.len() < 32 {
            return None;
        }
        Some(AuditKey {
            mac: Hmac::<Sha256>::new_from_slice(secret).ok()?,
        })
    }

    fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(&(part.len() as u32).to_le_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// `HMAC-SHA256(audit_key, "snapshot" ‖ meta)`, each part length-prefixed: a snapshot
    /// archive's signature over its description (`crate::snapshot`). The first part keeps it
    /// apart from row and head signatures.
    pub fn sign_snapshot(&self, meta: &[u8]) -> [u8; 32] {
        self.sign(&[b"snapshot", meta])
    }

    /// Whether `signature` is [`AuditKey::sign_snapshot`] of `meta` (compared in constant time).
    pub fn verify_snapshot(&self, meta: &[u8], signature: &[u8]) -> bool {
        bool::from(self.sign_snapshot(meta)[..].ct_eq(signature))
    }
}

/// What happened, before it is linked into a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// Who: `admin`, `key:<keyid>`, `user:<id>`, `worker:<id>`, `system`.
    pub actor: String,
    /// What: `tenant.create`, `key.revoke`, `kek.rotate`, ...
    pub action: String,
    /// On what: a tenant, key id, collection.
    pub resource: String,
    /// `ok` or `denied` or `error`.
    pub outcome: String,
    /// Anything else, as a JSON object (never secrets).
    pub details: serde_json::Value,
}

/// One row of a chain, as stored and exported (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRow {
    /// `platform` or the tenant id.
    pub chain: String,
    /// 1, 2, 3, ... within the chain.
    pub seq: u64,
    /// See [`Draft`].
    pub time_ms: u64,
    /// See [`Draft`].
    pub actor: String,
    /// See [`Draft`].
    pub action: String,
    /// See [`Draft`].
    pub resource: String,
    /// See [`Draft`].
    pub outcome: String,
    /// See [`Draft`].
    pub details: serde_json::Value,
    /// Hex of the previous row's hash (zeros for the first row).
    pub prev_hash: String,
    /// Hex of `SHA-256(prev_hash ‖ canonical(row))`.
    pub hash: String,
    /// Hex of `HMAC-SHA256(audit_key, hash)`.
    pub signature: String,
}

/// The signed end of a chain at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainHead {
    /// Which chain.
    pub chain: String,
    /// Its last row's seq (0 for an empty chain).
    pub seq: u64,
    /// Its last row's hash.
    pub hash: String,
    /// Hex of `HMAC-SHA256(audit_key, "head" ‖ chain ‖ seq ‖ hash)`.
    pub signature: String,
}

/// The first problem the verifier found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row {line}: {reason}")]
pub struct VerifyError {
    /// 1-based position in the export (0 for the head).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

const GENESIS: [u8; 32] = [0; 32];

/// A row's hash: SHA-256 of the previous hash, then each field length-prefixed, the details as
/// compact JSON with sorted keys (serde_json's map is ordered).
/// The fields a row's hash covers, borrowed from a draft or a stored row.
struct Content<'a> {
    time_ms: u64,
    actor: &'a str,
    action: &'a str,
    resource: &'a str,
    outcome: &'a str,
    details: &'a serde_json::Value,
}

impl<'a> From<&'a Draft> for Content<'a> {
    fn from(d: &'a Draft) -> Content<'a> {
        Content {
            time_ms: d.time_ms,
            actor: &d.actor,
            action: &d.action,
            resource: &d.resource,
            outcome: &d.outcome,
            details: &d.details,
        }
    }
}

impl<'a> From<&'a AuditRow> for Content<'a> {
    fn from(r: &'a AuditRow) -> Content<'a> {
        Content {
            time_ms: r.time_ms,
            actor: &r.actor,
            action: &r.action,
            resource: &r.resource,
            outcome: &r.outcome,
            details: &r.details,
        }
    }
}

fn row_hash(prev: &[u8; 32], chain: &str, seq: u64, content: Content<'_>) -> [u8; 32] {
    let details = serde_json::to_vec(content.details).unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(prev);
    for field in [
        chain.as_bytes(),
        &seq.to_le_bytes(),
        &content.time_ms.to_le_bytes(),
        content.actor.as_bytes(),
        content.action.as_bytes(),
        content.resource.as_bytes(),
        content.outcome.as_bytes(),
        &details,
    ] {
        hasher.update((field.len() as u32).to_le_bytes());
        hasher.update(field);
    }
    hasher.finalize().into()
}

impl AuditRow {
    /// Links `draft` after `prev` (or starts the chain) and signs it.
    pub fn append(
        chain: &str,
        prev: Option<&AuditRow>,
        draft: Draft,
        key: &AuditKey,
    ) -> Option<AuditRow> {
        let (seq, prev_hash) = match prev {
            Some(prev) => (prev.seq + 1, decode32(&prev.hash)?),
            None => (1, GENESIS),
        };
        let hash = row_hash(&prev_hash, chain, seq, Content::from(&draft));
        let signature = key.sign(&[&hash]);
        Some(AuditRow {
            chain: chain.to_owned(),
            seq,
            time_ms: draft.time_ms,
            actor: draft.actor,
            action: draft.action,
            resource: draft.resource,
            outcome: draft.outcome,
            details: draft.details,
            prev_hash: hex::encode(prev_hash),
            hash: hex::encode(hash),
            signature: hex::encode(signature),
        })
    }
}

impl ChainHead {
    /// The signed head of a chain whose last row is `last`.
    pub fn of(chain: &str, last: Option<&AuditRow>, key: &AuditKey) -> ChainHead {
        let (seq, hash) = last.map_or((0, hex::encode(GENESIS)), |row| (row.seq, row.hash.clone()));
        let signature = hex::encode(head_signature(key, chain, seq, &hash));
        ChainHead {
            chain: chain.to_owned(),
            seq,
            hash,
            signature,
        }
    }
}

/// `HMAC-SHA256(audit_key, "head" ‖ chain ‖ seq ‖ hash)`, each part length-prefixed.
fn head_signature(key: &AuditKey, chain: &str, seq: u64, hash: &str) -> [u8; 32] {
    key.sign(&[
        b"head",
        chain.as_bytes(),
        &seq.to_le_bytes(),
        hash.as_bytes(),
    ])
}

fn decode32(hex_str: &str) -> Option<[u8; 32]> {
    hex::decode(hex_str).ok()?.try_into().ok()
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Checks an exported chain: sequence, links, hashes, and with the key, every signature; with a
/// head, that the export holds the chain the head signed (a cut tail is caught). Names the first
/// bad row. See [`verify_anchored`] for several heads.
pub fn verify(
    rows: &[AuditRow],
    key: Option<&AuditKey>,
    head: Option<&ChainHead>,
) -> Result<(), VerifyError> {
    verify_anchored(
        rows,
        key,
        head.map(std::slice::from_ref).unwrap_or_default(),
    )
}

/// As [`verify`], against every one of `anchors`: signed heads exported earlier (or with this
/// export). Each anchor must fall within the export and name the very row hash at its seq, so a
/// later, longer export checks against any head kept before it, while a tail cut below an anchor,
/// or a rewrite of any row up to it, is caught. With the key, each anchor's signature is checked.
pub fn verify_anchored(
    rows: &[AuditRow],
    key: Option<&AuditKey>,
    anchors: &[ChainHead],
) -> Result<(), VerifyError> {
    let bad = |line: usize, reason: String| Err(VerifyError { line, reason });
    let mut prev = GENESIS;
    let chain = rows
        .first()
        .map(|r| r.chain.as_str())
        .or(anchors.first().map(|h| h.chain.as_str()))
        .unwrap_or("");
    // hashes[seq] is the chain's hash after row `seq` (the genesis value before row 1).
    let mut hashes = Vec::with_capacity(rows.len() + 1);
    hashes.push(GENESIS);
    for (i, row) in rows.iter().enumerate() {
        let line = i + 1;
        if row.chain != chain {
            return bad(
                line,
                format!("belongs to chain {:?}, not {chain:?}", row.chain),
            );
        }
        if row.seq != line as u64 {
            return bad(
                line,
                format!(
                    "has seq {}, expected {line} (a row was deleted, inserted or moved)",
                    row.seq
                ),
            );
        }
        let Some(claimed_prev) = decode32(&row.prev_hash) else {
            return bad(line, "prev_hash is not 32 bytes of hex".into());
        };
        if !equal(&claimed_prev, &prev) {
            return bad(
                line,
                "prev_hash does not match the previous row's hash".into(),
            );
        }
        let hash = row_hash(&prev, chain, row.seq, Content::from(row));
        if decode32(&row.hash).is_none_or(|claimed| !equal(&claimed, &hash)) {
            return bad(
                line,
                "content does not match its hash (the row was edited)".into(),
            );
        }
        if let Some(key) = key
            && decode32(&row.signature).is_none_or(|sig| !equal(&sig, &key.sign(&[&hash])))
        {
            return bad(line, "signature does not verify under the audit key".into());
        }
        prev = hash;
        hashes.push(hash);
    }
    let last_seq = rows.len() as u64;
    for head in anchors {
        if head.chain != chain {
            return bad(
                0,
                format!(
                    "the signed head is of chain {:?}, not {chain:?}",
                    head.chain
                ),
            );
        }
        let at = usize::try_from(head.seq)
            .ok()
            .and_then(|seq| hashes.get(seq));
        let Some(at) = at else {
            return bad(
                0,
                format!(
                    "export ends at seq {last_seq} but a signed head is at seq {} (the tail was cut)",
                    head.seq
                ),
            );
        };
        if !equal(head.hash.as_bytes(), hex::encode(at).as_bytes()) {
            return bad(
                0,
                format!(
                    "the chain at seq {} does not match the signed head there (the chain was cut and rewritten)",
                    head.seq
                ),
            );
        }
        if let Some(key) = key {
            let sig = head_signature(key, &head.chain, head.seq, &head.hash);
            if decode32(&head.signature).is_none_or(|s| !equal(&s, &sig)) {
                return bad(
                    0,
                    "the head's signature does not verify under the audit key".into(),
                );
            }
        }
    }
    Ok(())
}
