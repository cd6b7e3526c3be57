//! Offline verification of an exported chain file (`vaultvec-coordinator audit verify`).

use std::path::Path;

use anyhow::{Context, bail};

use super::{AuditKey, AuditRow, ChainHead, verify_anchored};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Export {
    rows: Vec<AuditRow>,
    head: ChainHead,
    // The server's own verdict, which the offline verification does not take on trust.
    #[serde(default, rename = "chain_verified")]
    _chain_verified: Option<bool>,
    #[serde(default, rename = "verify_error")]
    _verify_error: Option<String>,
}

/// Reads an export: the admin API's JSON object `{rows, head}`, or JSON lines of rows.
pub fn read_export(text: &str) -> anyhow::Result<(Vec<AuditRow>, Option<ChainHead>)> {
    if let Ok(export) = serde_json::from_str::<Export>(text) {
        return Ok((export.rows, Some(export.head)));
    }
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: AuditRow = serde_json::from_str(line)
            .with_context(|| format!("line {}: not an audit row", i + 1))?;
        rows.push(row);
    }
    Ok((rows, None))
}

/// Verifies an export file, with a separately kept head and the audit key if given. Prints a
/// summary; an error names the first bad row.
pub fn verify_file(
    file: &Path,
    heads: &[std::path::PathBuf],
    key_file: Option<&Path>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let (rows, embedded_head) = read_export(&text)?;
    let mut anchors: Vec<ChainHead> = embedded_head.into_iter().collect();
    for path in heads {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        anchors.push(
            serde_json::from_str::<ChainHead>(&text)
                .with_context(|| format!("parsing the head {}", path.display()))?,
        );
    }
    let key = match key_file {
        Some(path) => {
            let secret = crate::config::read_secret(path)?;
            Some(AuditKey::new(&secret).context("the audit key must be at least 32 bytes")?)
        }
        None => None,
    };
    if let Err(err) = verify_anchored(&rows, key.as_ref(), &anchors) {
        bail!("audit chain does NOT verify: {err}");
    }
    println!(
        "ok: {} rows verified{}{}",
        rows.len(),
        if !anchors.is_empty() {
            " against the signed head(s)"
        } else {
            " (no head: a cut tail would not be detected)"
        },
        if key.is_some() {
            ", signatures checked"
        } else {
            " (no key: signatures not checked)"
        },
    );
    Ok(())
}
