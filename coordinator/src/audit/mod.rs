//! The audit chain: one hash-linked, HMAC-signed chain per tenant and one for the platform.
//!
//! Each row's `hash` is `SHA-256(prev_hash ‖ canonical(row))` and its `signature` is
//! `HMAC-SHA256(audit_key, hash)`. Editing, deleting, inserting or reordering a row breaks the links
//! (and, without the audit key, cannot be re-signed). A hash chain alone cannot show that its tail was
//! cut, so a signed head `(chain, seq, hash)` is exported on demand and with each census, and the
//! verifier checks an export against it. Storage in SQLite (with triggers rejecting UPDATE and
//! DELETE) comes with the coordinator's control plane.

mod chain;
mod file;

pub use chain::{AuditKey, AuditRow, ChainHead, Draft, VerifyError, verify, verify_anchored};
pub use file::{read_export, verify_file};

#[cfg(test)]
mod tests;
